"""The student: any timm classifier behind its own input normalisation, plus training-only EKD heads."""

from __future__ import annotations

import torch
from torch import nn

from fopro_edge.config import StudentConfig
from fopro_edge.models.timm_factory import create_timm_model, load_weights_into

MIN_BACKBONE_MATCH = 0.5  # share of the non-classifier tensors student.weights must fill, else it is refused


class Student(nn.Module):
    """A timm classifier that takes RGB in [0, 1] (NCHW) and returns logits.

    The normalisation lives inside the module, so every exported graph has it baked in.
    """

    def __init__(self, backbone: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def num_classes(self) -> int:
        return int(self.backbone.num_classes)

    def features(self, x01: torch.Tensor) -> torch.Tensor:
        """Pooled pre-logit features."""
        x = (x01 - self.mean) / self.std
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_classifier()(features)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.backbone((x01 - self.mean) / self.std)


class EKDHeads(nn.Module):
    """EKD's training-only projector (feature -> hidden -> BN -> ReLU -> teacher dim) and second head."""

    def __init__(self, in_dim: int, hidden_dim: int, teacher_dim: int, num_classes: int) -> None:
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, teacher_dim),
        )
        self.head = nn.Linear(teacher_dim, num_classes)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.projector(features)
        return q, self.head(q)


def build_student(cfg: StudentConfig, num_classes: int) -> Student:
    """The timm model with ``num_classes`` outputs; ``cfg.weights`` fills the backbone, while a classifier
    whose shape differs from the file's (e.g. ImageNet's 1000 classes) keeps its fresh init."""
    backbone = create_timm_model(
        cfg.model, pretrained=cfg.pretrained, num_classes=num_classes, key="student.model", drop_rate=cfg.drop_rate,
        **cfg.model_args,
    )
    if cfg.weights:
        load_weights_into(
            backbone, cfg.weights, key="student.weights", mapping=cfg.weights_mapping, strip_prefixes=cfg.strip_prefixes,
            skip_classifier=True, min_match=MIN_BACKBONE_MATCH,
        )
    pcfg = backbone.pretrained_cfg
    return Student(backbone, tuple(pcfg.get("mean", (0.485, 0.456, 0.406))), tuple(pcfg.get("std", (0.229, 0.224, 0.225))))


def feature_dim(model: nn.Module, image_size: int, features=None) -> int:
    """Size of the pooled feature vector, found by one tiny forward pass."""
    fn = features or model.features
    was_training = model.training
    model.eval()
    with torch.no_grad():
        dim = fn(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)).shape[-1]
    model.train(was_training)
    return int(dim)
