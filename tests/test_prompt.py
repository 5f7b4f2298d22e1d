"""Fourier Prompt Generator: pure FFT functions and the module."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fopro_edge.config import PromptConfig
from fopro_edge.prompt import (
    FourierPromptGenerator,
    amplitude_features,
    apply_amplitude_gain,
    apply_gain_spectrum,
    band_mask,
    hermitian_symmetrise,
    radial_frequency,
    rfft_image,
)


def digits_image(size: tuple[int, int] = (32, 32), batch: int = 2, channels: int = 3) -> torch.Tensor:
    """Real handwritten digits (sklearn, bundled), upscaled smoothly, in [0, 1]."""
    from sklearn.datasets import load_digits

    d = torch.tensor(load_digits().images[:batch], dtype=torch.float32) / 16.0  # B×8×8
    x = F.interpolate(d[:, None], size=size, mode="bicubic", align_corners=False).clamp(0, 1)
    return x.expand(-1, channels, -1, -1).contiguous() * torch.linspace(0.8, 1.0, channels)[None, :, None, None]


def mid_grey(size: tuple[int, int] = (32, 32), batch: int = 2, contrast: float = 0.05, seed: int = 0) -> torch.Tensor:
    """Smooth random image around 0.5 with small contrast: no clamping under moderate gains."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, 3, size[0] // 4 + 1, size[1] // 4 + 1, generator=g) * 2 - 1
    smooth = F.interpolate(noise, size=size, mode="bilinear", align_corners=False)
    return 0.5 + contrast * smooth


def amplitude(x: torch.Tensor) -> torch.Tensor:
    return torch.fft.rfft2(x.double()).abs()


def assert_amplitude_gain(x: torch.Tensor, y: torch.Tensor, gain: torch.Tensor) -> None:
    """|Y| == gain * |X| per bin, to float32 precision relative to the spectrum's scale."""
    a_x, a_y = amplitude(x), amplitude(y)
    expected = gain.double() * a_x
    torch.testing.assert_close(a_y, expected, rtol=1e-4, atol=1e-5 * float(a_x.max()))


# ---------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize("h,w", [(32, 32), (33, 31), (8, 5)])
def test_radial_frequency_and_band_mask(h: int, w: int) -> None:
    r = radial_frequency(h, w)
    assert r.shape == (h, w // 2 + 1)
    assert r[0, 0] == 0 and r.min() >= 0 and r.max() <= 1
    if w % 2 == 0:
        assert r[0, w // 2] == pytest.approx(1.0)
    if h % 2 == 0:
        assert r[h // 2, 0] == pytest.approx(1.0)
    assert r[1, 0] == pytest.approx(2.0 / h)  # one cycle per image height
    low, high, every = (band_mask(h, w, b, 0.3) for b in ("low", "high", "all"))
    for m in (low, high, every):
        assert m.shape == r.shape and m[0, 0] == 0 and set(m.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(low + high, every)  # complementary outside DC
    assert torch.all(low[r > 0.3] == 0) and torch.all(high[r <= 0.3] == 0)
    with pytest.raises(ValueError):
        band_mask(h, w, "mid", 0.3)  # type: ignore[arg-type]


@pytest.mark.parametrize("h,w", [(32, 32), (33, 31), (7, 10)])
def test_fft_round_trip(h: int, w: int) -> None:
    x = torch.rand(2, 3, h, w)
    x_copy = x.clone()
    spec = rfft_image(x)
    assert spec.dtype == torch.complex64 and spec.shape == (2, 3, h, w // 2 + 1)
    torch.testing.assert_close(apply_gain_spectrum(spec, torch.zeros(()), (h, w)), x, atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_amplitude_gain(x, torch.zeros(3, h, w // 2 + 1)), x, atol=1e-5, rtol=0)
    assert torch.equal(x, x_copy)  # input untouched
    feats = amplitude_features(spec)
    assert feats.dtype == torch.float32 and torch.all(feats >= 0)


def test_apply_amplitude_gain_scales_amplitude_and_keeps_phase() -> None:
    x = mid_grey((16, 16))
    lg = torch.zeros(3, 16, 9)
    lg[:, 2, 3] = math.log(2.0)  # bin (2, 3) and, implicitly, its mirror (-2, -3)
    y = apply_amplitude_gain(x, lg)
    a_x, a_y = amplitude(x), amplitude(y)
    torch.testing.assert_close(a_y[..., 2, 3], 2 * a_x[..., 2, 3], rtol=1e-4, atol=1e-5)
    mask = torch.ones(16, 9, dtype=torch.bool)
    mask[2, 3] = False
    torch.testing.assert_close(a_y[..., mask], a_x[..., mask], rtol=1e-4, atol=1e-4)
    phase_x = torch.angle(torch.fft.rfft2(x.double()))[..., 2, 3]
    phase_y = torch.angle(torch.fft.rfft2(y.double()))[..., 2, 3]
    torch.testing.assert_close(phase_y, phase_x, rtol=0, atol=1e-4)


def test_hermitian_symmetrise_makes_gain_exact() -> None:
    h, w = 8, 8
    lg = torch.randn(3, h, w // 2 + 1) * 0.2
    sym = hermitian_symmetrise(lg, w)
    for col in (0, w // 2):
        for k in range(h):
            assert sym[:, k, col].tolist() == pytest.approx(sym[:, (-k) % h, col].tolist())
    torch.testing.assert_close(sym[..., 1:w // 2], lg[..., 1:w // 2])  # other columns untouched
    x = mid_grey((h, w))
    y = apply_amplitude_gain(x, lg)
    # The applied gain is exactly exp(symmetrised log-gain), including the self-mirrored columns.
    assert_amplitude_gain(x, y, torch.exp(sym))
    with pytest.raises(AssertionError):  # the raw, unsymmetrised gain is NOT what gets applied
        assert_amplitude_gain(x, y, torch.exp(lg))


# ---------------------------------------------------------------------------- module


@pytest.mark.parametrize("conditional", [True, False])
def test_identity_at_init(conditional: bool) -> None:
    x = digits_image((32, 32))
    fpg = FourierPromptGenerator(32, alpha=2.0, conditional=conditional)
    y = fpg(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert (y - x).abs().max() < 1e-5
    assert torch.all(fpg.mean_gain() == 1)
    assert fpg.gain_regulariser(x) == 0


def test_gain_bounds_and_range() -> None:
    alpha = 0.7
    x = mid_grey((16, 16), contrast=0.05)
    fpg = FourierPromptGenerator(16, alpha=alpha, conditional=False)
    for sign in (1.0, -1.0):
        with torch.no_grad():
            fpg.prompt.fill_(sign * 50.0)
        expected = torch.full((3, 16, 9), math.exp(sign * alpha))
        expected[..., 0, 0] = 1.0
        assert_amplitude_gain(x, fpg(x), expected)
        torch.testing.assert_close(fpg.mean_gain(), expected, rtol=1e-6, atol=1e-6)
        assert fpg.gain_regulariser().item() == pytest.approx(alpha**2, rel=1e-4)
    # Random large prompt + random conditional net: every effective gain stays within the bounds.
    fpg = FourierPromptGenerator(16, alpha=alpha, conditional=True)
    torch.manual_seed(0)
    with torch.no_grad():
        fpg.prompt.normal_(0, 30.0)
        fpg.cond[-1].weight.normal_(0, 5.0)
    g = torch.exp(fpg.log_gain(x))
    assert g.min() >= math.exp(-alpha) - 1e-6 and g.max() <= math.exp(alpha) + 1e-6
    assert g.min() < math.exp(-alpha) + 0.05 and g.max() > math.exp(alpha) - 0.05  # bounds are reached
    # Output stays in [0, 1] even with a large alpha on a full-range image.
    strong = FourierPromptGenerator(32, alpha=5.0, conditional=False)
    with torch.no_grad():
        strong.prompt.normal_(0, 10.0)
    y = strong(digits_image((32, 32)))
    assert y.min() >= 0 and y.max() <= 1 and (y == 1).any() | (y == 0).any()


def test_dc_is_kept() -> None:
    x = mid_grey((24, 24), contrast=0.1)
    assert x.min() > 0.2 and x.max() < 0.8
    fpg = FourierPromptGenerator(24, alpha=0.3, conditional=True)
    torch.manual_seed(1)
    with torch.no_grad():
        fpg.prompt.normal_(0, 3.0)
        fpg.cond[-1].weight.normal_(0, 1.0)
    y = fpg(x)
    assert y.min() > 0 and y.max() < 1  # nothing clamped
    assert (y - x).abs().max() > 1e-3  # the prompt did something
    torch.testing.assert_close(y.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=1e-5, rtol=0)
    assert torch.all(fpg.mean_gain()[:, 0, 0] == 1)


@pytest.mark.parametrize("band", ["low", "high"])
def test_band_restriction(band: str) -> None:
    size, radius = 32, 0.25
    x = mid_grey((size, size), contrast=0.05)
    fpg = FourierPromptGenerator(size, alpha=0.5, band=band, band_radius=radius)  # type: ignore[arg-type]
    torch.manual_seed(2)
    with torch.no_grad():
        fpg.prompt.normal_(0, 3.0)
        fpg.cond[-1].weight.normal_(0, 1.0)
    y = fpg(x)
    assert y.min() > 0 and y.max() < 1
    a_x, a_y = amplitude(x), amplitude(y)
    r = radial_frequency(size, size)
    outside = (r > radius) if band == "low" else (r <= radius)
    inside = ~outside
    inside[0, 0] = False
    torch.testing.assert_close(a_y[..., outside], a_x[..., outside], rtol=1e-4, atol=1e-4)
    changed = ((a_y[..., inside] - a_x[..., inside]).abs() > 1e-3 * (1 + a_x[..., inside])).float().mean()
    assert changed > 0.5
    g = fpg.mean_gain()
    assert torch.all(g[:, outside] == 1)


def test_gradients_reach_prompt_and_conditional_net() -> None:
    fpg = FourierPromptGenerator(16, alpha=1.0, conditional=True, conditional_channels=4)
    torch.manual_seed(3)
    with torch.no_grad():
        fpg.cond[-1].weight.normal_(0, 0.01)
    x = mid_grey((16, 16))
    target = torch.rand_like(x)
    y, lg = fpg.forward_with_log_gain(x)
    loss = ((y - target) ** 2).mean() + fpg.gain_regulariser(log_gain=lg)
    loss.backward()
    params = dict(fpg.named_parameters())
    assert set(params) == {"prompt", "cond.0.weight", "cond.0.bias", "cond.2.weight", "cond.2.bias"}
    for name, p in params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert fpg.prompt.grad[:, 0, 0].abs().max() == 0  # DC never moves


@pytest.mark.parametrize("h,w", [(33, 31), (32, 17)])
def test_odd_sizes(h: int, w: int) -> None:
    fpg = FourierPromptGenerator((h, w), channels=3, conditional=True)
    assert fpg.prompt.shape == (3, h, w // 2 + 1)
    x = digits_image((h, w))
    torch.testing.assert_close(fpg(x), x, atol=1e-5, rtol=0)
    with torch.no_grad():
        fpg.prompt.normal_(0, 1.0)
        fpg.cond[-1].weight.normal_(0, 0.1)
    y = fpg(x)
    assert y.shape == x.shape
    assert fpg.log_gain(x).shape == (2, 3, h, w // 2 + 1)
    assert fpg.mean_gain().shape == (3, h, w // 2 + 1)
    with pytest.raises(ValueError, match="expects"):
        fpg(torch.rand(1, 3, h + 1, w))


@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
def test_autocast_bf16(in_dtype: torch.dtype) -> None:
    fpg = FourierPromptGenerator(16, conditional=True)
    with torch.no_grad():
        fpg.prompt.normal_(0, 1.0)
        fpg.cond[-1].weight.normal_(0, 0.1)
    x = mid_grey((16, 16)).to(in_dtype)
    ref = fpg(x.float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = fpg(x)
        y.float().sum().backward()
    assert y.dtype == in_dtype
    assert fpg.prompt.grad is not None and fpg.prompt.grad.dtype == torch.float32
    tol = 1e-5 if in_dtype == torch.float32 else 1e-2
    torch.testing.assert_close(y.float(), ref, atol=tol, rtol=0)


def test_from_config_and_input_untouched() -> None:
    cfg = PromptConfig(alpha=0.5, band="high", band_radius=0.4, conditional=False, conditional_channels=4)
    fpg = FourierPromptGenerator.from_config(cfg, 20)
    assert (fpg.alpha, fpg.band, fpg.band_radius, fpg.cond) == (0.5, "high", 0.4, None)
    assert [n for n, _ in fpg.named_parameters()] == ["prompt"]
    assert "mask" not in fpg.state_dict()
    with torch.no_grad():
        fpg.prompt.normal_(0, 1.0)
    x = digits_image((20, 20))
    x_copy = x.clone()
    fpg(x)
    assert torch.equal(x, x_copy)


def test_smooth_gain_is_a_partition_of_unity_over_radius_and_orientation():
    from fopro_edge.prompt.fourier import radial_frequency, smooth_basis

    basis = smooth_basis(24, 24, radial_bins=5, orientation_bins=4)
    assert basis.shape == (24, 13, 20)
    torch.testing.assert_close(basis.sum(-1), torch.ones(24, 13))
    fpg = FourierPromptGenerator(24, conditional=False, gain="smooth", radial_bins=5, orientation_bins=4)
    assert fpg.prompt.shape == (3, 20)
    with torch.no_grad():  # one radial value raised: the gain follows the radius, not single bins
        fpg.prompt[:, :4] = 2.0  # radial centre 0 (all orientations)
    lg = fpg.log_gain(torch.rand(1, 3, 24, 24))
    r = radial_frequency(24, 24)
    assert float(lg[0][(r > 0) & (r < 0.1)].min()) > float(lg[0][r > 0.5].max())  # unconditional: C×H×(W//2+1)


def test_a_shared_prompt_gives_every_channel_the_same_gain():
    fpg = FourierPromptGenerator(16, prompt_channels=1)
    with torch.no_grad():
        fpg.prompt.normal_()
    grey = torch.rand(2, 1, 16, 16).expand(2, 3, 16, 16)
    out = fpg(grey)
    torch.testing.assert_close(out[:, 0], out[:, 1])  # a grey image stays grey
    torch.testing.assert_close(out[:, 1], out[:, 2])


@pytest.mark.parametrize("gain", ["bins", "smooth"])
def test_a_random_prompt_has_the_requested_mean_abs_log_gain(gain):
    fpg = FourierPromptGenerator(32, conditional=False, gain=gain)
    fpg.randomise_(0.2, torch.Generator().manual_seed(0))
    lg = fpg.log_gain(torch.rand(1, 3, 32, 32))
    in_band = fpg.mask.bool().expand_as(lg)
    assert float(lg[in_band].abs().mean()) == pytest.approx(0.2, rel=0.05)  # hermitian averaging moves it a little
    again = FourierPromptGenerator(32, conditional=False, gain=gain).randomise_(0.2, torch.Generator().manual_seed(0))
    assert torch.equal(again.prompt, fpg.prompt)
