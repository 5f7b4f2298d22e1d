"""Explore stage: tune the Fourier prompt on the frozen teacher, then measure what it does.

Training, on the teacher's own views at its resolution: a linear probe first fitted to the clean
teacher features (``probe_init: clean``), then ``distill.explore.steps`` prompt steps against it
(Balanced Softmax, small L2 on the log-gain), each followed by a probe refit step
(``probe_every``), cycling the train loader. Every ``select_every`` steps the probe is scored on
the prompted val images and the best step's prompt is kept (step 0, the identity, included: a
prompt that does not help is not kept). The probe stays with the prompt for AKD.

Diagnostic, the prompt frozen: class-balanced logistic-regression probes on clean and on prompted
teacher features of the un-augmented train images, the same resample per probe seed, scored on
val (:mod:`fopro_edge.distill.probe`); and the prompt's effective gain (dataset prompt with the
conditional net) over the val images, plotted to ``explore.png``.
"""

from __future__ import annotations

import copy
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


def init_probe_from_features(probe: nn.Linear, x: np.ndarray, y: np.ndarray) -> None:
    """Set ``probe`` to the class-balanced logistic regression fitted on features ``x`` (its scaler folded in)."""
    from fopro_edge.distill.probe import fit_probe

    model, _ = fit_probe(x, y)
    scaler, lr = model[0], model[-1]
    coef, bias = lr.coef_ / scaler.scale_, lr.intercept_ - (lr.coef_ * (scaler.mean_ / scaler.scale_)).sum(1)
    if coef.shape[0] == 1:  # two classes: one logit z, i.e. logits (-z/2, z/2)
        coef, bias = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    weight = np.zeros((probe.out_features, probe.in_features))
    b = np.full(probe.out_features, -1e4)  # a class without train images is never predicted
    weight[lr.classes_], b[lr.classes_] = coef, bias
    with torch.no_grad():
        probe.weight.copy_(torch.as_tensor(weight, dtype=probe.weight.dtype))
        probe.bias.copy_(torch.as_tensor(b, dtype=probe.bias.dtype))


@torch.no_grad()
def prompted_val_score(teacher: nn.Module, prompt: nn.Module, probe: nn.Linear, val_set, rt: Runtime, *,
                       batch_size: int = 64) -> float:
    """Balanced accuracy of ``probe`` on the teacher's features of the prompted val images."""
    from fopro_edge.data import CheckedDataLoader

    was = prompt.training
    prompt.eval()
    ys, ps = [], []
    try:
        for x, y, _ in CheckedDataLoader(val_set, batch_size=batch_size, shuffle=False):
            with rt.autocast():
                ps.append(probe(teacher(prompt(x.to(rt.device))).float()).argmax(1).cpu().numpy())
            ys.append(np.asarray(y))
    finally:
        prompt.train(was)
    y, p = np.concatenate(ys), np.concatenate(ps)
    return float(np.mean([np.mean(p[y == c] == c) for c in np.unique(y)]))


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
    val_set=None,
) -> dict[str, Any]:
    """``distill.explore.steps`` prompt steps against the probe, with a probe refit step after every
    ``probe_every`` of them; with ``val_set`` and ``select_every``, the prompt (and probe) of the step
    that scores best on val (step 0, the identity, included) is kept. Returns the losses and the choice."""
    cfg = recipe.distill.explore
    bsm = BalancedSoftmax(class_prior).to(rt.device)  # the prior of the train loader's sampler
    prompt_opt = torch.optim.Adam(prompt.parameters(), lr=cfg.lr)
    probe_opt = torch.optim.Adam(probe.parameters(), lr=cfg.probe_lr)
    losses: list[float] = []
    selection: list[dict[str, float]] = []
    best: tuple[float, int, dict, dict] | None = None

    def select(step: int) -> None:
        nonlocal best
        if val_set is None or not cfg.select_every:
            return
        score = prompted_val_score(teacher, prompt, probe, val_set, rt, batch_size=recipe.data.eval_batch_size)
        selection.append({"step": step, "val_balanced_accuracy": score})
        if best is None or score > best[0]:
            best = (score, step, copy.deepcopy(prompt.state_dict()), copy.deepcopy(probe.state_dict()))

    select(0)
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
                t = teacher(x_p)
                loss_probe = bsm(probe(t), y)
                reg = prompt.gain_regulariser(log_gain=log_gain)
                loss = loss_probe + cfg.gain_l2 * reg
            _check_finite({"probe": loss_probe, "gain_l2": reg}, step)
            prompt_opt.zero_grad(set_to_none=True)
            probe_opt.zero_grad(set_to_none=True)
            loss.backward()
            _sync(list(prompt.parameters()), rt)
            prompt_opt.step()
            if cfg.probe_every and (step + 1) % cfg.probe_every == 0:
                probe_opt.zero_grad(set_to_none=True)
                with rt.autocast():
                    refit = bsm(probe(t.detach()), y)
                refit.backward()
                _sync(list(probe.parameters()), rt)
                probe_opt.step()
            losses.append(loss_probe.item())
            step += 1
            if cfg.select_every and (step % cfg.select_every == 0 or step == cfg.steps):
                select(step)
            if after_step is not None:
                after_step(step)
        if step == before:
            raise TrainingError("explore: the train loader yielded no batch (too few train images for one batch)")
        cycle += 1
        log.info("explore step %d/%d: prompted probe loss %.4f", step, cfg.steps, float(np.mean(losses[before:])))
    window = max(1, min(10, len(losses) // 4))
    out: dict[str, Any] = {
        "steps": cfg.steps,
        "loader_passes": cycle,
        "probe_init": cfg.probe_init,
        "probe_loss_start": float(np.mean(losses[:window])) if losses else None,
        "probe_loss_end": float(np.mean(losses[-window:])) if losses else None,
    }
    if best is not None:
        prompt.load_state_dict(best[2])
        probe.load_state_dict(best[3])
        out |= {"selected_step": best[1], "selection": selection}
        log.info("explore: kept the prompt of step %d of %d (val balanced accuracy of the probe %.4f, %.4f at step 0)",
                 best[1], cfg.steps, best[0], selection[0]["val_balanced_accuracy"])
    return out


def _sync(params: list[torch.Tensor], rt: Runtime) -> None:
    if rt.distributed:
        _allreduce_grads(params, rt.world_size)


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
    clean: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """What the frozen prompt does to the teacher's features: paired clean / prompted probes and its effective gain.

    ``train_set`` and ``val_set`` use the eval transform (no augmentation) at the teacher's size;
    ``clean``: their clean features and labels when already computed (train x, train y, val x, val y).
    """
    d = recipe.data
    was_training = prompt.training
    prompt.eval()
    try:
        kw = dict(device=rt.device, batch_size=d.eval_batch_size, num_workers=d.num_workers, autocast=rt.autocast)
        clean_tr, y_tr, clean_va, y_va = clean if clean is not None else (
            *extract_features(teacher, train_set, **kw), *extract_features(teacher, val_set, **kw))
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
    """Fit the probe on the clean teacher features, train the prompt, then (main process) run the diagnostic;
    the result is what ``explore.json`` holds."""
    d, cfg = recipe.data, recipe.distill.explore
    kw = dict(device=rt.device, batch_size=d.eval_batch_size, num_workers=d.num_workers, autocast=rt.autocast)
    clean = (*extract_features(teacher, train_eval_set, **kw), *extract_features(teacher, val_set, **kw))
    if cfg.probe_init == "clean":
        init_probe_from_features(probe, clean[0], clean[1])
    result: dict[str, Any] = {
        "lr": cfg.lr,
        **train_prompt(recipe, teacher, prompt, probe, train_loader, class_prior, rt, start_epoch=start_epoch,
                       val_set=val_set),
    }
    if rt.is_main:
        result |= prompt_diagnostic(recipe, teacher, prompt, train_eval_set, val_set, few_ids, rt, plot_path=plot_path,
                                    clean=clean)
        g = result["gain"]
        log.info("explore: %s; effective gain %.3f..%.3f, mean |log gain| %.4f",
                 result["verdict"], g["min"], g["max"], g["mean_abs_log_gain"])
    return result


def _allreduce_grads(params: list[torch.Tensor], world_size: int) -> None:
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size
