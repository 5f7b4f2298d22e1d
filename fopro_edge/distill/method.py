"""The FoPro-KD training objective for one batch: ce | bsm | ekd | ekd+fpg | ekd+randfpg | fopro."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fopro_edge.config import Recipe
from fopro_edge.distill.losses import BalancedSoftmax, alignment_loss, effective_number_weights, sampler_prior
from fopro_edge.models.student import EKDHeads, Student


class DistillNet(nn.Module):
    """Student plus (when the method distils) its EKD heads: the one module DDP wraps."""

    def __init__(self, student: Student, heads: EKDHeads | None) -> None:
        super().__init__()
        self.student = student
        self.heads = heads

    def forward(self, x01: torch.Tensor):
        h = self.student.features(x01)
        z1 = self.student.classify(h)
        if self.heads is None:
            return z1, None, None
        q, z2 = self.heads(h)
        return z1, q, z2


DRW_FROM = 0.8  # share of the epochs after which deferred re-weighting starts (released code)


@dataclass
class StepOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor]
    prompt_loss: torch.Tensor | None = None  # the adversarial FPG objective, when an AKD step ran


class Objective:
    """Computes the losses of one batch. Parameter updates are left to the trainer."""

    def __init__(self, recipe: Recipe, class_counts, teacher=None, prompt=None, probe=None) -> None:
        self.method = recipe.distill.method
        self.align_weight = recipe.distill.align_weight
        self.akd = recipe.distill.akd
        # The prior of the batches the sampler draws: BSM corrects for it once (uniform under `balanced`).
        self.bsm = BalancedSoftmax(sampler_prior(class_counts, recipe.data.sampler))
        self.teacher, self.prompt, self.probe = teacher, prompt, probe
        # Deferred re-weighting of the alignment loss (released code, --balanced_free): on from epoch int(0.8 E).
        self.drw_weights = None
        if recipe.distill.align_balance == "drw":
            self.drw_weights = torch.as_tensor(effective_number_weights(class_counts), dtype=torch.float32)
        self.drw_start = int(DRW_FROM * recipe.distill.epochs)
        self.akd_start = recipe.akd_start_epoch
        self.align_class_weights: torch.Tensor | None = None
        self.epoch = 0

    def to(self, device: torch.device) -> "Objective":
        self.bsm.to(device)
        if self.drw_weights is not None:
            self.drw_weights = self.drw_weights.to(device)
        return self

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before every epoch (0-based): epoch-dependent parts of the objective."""
        self.epoch = epoch
        drw_on = self.drw_weights is not None and epoch >= self.drw_start
        self.align_class_weights = self.drw_weights if drw_on else None

    def akd_due(self, step: int) -> bool:
        return self.method == "fopro" and self.epoch >= self.akd_start and step % self.akd.every == 0

    def __call__(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int, *,
                 teacher_input: torch.Tensor | None = None, teacher_features: torch.Tensor | None = None) -> StepOutput:
        """``x``: the student's view; the teacher's target comes from ``teacher_features`` (cached) or from
        ``teacher_input`` (its own view of the same images, at its resolution, prompted here)."""
        z1, q, z2 = net(x)
        if self.method == "ce":
            loss = F.cross_entropy(z1.float(), y)
            return StepOutput(loss, {"ce": loss})
        cls = self.bsm(z1, y)
        if self.method == "bsm":
            return StepOutput(cls, {"bsm": cls})
        terms = {"bsm": cls, "bsm_proj": self.bsm(z2, y)}
        prompt_loss = None
        if teacher_features is not None:
            t = teacher_features
        elif teacher_input is None:
            raise ValueError(f"{self.method}: the batch holds neither the teacher's view nor its cached features")
        elif self.akd_due(step):
            # AKD: one forward through FPG and teacher feeds both the adversarial prompt update
            # (raise the alignment loss, keep the teacher probe right and the gain near 1) and the
            # student's target on that prompted view.
            x_p, log_gain = self.prompt(teacher_input, return_log_gain=True)
            t = self.teacher(x_p)
            adv = alignment_loss(q.detach(), t)
            probe_loss = self.bsm(self.probe(t), y)
            reg = _module(self.prompt).gain_regulariser(log_gain=log_gain)
            prompt_loss = -adv + self.akd.probe_weight * probe_loss + self.akd.gain_l2 * reg
            terms.update(akd_adv=adv.detach(), akd_probe=probe_loss.detach(), akd_gain_l2=reg.detach())
            t = t.detach()
        else:
            with torch.no_grad():
                t = self.teacher(self.prompt(teacher_input) if self.prompt is not None else teacher_input)
        w = self.align_class_weights
        terms["align"] = alignment_loss(q, t, None if w is None else w[y])
        loss = terms["bsm"] + terms["bsm_proj"] + self.align_weight * terms["align"]
        return StepOutput(loss, terms, prompt_loss)


def _module(m: nn.Module) -> nn.Module:
    return getattr(m, "module", m)
