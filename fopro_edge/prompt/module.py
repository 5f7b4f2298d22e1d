"""The Fourier Prompt Generator (FPG): a bounded, learnable amplitude gain over the frequency grid.

``gain = exp(alpha * tanh(P + G(log1p|X|)))`` inside the band, exactly 1 outside it and at DC;
the phase is kept. ``P`` (dataset-level prompt) is one value per frequency bin (``gain="bins"``)
or a smooth function of radius and orientation (``gain="smooth"``: linear interpolation between
``radial_bins × orientation_bins`` values); one ``P`` for every channel when ``prompt_channels``
is 1 (grey images), else one per channel. ``P`` starts at 0 and the last layer of ``G``
(image-conditional net) starts at 0, so a fresh FPG is the identity. Training-only: it sits in
front of the teacher, at the teacher's input resolution, and is never exported. Keep its
parameters in float32: it runs with autocast off whatever the surrounding precision.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fopro_edge.prompt.fourier import (
    BANDS,
    Band,
    amplitude_features,
    apply_gain_spectrum,
    band_mask,
    hermitian_symmetrise,
    rfft_image,
    smooth_basis,
)

if TYPE_CHECKING:
    from fopro_edge.config import PromptConfig

log = logging.getLogger(__name__)


class _SpectralConv3x3(nn.Conv2d):
    """3×3 conv over a half spectrum: circular padding along the (periodic) frequency rows, zeros along columns."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout, kernel_size=3, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0, 1, 1), mode="circular")
        x = F.pad(x, (1, 1, 0, 0))
        return super().forward(x)


class FourierPromptGenerator(nn.Module):
    """Amplify or attenuate the frequencies of ``B×C×H×W`` images in ``[0, 1]``.

    Args:
        image_size: ``H`` (= ``W``) or ``(H, W)``; inputs must have exactly this size.
        channels: image channels ``C``.
        alpha: gain bound; every gain lies in ``[exp(-alpha), exp(alpha)]``.
        band: ``all``, ``low`` or ``high``: where gains may act (see :func:`band_mask`).
        band_radius: normalised radial frequency splitting ``low`` from ``high``.
        conditional: add the image-conditional net ``G`` over the log-amplitude.
        conditional_channels: hidden channels of ``G``.
        prompt_channels: 1 (one gain for every channel) or ``channels``.
        gain: ``bins`` (a value per frequency bin) or ``smooth`` (radius × orientation bins).
        radial_bins, orientation_bins: the smooth gain's resolution.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int],
        channels: int = 3,
        alpha: float = 1.0,
        band: Band = "all",
        band_radius: float = 0.25,
        conditional: bool = True,
        conditional_channels: int = 8,
        prompt_channels: int | None = None,
        gain: str = "bins",
        radial_bins: int = 8,
        orientation_bins: int = 4,
    ) -> None:
        super().__init__()
        h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        if h < 1 or w < 1 or channels < 1:
            raise ValueError(f"image_size and channels must be positive, got {(h, w)} and {channels}")
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if band not in BANDS:
            raise ValueError(f"band must be one of {BANDS}, got {band!r}")
        self.size: tuple[int, int] = (int(h), int(w))
        self.channels = channels
        self.alpha = float(alpha)
        self.band = band
        self.band_radius = float(band_radius)
        self.conditional = conditional
        self.prompt_channels = pc = channels if prompt_channels is None else int(prompt_channels)
        if pc not in (1, channels):
            raise ValueError(f"prompt_channels must be 1 or {channels}, got {pc}")
        if gain not in ("bins", "smooth"):
            raise ValueError(f"gain must be 'bins' or 'smooth', got {gain!r}")
        self.gain = gain
        wr = w // 2 + 1
        if gain == "smooth":
            basis = smooth_basis(h, w, radial_bins, orientation_bins)
            self.register_buffer("basis", basis, persistent=False)
            self.prompt = nn.Parameter(torch.zeros(pc, basis.shape[-1]))
        else:
            self.basis = None
            self.prompt = nn.Parameter(torch.zeros(pc, h, wr))
        self.register_buffer("mask", band_mask(h, w, band, band_radius), persistent=False)
        self._active_bins = int(self.mask.sum().item())
        if self._active_bins == 0:
            log.warning(
                "FPG band %r with radius %s holds no frequency bin at size %s: it is the identity",
                band,
                band_radius,
                self.size,
            )
        self.cond: nn.Sequential | None = None
        if conditional:
            last = _SpectralConv3x3(conditional_channels, pc)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.cond = nn.Sequential(_SpectralConv3x3(channels, conditional_channels), nn.GELU(), last)

    @classmethod
    def from_config(
        cls, cfg: PromptConfig, image_size: int | tuple[int, int], channels: int = 3, *, prompt_channels: int | None = None
    ) -> FourierPromptGenerator:
        """Build from the recipe's ``prompt`` section (``prompt_channels``: as resolved from ``prompt.channels``)."""
        return cls(
            image_size,
            channels=channels,
            alpha=cfg.alpha,
            band=cfg.band,
            band_radius=cfg.band_radius,
            conditional=cfg.conditional,
            conditional_channels=cfg.conditional_channels,
            prompt_channels=prompt_channels,
            gain=cfg.gain,
            radial_bins=cfg.radial_bins,
            orientation_bins=cfg.orientation_bins,
        )

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, channels={self.channels}, alpha={self.alpha}, band={self.band!r}, "
            f"band_radius={self.band_radius}, conditional={self.conditional}, gain={self.gain!r}, "
            f"prompt_channels={self.prompt_channels}"
        )

    # ------------------------------------------------------------------ internals

    def _check(self, x01: Tensor) -> None:
        if x01.dim() != 4 or x01.shape[1] != self.channels or tuple(x01.shape[-2:]) != self.size:
            raise ValueError(
                f"FPG expects B×{self.channels}×{self.size[0]}×{self.size[1]} images, got {tuple(x01.shape)}"
            )

    def prompt_grid(self) -> Tensor:
        """The dataset-level prompt ``P`` on the frequency grid: ``prompt_channels×H×(W//2+1)``, float32."""
        p = self.prompt.float()
        return p if self.basis is None else torch.einsum("hwk,ck->chw", self.basis, p)

    def _log_gain_from_spectrum(self, spectrum: Tensor) -> Tensor:
        """``alpha * tanh(P + G(log1p|X|)) * mask`` (float32, not yet Hermitian-symmetrised)."""
        z = self.prompt_grid()
        if self.cond is not None:
            z = z + self.cond(amplitude_features(spectrum))
        return self.alpha * torch.tanh(z) * self.mask

    # ------------------------------------------------------------------ public API

    def log_gain(self, x01: Tensor) -> Tensor:
        """Effective log-gain per bin, ``B×C×H×(W//2+1)`` (``C×H×(W//2+1)`` when unconditional)."""
        self._check(x01)
        with torch.autocast(device_type=x01.device.type, enabled=False):
            return hermitian_symmetrise(self._log_gain_from_spectrum(rfft_image(x01)), self.size[1])

    def forward_with_log_gain(self, x01: Tensor) -> tuple[Tensor, Tensor]:
        """Prompted image and its effective log-gain, sharing one forward FFT."""
        self._check(x01)
        with torch.autocast(device_type=x01.device.type, enabled=False):
            spectrum = rfft_image(x01)
            lg = hermitian_symmetrise(self._log_gain_from_spectrum(spectrum), self.size[1])
            return apply_gain_spectrum(spectrum, lg, self.size, x01.dtype), lg

    def forward(self, x01: Tensor, return_log_gain: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Prompted image, same shape and dtype as ``x01``, clamped to ``[0, 1]`` (and its log-gain)."""
        out, log_gain = self.forward_with_log_gain(x01)
        return (out, log_gain) if return_log_gain else out

    @torch.no_grad()
    def mean_gain(self) -> Tensor:
        """Dataset-level gain ``exp(alpha*tanh(P))`` in the band, 1 elsewhere: ``C×H×(W//2+1)``, float32, detached."""
        lg = self.alpha * torch.tanh(self.prompt_grid()) * self.mask
        return torch.exp(hermitian_symmetrise(lg, self.size[1])).detach()

    @torch.no_grad()
    def randomise_(self, mean_abs_log_gain: float, generator: torch.Generator) -> FourierPromptGenerator:
        """A fixed random dataset prompt whose gain has ``mean_abs_log_gain`` over the in-band bins (the control of a learned one).

        Draws ``P`` from a standard normal, then scales it (bisection) to the requested mean
        ``|alpha * tanh(P)|``; the conditional net stays at zero.
        """
        if not 0 <= mean_abs_log_gain < self.alpha:
            raise ValueError(f"mean |log gain| must lie in [0, alpha={self.alpha}), got {mean_abs_log_gain}")
        z = torch.randn(self.prompt.shape, generator=generator)
        grid = (lambda p: p if self.basis is None else torch.einsum("hwk,ck->chw", self.basis.cpu(), p))(z)
        mask = self.mask.cpu()
        bins = max(1.0, float(mask.sum()) * grid.shape[0])

        def mean_abs(scale: float) -> float:
            return float((self.alpha * torch.tanh(scale * grid)).abs().mul(mask).sum()) / bins

        lo, hi = 0.0, 1.0
        while mean_abs(hi) < mean_abs_log_gain and hi < 1e6:
            hi *= 2
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if mean_abs(mid) < mean_abs_log_gain else (lo, mid)
        self.prompt.copy_(0.5 * (lo + hi) * z)
        return self

    def gain_regulariser(self, x01: Tensor | None = None, *, log_gain: Tensor | None = None) -> Tensor:
        """Mean squared log-gain over the in-band bins (L2 pull of the gain towards 1).

        Uses ``log_gain`` if given (e.g. from :meth:`forward_with_log_gain`), else the log-gain of
        ``x01`` when the FPG is conditional, else the dataset-level prompt alone.
        """
        if log_gain is None:
            if x01 is not None and self.cond is not None:
                log_gain = self.log_gain(x01)
            else:
                log_gain = hermitian_symmetrise(self.alpha * torch.tanh(self.prompt_grid()) * self.mask, self.size[1])
        if self._active_bins == 0:
            return log_gain.new_zeros(())
        # Out-of-band bins are exactly 0: sum everything, divide by (B×C) × in-band bins.
        return log_gain.pow(2).sum() / (log_gain[..., 0, 0].numel() * self._active_bins)
