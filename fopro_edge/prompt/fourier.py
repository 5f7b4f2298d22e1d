"""Pure FFT functions of the Fourier Prompt Generator (no state; inputs are never modified).

Images are ``B×C×H×W`` tensors in ``[0, 1]``. Spectra are the real FFT (``torch.fft.rfft2``) over
the last two axes, shape ``B×C×H×(W//2+1)``, always computed in float32 with autocast off. The
spectrum of a real image is Hermitian, so the half spectrum holds every frequency once, except
in column 0 (and column ``W//2`` for even ``W``) where a bin ``(ky, kx)`` and its mirror
``(-ky, kx)`` are both stored; :func:`hermitian_symmetrise` averages a log-gain over those pairs so
that the gain applied is exactly the gain reported.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Band = Literal["all", "low", "high"]
BANDS: tuple[str, ...] = ("all", "low", "high")


def radial_frequency(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Normalised radial frequency of each ``rfft2`` bin, shape ``(h, w//2+1)``, in ``[0, 1]``.

    0 is the DC bin, 1 the highest (Nyquist) frequency along one axis; corner bins are clipped to 1.
    """
    fy = torch.fft.fftfreq(h, device=device)
    fx = torch.fft.rfftfreq(w, device=device)
    r = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2) / 0.5
    return r.clamp_(max=1.0)


def smooth_basis(h: int, w: int, radial_bins: int, orientation_bins: int) -> Tensor:
    """Linear-interpolation weights ``(h, w//2+1, radial_bins*orientation_bins)`` of each ``rfft2`` bin.

    Radius: hat functions centred on ``radial_bins`` evenly spaced radii from 0 to 1.
    Orientation (in ``[0, pi)``, so a frequency and its mirror share it): circular hat functions
    centred on ``orientation_bins`` evenly spaced angles. The weights of a bin sum to 1.
    """
    if radial_bins < 1 or orientation_bins < 1:
        raise ValueError(f"radial_bins and orientation_bins must be >= 1, got {radial_bins}, {orientation_bins}")
    r = radial_frequency(h, w)
    fy = torch.fft.fftfreq(h)[:, None].expand_as(r)
    fx = torch.fft.rfftfreq(w)[None, :].expand_as(r)
    theta = torch.remainder(torch.atan2(fy, fx), torch.pi)
    if radial_bins == 1:
        wr = torch.ones(*r.shape, 1)
    else:
        centres = torch.linspace(0.0, 1.0, radial_bins)
        wr = (1 - (r[..., None] - centres).abs() * (radial_bins - 1)).clamp(min=0)
    if orientation_bins == 1:
        wo = torch.ones(*r.shape, 1)
    else:
        centres = torch.arange(orientation_bins) * (torch.pi / orientation_bins)
        d = (theta[..., None] - centres).abs()
        d = torch.minimum(d, torch.pi - d)
        wo = (1 - d * (orientation_bins / torch.pi)).clamp(min=0)
    basis = (wr[..., :, None] * wo[..., None, :]).flatten(-2)
    return basis / basis.sum(-1, keepdim=True)


def band_mask(
    h: int, w: int, band: Band = "all", radius: float = 0.25, device: torch.device | str | None = None
) -> Tensor:
    """0/1 float mask ``(h, w//2+1)`` of the bins where gains may act; the DC bin is always 0.

    ``low``: radial frequency ``<= radius``; ``high``: ``> radius``; ``all``: every bin but DC.
    """
    r = radial_frequency(h, w, device=device)
    if band == "all":
        mask = torch.ones_like(r)
    elif band == "low":
        mask = (r <= radius).float()
    elif band == "high":
        mask = (r > radius).float()
    else:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")
    mask[0, 0] = 0.0
    return mask


def rfft_image(x01: Tensor) -> Tensor:
    """Complex64 half spectrum ``B×C×H×(W//2+1)`` of an image, float32 with autocast off."""
    with torch.autocast(device_type=x01.device.type, enabled=False):
        return torch.fft.rfft2(x01.float())


def amplitude_features(spectrum: Tensor) -> Tensor:
    """``log1p(|X|)``: the log-amplitude input of the image-conditional gain net (float32)."""
    return torch.log1p(spectrum.abs())


def hermitian_symmetrise(log_gain: Tensor, w: int) -> Tensor:
    """Average a log-gain over the mirrored bin pairs stored twice in the half spectrum.

    Columns 0 and (for even ``w``) ``w//2`` hold both ``(ky, kx)`` and ``(-ky, kx)``; an inverse
    real FFT would silently average their gains, so this makes the gain symmetric up front.
    Returns a new tensor broadcast to ``...×H×(w//2+1)`` (or ``log_gain`` itself if it has no
    frequency-row axis, which is symmetric already).
    """
    if log_gain.dim() < 2 or log_gain.shape[-2] == 1:
        return log_gain
    wr = w // 2 + 1
    lg = log_gain.expand(*log_gain.shape[:-1], wr)
    cols = [0] + ([wr - 1] if w % 2 == 0 and wr > 1 else [])
    sub = lg[..., cols]
    mirrored = torch.roll(torch.flip(sub, dims=(-2,)), shifts=1, dims=-2)  # row k -> row (-k) mod H
    out = lg.clone()
    out[..., cols] = 0.5 * (sub + mirrored)
    return out


def apply_gain_spectrum(
    spectrum: Tensor, log_gain: Tensor, size: tuple[int, int], dtype: torch.dtype = torch.float32
) -> Tensor:
    """Multiply the amplitude by ``exp(log_gain)`` keeping the phase, inverse FFT, clamp to ``[0, 1]``.

    ``spectrum`` comes from :func:`rfft_image`; ``log_gain`` broadcasts to it; ``size`` is the
    image's ``(H, W)``. The result has ``dtype``.
    """
    h, w = size
    with torch.autocast(device_type=spectrum.device.type, enabled=False):
        lg = hermitian_symmetrise(log_gain.float(), w)
        y = torch.fft.irfft2(spectrum * torch.exp(lg), s=(h, w))
        return y.clamp(0.0, 1.0).to(dtype)


def apply_amplitude_gain(x01: Tensor, log_gain: Tensor) -> Tensor:
    """Prompted image: amplitude of ``x01`` (B×C×H×W in [0,1]) times ``exp(log_gain)``, phase kept.

    ``log_gain`` broadcasts to ``B×C×H×(W//2+1)``. Output clamped to ``[0, 1]``, in ``x01.dtype``.
    """
    return apply_gain_spectrum(rfft_image(x01), log_gain, (x01.shape[-2], x01.shape[-1]), x01.dtype)
