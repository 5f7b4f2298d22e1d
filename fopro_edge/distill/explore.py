"""Explore stage: tune the Fourier prompt on the frozen teacher, then measure what it does.

Training: the FPG and a linear probe on prompted teacher features (Balanced Softmax, small L2 on
the log-gain) for ``distill.explore.steps`` optimizer steps, cycling the train loader. The probe
stays with the prompt for AKD.

Diagnostic, the prompt frozen: class-balanced logistic-regression probes on clean and on prompted
teacher features of the un-augmented train images, the same resample per probe seed, scored on
val (:mod:`fopro_edge.distill.probe`); and the prompt's effective gain (dataset prompt with the
conditional net) over the val images, plotted to ``explore.png``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from fopro_edge.config import Recipe
from fopro_edge.distill.losses import BalancedSoftmax
from fopro_edge.distill.probe import FeatureSplit, compare_features, extract_features
from fopro_edge.distill.runtime import Runtime
from fopro_edge.errors import TrainingError

log = logging.getLogger(__name__)


def _check_finite(terms: dict[str, torch.Tensor], step: int) -> None:
    bad = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
    if bad:
        raise TrainingError(
            f"non-finite loss in explore step {step + 1} (term {', '.join(bad)}); no checkpoint was written yet "
            "(lower distill.explore.lr or prompt.alpha, or set runtime.amp=none)"
        )


def train_prompt(
    recipe: Recipe,
    teacher: nn.Module,
    prompt: nn.Module,
    probe: nn.Linear,
    train_loader: DataLoader,
    class_prior,
    rt: Runtime,
    *,
    start_epoch: Callable[[int], None],
    after_step: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """``distill.explore.steps`` Adam steps on the FPG and the prompted probe; returns the loss at the start and end."""
    cfg = recipe.distill.explore
    bsm = BalancedSoftmax(class_prior).to(rt.device)  # the prior of the train loader's sampler
    optimizer = torch.optim.Adam(
        [{"params": prompt.parameters(), "lr": cfg.lr}, {"params": probe.parameters(), "lr": cfg.probe_lr}]
    )
    params = [p for group in optimizer.param_groups for p in group["params"]]
    losses: list[float] = []
    step, cycle = 0, 0
    while step < cfg.steps:
        start_epoch(-1 - cycle)  # seeds apart from the training epochs
        before = step
        for batch in train_loader:
            if step >= cfg.steps:
                break
            x, y = batch["teacher"].to(rt.device), batch["label"].to(rt.device)
            with rt.autocast():
                x_p, log_gain = prompt(x, return_log_gain=True)
                loss_probe = bsm(probe(teacher(x_p)), y)
                reg = prompt.gain_regulariser(log_gain=log_gain)
                loss = loss_probe + cfg.gain_l2 * reg
            _check_finite({"probe": loss_probe, "gain_l2": reg}, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if rt.distributed:
                _allreduce_grads(params, rt.world_size)
            optimizer.step()
            losses.append(loss_probe.item())
            step += 1
            if after_step is not None:
                after_step(step)
        if step == before:
            raise TrainingError("explore: the train loader yielded no batch (too few train images for one batch)")
        cycle += 1
        log.info("explore step %d/%d: prompted probe loss %.4f", step, cfg.steps, float(np.mean(losses[before:])))
    window = max(1, min(10, len(losses) // 4))
    return {
        "steps": cfg.steps,
        "loader_passes": cycle,
        "probe_loss_start": float(np.mean(losses[:window])) if losses else None,
        "probe_loss_end": float(np.mean(losses[-window:])) if losses else None,
    }


@torch.no_grad()
def effective_gain(prompt: nn.Module, dataset, rt: Runtime, *, batch_size: int = 64) -> tuple[np.ndarray, dict[str, Any]]:
    """The gain the FPG applies to ``dataset``'s images (dataset prompt with the conditional net).

    Returns the per-bin gain averaged over the images (``C×H×(W//2+1)``) and its summary:
    ``min``/``max``/``mean`` over the bins of that average, and per image the mean and the largest
    ``|log gain|`` over the in-band bins, averaged over the images.
    """
    from fopro_edge.data import CheckedDataLoader

    active = float(prompt.mask.sum().item()) * prompt.channels
    total, n, abs_mean, abs_max = None, 0, 0.0, 0.0
    for x, _, _ in CheckedDataLoader(dataset, batch_size=batch_size, shuffle=False):
        lg = prompt.log_gain(x.to(rt.device)).float()
        if lg.dim() == 3:  # unconditional: one gain for every image
            lg = lg.expand(x.shape[0], *lg.shape)
        g = lg.exp().sum(0)
        total = g if total is None else total + g
        n += lg.shape[0]
        if active:
            abs_mean += float((lg.abs().flatten(1).sum(1) / active).sum())
            abs_max += float(lg.abs().flatten(1).amax(1).sum())
    mean_gain = (total / max(n, 1)).cpu().numpy()
    summary = {
        "images": n,
        "min": float(mean_gain.min()),
        "max": float(mean_gain.max()),
        "mean": float(mean_gain.mean()),
        "mean_abs_log_gain": abs_mean / max(n, 1),
        "max_abs_log_gain": abs_max / max(n, 1),
    }
    return mean_gain, summary


def prompt_diagnostic(
    recipe: Recipe,
    teacher: nn.Module,
    prompt: nn.Module,
    train_set,
    val_set,
    few_ids: Sequence[int],
    rt: Runtime,
    *,
    plot_path: Path | None = None,
) -> dict[str, Any]:
    """What the frozen prompt does to the teacher's features: paired clean / prompted probes and its effective gain.

    ``train_set`` and ``val_set`` use the eval transform (no augmentation).
    """
    d = recipe.data
    was_training = prompt.training
    prompt.eval()
    try:
        kw = dict(device=rt.device, batch_size=d.eval_batch_size, num_workers=d.num_workers, autocast=rt.autocast)
        clean_tr, y_tr = extract_features(teacher, train_set, **kw)
        clean_va, y_va = extract_features(teacher, val_set, **kw)
        prompted_tr, _ = extract_features(teacher, train_set, prompt=prompt, **kw)
        prompted_va, _ = extract_features(teacher, val_set, prompt=prompt, **kw)
        gain, gain_summary = effective_gain(prompt, val_set, rt, batch_size=d.eval_batch_size)
        dataset_gain = prompt.mean_gain()  # the dataset-level prompt alone, without the conditional net
        gain_summary |= {"dataset_prompt_min": float(dataset_gain.min()), "dataset_prompt_max": float(dataset_gain.max())}
    finally:
        prompt.train(was_training)
    probes = compare_features(
        FeatureSplit(prompted_tr, prompted_va), FeatureSplit(clean_tr, clean_va), y_tr, y_va, few_ids,
        seeds=recipe.distill.explore.probe_seeds, names=("prompted", "clean"),
    )
    if plot_path is not None:
        from fopro_edge.distill.report import plot_gain_spectrum

        plot_gain_spectrum(gain, plot_path, title=f"Effective FPG gain, mean over {gain_summary['images']} val images")
        gain_summary["plot"] = plot_path.name
    effect = {m: prompt_effect(probes, m) for m in METRICS if probes["difference"][m] is not None}
    return {"probe": probes, "gain": gain_summary, "effect": effect,
            "conclusion": "; ".join(effect_text(m, e) for m, e in effect.items()),
            "verdict": diagnostic_verdict(probes, effect)}


METRICS = {"balanced_accuracy": "balanced accuracy", "few_recall": "few-group recall"}


def prompt_effect(probes: dict[str, Any], metric: str = "balanced_accuracy") -> str:
    """``more`` / ``less`` when both 95 % intervals of the prompted − clean difference lie above / below 0, else ``none``."""
    diff = probes["difference"][metric]
    intervals = [diff["t_interval"]] + ([diff["bootstrap_interval"]] if diff["bootstrap_interval"] else [])
    if min(lo for lo, _ in intervals) > 0:
        return "more"
    if max(hi for _, hi in intervals) < 0:
        return "less"
    return "none"


def effect_text(metric: str, effect: str) -> str:
    what = f"the teacher probe's {METRICS[metric]}"
    return {"more": f"the prompt raises {what}", "less": f"the prompt lowers {what}",
            "none": f"no measurable effect of the prompt on {what}"}[effect]


def diagnostic_verdict(probes: dict[str, Any], effect: dict[str, str]) -> str:
    """One sentence per metric: the difference, both intervals and what they mean."""
    parts = []
    for metric in effect:
        diff = probes["difference"][metric]
        t_lo, t_hi = diff["t_interval"]
        boot = diff["bootstrap_interval"]
        over_val = f", {boot[0]:+.3f}..{boot[1]:+.3f} over val images" if boot else ""
        parts.append(f"prompted − clean probe {METRICS[metric]} {diff['mean']:+.3f} (95 % intervals {t_lo:+.3f}..{t_hi:+.3f} "
                     f"over probe seeds{over_val}): {effect_text(metric, effect[metric])}")
    return "; ".join(parts)


def explore_prompt(
    recipe: Recipe,
    teacher: nn.Module,
    prompt: nn.Module,
    probe: nn.Linear,
    train_loader: DataLoader,
    train_eval_set,
    val_set,
    class_prior,
    few_ids: Sequence[int],
    rt: Runtime,
    *,
    start_epoch: Callable[[int], None],
    plot_path: Path | None = None,
) -> dict[str, Any]:
    """Train the prompt, then (main process) run the diagnostic; the result is what ``explore.json`` holds."""
    result: dict[str, Any] = {
        "lr": recipe.distill.explore.lr,
        **train_prompt(recipe, teacher, prompt, probe, train_loader, class_prior, rt, start_epoch=start_epoch),
    }
    if rt.is_main:
        result |= prompt_diagnostic(recipe, teacher, prompt, train_eval_set, val_set, few_ids, rt, plot_path=plot_path)
        g = result["gain"]
        log.info("explore: %s; effective gain %.3f..%.3f, mean |log gain| %.4f",
                 result["verdict"], g["min"], g["max"], g["mean_abs_log_gain"])
    return result


def _allreduce_grads(params: list[torch.Tensor], world_size: int) -> None:
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size
