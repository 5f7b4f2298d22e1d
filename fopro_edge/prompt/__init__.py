"""Fourier Prompt Generator: pure FFT functions and the small trainable module."""

from fopro_edge.prompt.fourier import apply_amplitude_gain as apply_amplitude_gain
from fopro_edge.prompt.fourier import apply_gain_spectrum as apply_gain_spectrum
from fopro_edge.prompt.fourier import amplitude_features as amplitude_features
from fopro_edge.prompt.fourier import band_mask as band_mask
from fopro_edge.prompt.fourier import hermitian_symmetrise as hermitian_symmetrise
from fopro_edge.prompt.fourier import radial_frequency as radial_frequency
from fopro_edge.prompt.fourier import rfft_image as rfft_image
from fopro_edge.prompt.module import FourierPromptGenerator as FourierPromptGenerator

__all__ = [
    "FourierPromptGenerator",
    "amplitude_features",
    "apply_amplitude_gain",
    "apply_gain_spectrum",
    "band_mask",
    "hermitian_symmetrise",
    "radial_frequency",
    "rfft_image",
]
