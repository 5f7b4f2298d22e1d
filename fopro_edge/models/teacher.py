"""The frozen pre-trained teacher: any timm model, used for its pooled pre-logit features, at its own input size."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from fopro_edge.config import Recipe, TeacherConfig
from fopro_edge.models.timm_factory import create_timm_model, load_weights_into


class FrozenTeacher(nn.Module):
    """Takes RGB in [0, 1], applies the teacher's own normalisation, returns pooled features.

    Always in eval mode with no trainable parameters; gradients still flow to the *input*,
    which the Fourier prompt needs. Inputs must already be ``image_size``²: the teacher's view is
    rendered from the source image at that size, never resized from the student's tensor here.
    """

    def __init__(self, model: nn.Module, mean, std, image_size: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        freeze(self)

    def train(self, mode: bool = True) -> "FrozenTeacher":  # noqa: ARG002 - the teacher never trains
        return super().train(False)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        if self.image_size is not None and tuple(x01.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"the teacher takes {self.image_size}×{self.image_size} images (teacher.image_size), got "
                             f"{tuple(x01.shape[-2:])}: render its view at that size")
        x = (x01 - self.mean) / self.std
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def teacher_input_size(cfg: TeacherConfig) -> int | None:
    """``teacher.image_size``, else the model's own input size (timm ``pretrained_cfg``), else None (unknown model)."""
    if cfg.image_size is not None:
        return cfg.image_size
    img_size = cfg.model_args.get("img_size")
    if img_size is not None:
        return int(img_size if isinstance(img_size, int) else img_size[-1])
    import timm  # lazy: heavy

    pcfg = timm.get_pretrained_cfg(cfg.model, allow_unregistered=False) if timm.is_model(cfg.model) else None
    size = getattr(pcfg, "input_size", None) if pcfg is not None else None
    return int(size[-1]) if size else None


def with_teacher_size(recipe: Recipe) -> Recipe:
    """The recipe with ``teacher.image_size`` resolved (the teacher's own input size unless the recipe sets one)."""
    size = teacher_input_size(recipe.teacher) or recipe.data.image_size
    return dataclasses.replace(recipe, teacher=dataclasses.replace(recipe.teacher, image_size=size))


def build_teacher(cfg: TeacherConfig) -> FrozenTeacher:
    model = create_timm_model(cfg.model, pretrained=cfg.pretrained, key="teacher.model", **cfg.model_args)
    if cfg.weights:
        load_weights_into(
            model, cfg.weights, key="teacher.weights", mapping=cfg.weights_mapping, strip_prefixes=cfg.strip_prefixes
        )
    pcfg = model.pretrained_cfg
    size = teacher_input_size(cfg) or int(pcfg.get("input_size", (3, 224, 224))[-1])
    return FrozenTeacher(model, tuple(pcfg.get("mean", (0.485, 0.456, 0.406))), tuple(pcfg.get("std", (0.229, 0.224, 0.225))), size)
