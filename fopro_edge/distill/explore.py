"""Explore stage: tune the Fourier prompt and a linear probe on the frozen teacher.

A second probe is trained on clean (un-prompted) teacher features in the same steps, so the
two validation balanced accuracies measure the teacher's frequency preference on this data.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from torch.utils.data import DataLoader

from fopro_edge.config import Recipe
from fopro_edge.distill.losses import BalancedSoftmax
from fopro_edge.distill.runtime import Runtime
from fopro_edge.errors import TrainingError

log = logging.getLogger(__name__)


def _check_finite(terms: dict[str, torch.Tensor], epoch: int) -> None:
    bad = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
    if bad:
        raise TrainingError(
            f"non-finite loss in explore epoch {epoch + 1} (term {', '.join(bad)}); no checkpoint was written yet "
            "(lower distill.explore.lr or prompt.alpha, or set runtime.amp=none)"
        )


def explore_prompt(
    recipe: Recipe,
    teacher: nn.Module,
    prompt: nn.Module,
    probe: nn.Linear,
    clean_probe: nn.Linear,
    train_loader: DataLoader,
    val_loader: DataLoader,
    class_prior,
    rt: Runtime,
    *,
    start_epoch: Callable[[int], None],
) -> dict[str, Any]:
    cfg = recipe.distill.explore
    bsm = BalancedSoftmax(class_prior).to(rt.device)  # the prior of the train loader's sampler
    optimizer = torch.optim.Adam(
        [
            {"params": prompt.parameters(), "lr": cfg.lr},
            {"params": list(probe.parameters()) + list(clean_probe.parameters()), "lr": cfg.probe_lr},
        ]
    )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for epoch in range(cfg.epochs):
        start_epoch(-1 - epoch)  # seeds apart from the training epochs
        totals = np.zeros(3)
        for x, y, _ in train_loader:
            x, y = x.to(rt.device), y.to(rt.device)
            with rt.autocast():
                with torch.no_grad():
                    t_clean = teacher(x)
                x_p, log_gain = prompt(x, return_log_gain=True)
                t_prompt = teacher(x_p)
                loss_prompt = bsm(probe(t_prompt), y)
                loss_clean = bsm(clean_probe(t_clean.float()), y)
                reg = prompt.gain_regulariser(log_gain=log_gain)
                loss = loss_prompt + loss_clean + cfg.gain_l2 * reg
            _check_finite({"probe_prompt": loss_prompt, "probe_clean": loss_clean, "gain_l2": reg}, epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if rt.distributed:
                _allreduce_grads(params, rt.world_size)
            optimizer.step()
            totals += [loss_prompt.item(), loss_clean.item(), 1]
        log.info(
            "explore epoch %d/%d: probe loss with prompt %.4f, without %.4f",
            epoch + 1, cfg.epochs, totals[0] / max(totals[2], 1), totals[1] / max(totals[2], 1),
        )
    with_prompt, without_prompt = _probe_scores(teacher, prompt, probe, clean_probe, val_loader, rt)
    gain = prompt.mean_gain()
    result = {
        "epochs": cfg.epochs,
        "probe_balanced_accuracy_with_prompt": with_prompt,
        "probe_balanced_accuracy_without_prompt": without_prompt,
        "gain_min": float(gain.min()),
        "gain_max": float(gain.max()),
        "gain_mean": float(gain.mean()),
    }
    log.info(
        "explore: teacher probe balanced accuracy on val %.4f with the prompt, %.4f without (gain %.3f..%.3f)",
        with_prompt, without_prompt, result["gain_min"], result["gain_max"],
    )
    return result


@torch.no_grad()
def _probe_scores(teacher, prompt, probe, clean_probe, loader, rt: Runtime) -> tuple[float, float]:
    ys, p_prompt, p_clean = [], [], []
    for x, y, _ in loader:
        x = x.to(rt.device)
        with rt.autocast():
            p_prompt.append(probe(teacher(prompt(x))).argmax(1).cpu())
            p_clean.append(clean_probe(teacher(x)).argmax(1).cpu())
        ys.append(y)
    y = torch.cat(ys).numpy()
    return (
        float(balanced_accuracy_score(y, torch.cat(p_prompt).numpy())),
        float(balanced_accuracy_score(y, torch.cat(p_clean).numpy())),
    )


def _allreduce_grads(params: list[torch.Tensor], world_size: int) -> None:
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size
