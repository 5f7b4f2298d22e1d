"""Training views: one augmentation per image, rendered for both the student and the teacher.

A view is augmented once at the larger of the two resolutions, then resized (bilinear,
antialiased) to the smaller one, so the teacher never sees the student's tensor upsampled and
both see the same crop, flip and jitter. ``FixedViews`` renders ``K`` fixed views per image from
seeds of ``(view_seed, image id, k)``: the same views in every run that shares those seeds, which
lets the teacher's features of each view be computed once (``fopro_edge.distill.teacher_cache``).
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from fopro_edge.data.images import ImageList
from fopro_edge.data.transforms import build_transform


@dataclass(frozen=True)
class ViewSpec:
    """How a training view is rendered: the augmentation, and the two resolutions."""

    student_size: int
    teacher_size: int | None  # None: the method has no teacher
    augment: str
    flips: bool

    @property
    def render_size(self) -> int:
        return max(self.student_size, self.teacher_size or 0)

    def to_dict(self) -> dict[str, Any]:
        return {"student_size": self.student_size, "teacher_size": self.teacher_size, "augment": self.augment,
                "flips": self.flips}


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """``C×H×W`` (or ``B×C×H×W``) float image to ``size``², bilinear and antialiased; unchanged when already that size."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    batch = x if x.dim() == 4 else x[None]
    out = F.interpolate(batch.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (out if x.dim() == 4 else out[0]).clamp_(0.0, 1.0)


class ViewRenderer:
    """Renders ``(student view, teacher view or None)`` of a PIL image with one augmentation."""

    def __init__(self, spec: ViewSpec) -> None:
        self.spec = spec
        self.transform = build_transform(spec.render_size, spec.augment, training=True, flips=spec.flips)

    def __call__(self, image) -> tuple[torch.Tensor, torch.Tensor | None]:
        big = self.transform(image)
        s = self.spec
        teacher = None if s.teacher_size is None else resize(big, s.teacher_size)
        return resize(big, s.student_size), teacher

    def seeded(self, image, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The view of ``seed``: the same on every call, and the caller's random streams are left as they were."""
        state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            random.seed(seed)
            torch.default_generator.manual_seed(seed)
            try:
                return self(image)
            finally:
                random.setstate(state)


def view_seed(base: int, image_id: str, k: int) -> int:
    """The rendering seed of view ``k`` of image ``image_id`` (stable across processes and runs)."""
    return int(np.random.SeedSequence([base, zlib.crc32(image_id.encode()), k]).generate_state(1)[0])


class PairedViews(Dataset):
    """Freshly augmented training views: ``{"student", "teacher"?, "label", "index"}`` per image."""

    def __init__(self, images: ImageList, spec: ViewSpec) -> None:
        self.images, self.render = images, ViewRenderer(spec)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        student, teacher = self.render(self.images.load(i))
        item = {"student": student, "label": int(self.images.labels[i]), "index": int(i)}
        if teacher is not None:
            item["teacher"] = teacher
        return item


class FixedViews(Dataset):
    """``K`` fixed views per image; each epoch, image ``i`` is seen in view ``choice[i]`` (see :meth:`choose`).

    ``stored``: the student views as ``N×K×3×S×S`` uint8 (read instead of rendered);
    ``features``: the teacher's features ``N×K×D`` (returned instead of the teacher's view);
    ``teacher_views``: render the teacher's view when no features are given (a live teacher).
    """

    def __init__(self, images: ImageList, spec: ViewSpec, views: int, seed: int, *,
                 stored: torch.Tensor | None = None, features: torch.Tensor | None = None,
                 teacher_views: bool = False) -> None:
        self.images, self.spec, self.views, self.seed = images, spec, views, seed
        self.render = ViewRenderer(spec)
        self.stored, self.features = stored, features
        self.teacher_views = teacher_views and features is None
        self.choice = np.zeros(len(images), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def choose(self, seed: int, epoch: int) -> None:
        """Epoch ``epoch``'s view of every image: each image goes through its ``K`` views in an order drawn from ``seed``."""
        rng = np.random.default_rng([seed, epoch // self.views])
        order = np.argsort(rng.random((len(self.images), self.views)), axis=1)
        self.choice = order[:, epoch % self.views]

    def render_view(self, i: int, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.render.seeded(self.images.load(i), view_seed(self.seed, self.images.id(i), k))

    def __getitem__(self, i: int) -> dict[str, Any]:
        k = int(self.choice[i])
        item: dict[str, Any] = {"label": int(self.images.labels[i]), "index": int(i), "view": k}
        student, teacher = self.render_view(i, k) if self.stored is None or self.teacher_views else (None, None)
        item["student"] = student if self.stored is None else self.stored[i, k].float().div_(255.0)
        if self.features is not None:
            item["teacher_features"] = self.features[i, k]
        elif self.teacher_views:
            item["teacher"] = teacher
        return item


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)
