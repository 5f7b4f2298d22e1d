"""The distillation run: data, models, explore stage, training loop, checkpoints, final evaluation."""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from fopro_edge.config import Recipe, save_recipe
from fopro_edge.data import (
    CheckedDataLoader,
    ImageDataset,
    build_sampler,
    build_splits,
    build_transform,
    compute_longtail_stats,
    save_manifest,
)
from fopro_edge.data.views import FixedViews, PairedViews, ViewSpec
from fopro_edge.distill.checkpoint import load_checkpoint, save_checkpoint
from fopro_edge.distill.explore import explore_prompt
from fopro_edge.distill.logit_adjust import adjusted_predictions, choose_tau, train_prior
from fopro_edge.distill.losses import SAMPLER_PRIORS, sampler_prior
from fopro_edge.distill.method import DistillNet, Objective
from fopro_edge.distill.metrics import classification_metrics
from fopro_edge.distill.predictions import save_predictions
from fopro_edge.distill.report import write_metrics_report
from fopro_edge.distill.runtime import Runtime, seed_everything, setup_runtime, teardown_runtime
from fopro_edge.distill.rundir import RunDir
from fopro_edge.errors import ConfigError, TrainingError
from fopro_edge.io import atomic_write_json, atomic_write_text
from fopro_edge.models import build_student, build_teacher
from fopro_edge.models.hf_export import save_student_for_timm
from fopro_edge.models.student import EKDHeads, feature_dim
from fopro_edge.models.teacher import with_teacher_size

log = logging.getLogger(__name__)


@dataclass
class DistillResult:
    run_dir: Path
    best_checkpoint: Path
    best_epoch: int
    test_metrics: dict[str, Any]
    reports: dict[str, Path] = field(default_factory=dict)


def distill(
    recipe: Recipe,
    run_dir: RunDir,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool | None = None,
) -> DistillResult:
    """Train the student of ``recipe`` into ``run_dir`` and evaluate its best checkpoint on the test split."""
    rt = setup_runtime(recipe.runtime, device)
    try:
        return Trainer(recipe, run_dir, rt, progress=_want_progress(progress, rt)).run(resume=resume)
    finally:
        teardown_runtime(rt)


def _want_progress(progress: bool | None, rt: Runtime) -> bool:
    return rt.is_main and (sys.stderr.isatty() if progress is None else progress)


class Trainer:
    """Holds the models, optimisers and loaders of one run; :func:`distill` drives it."""

    def __init__(self, recipe: Recipe, run_dir: RunDir, rt: Runtime, *, progress: bool) -> None:
        recipe = with_teacher_size(recipe)
        self.recipe, self.run_dir, self.rt, self.progress = recipe, run_dir, rt, progress
        d = recipe.data
        seed_everything(recipe.seed)
        self.splits = build_splits(d, recipe.seed)
        self.class_names = list(self.splits.class_names)
        self.stats = compute_longtail_stats(self.splits.train.labels, self.class_names, d.groups)
        self.train_prior = train_prior(self.stats.counts)  # of test-time logit adjustment
        self.teacher_size = int(recipe.teacher.image_size)
        self.fixed_views = cache_enabled(recipe, rt)
        self.cache_info: dict[str, Any] | None = None
        self.train_set = PairedViews(self.splits.train, ViewSpec(
            d.image_size, self.teacher_size if recipe.uses_teacher else None, d.augment, d.flips))
        eval_tf = build_transform(d.image_size, "none", training=False)
        self.val_set = ImageDataset(self.splits.val, eval_tf)
        self.test_set = ImageDataset(self.splits.test, eval_tf)
        self.akd_steps: list[dict[str, float]] = []  # this epoch's AKD steps
        self._build_models()

    # ------------------------------------------------------------------ set-up
    def _build_models(self) -> None:
        r, rt = self.recipe, self.rt
        num_classes = len(self.class_names)
        self.student = build_student(r.student, num_classes).to(rt.device)
        self.teacher = self.prompt = self.probe = None
        heads = None
        if r.uses_teacher:
            self.teacher = build_teacher(r.teacher).to(rt.device)
            t_dim = feature_dim(self.teacher, self.teacher_size, features=self.teacher)
            s_dim = feature_dim(self.student, r.data.image_size)
            heads = EKDHeads(s_dim, r.student.projector_hidden or s_dim, t_dim, num_classes).to(rt.device)
            if r.uses_prompt:
                self.prompt = _build_prompt(r, self.teacher_size, self.splits.train).to(rt.device)
                if r.distill.method != "ekd+randfpg":
                    self.probe = nn.Linear(t_dim, num_classes).to(rt.device)
        self.net = DistillNet(self.student, heads)
        if rt.channels_last:
            self.net.to(memory_format=torch.channels_last)
            if self.teacher is not None:
                self.teacher.to(memory_format=torch.channels_last)
        self.ddp_net = DDP(self.net, device_ids=_ids(rt)) if rt.distributed else self.net
        self.ddp_prompt = self.prompt
        self.ddp_probe = self.probe
        if rt.distributed and self.prompt is not None and r.distill.method == "fopro":
            self.ddp_prompt = DDP(self.prompt, device_ids=_ids(rt))
            self.ddp_probe = DDP(self.probe, device_ids=_ids(rt))
        self.objective = Objective(r, self.stats.counts, self.teacher, self.ddp_prompt, self.ddp_probe).to(rt.device)
        self.loader = self._train_loader(self.train_set)
        self.steps_per_epoch = len(self.loader)
        self.optimizer = _optimizer(r, self.net.parameters())
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(r, self.steps_per_epoch))
        self.prompt_optimizer = None
        if r.distill.method == "fopro":
            params = list(self.prompt.parameters()) + list(self.probe.parameters())
            self.prompt_optimizer = torch.optim.Adam(params, lr=r.distill.akd.lr)
        self.scaler = torch.amp.GradScaler(enabled=rt.amp_dtype == torch.float16)

    def _train_loader(self, dataset) -> DataLoader:
        r, rt = self.recipe, self.rt
        d = r.data
        self.generator = torch.Generator()
        labels = self.splits.train.labels
        if d.sampler == "instance":
            sampler = (
                DistributedSampler(dataset, rt.world_size, rt.rank, shuffle=True, seed=r.seed, drop_last=True)
                if rt.distributed
                else RandomSampler(dataset, generator=self.generator)
            )
        else:
            sampler = build_sampler(labels, d.sampler, num_samples=len(labels) // rt.world_size)
            sampler.generator = self.generator  # re-seeded every epoch, per rank
        batch = min(d.batch_size, max(2, len(dataset) // rt.world_size))
        return CheckedDataLoader(
            dataset,
            batch_size=batch,
            sampler=sampler,
            num_workers=d.num_workers,
            drop_last=True,  # BatchNorm in the projector needs batches larger than one
            pin_memory=rt.device.type == "cuda",
            generator=self.generator,
            persistent_workers=False,
        )

    def _eval_loader(self, dataset) -> DataLoader:
        d = self.recipe.data
        return CheckedDataLoader(dataset, batch_size=d.eval_batch_size, shuffle=False, num_workers=d.num_workers)

    def _start_epoch(self, epoch: int) -> None:
        """Every random stream of an epoch derives from (seed, epoch): a resumed run replays it exactly."""
        epoch_seed = self.recipe.seed * 100_003 + epoch * 1_009 + self.rt.rank
        seed_everything(epoch_seed)
        self.generator.manual_seed(epoch_seed)
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)
        if isinstance(self.train_set, FixedViews) and epoch >= 0:
            self.train_set.choose(self.recipe.seed, epoch)

    def _use_fixed_views(self) -> None:
        """Train on ``K`` fixed views per image, with the teacher's features of them from the cache (computed once)."""
        from fopro_edge.distill import teacher_cache

        r, d, tc = self.recipe, self.recipe.data, self.recipe.distill.teacher_cache
        spec = ViewSpec(d.image_size, self.teacher_size, d.augment, d.flips)
        images = self.splits.train
        cached = self.teacher if r.uses_teacher and not r.live_teacher else None
        store = len(images) * tc.views * 3 * d.image_size**2 <= tc.max_view_mib * 2**20
        plan = teacher_cache.CachePlan(
            Path(tc.dir) if tc.dir else teacher_cache.default_dir(), images, spec, tc.views, tc.view_seed, store,
            cached, self.prompt if cached is not None else None, batch_size=d.eval_batch_size,
        )
        entry = teacher_cache.ensure(plan, self.rt)
        self.train_set = FixedViews(images, spec, tc.views, tc.view_seed, stored=entry.views, features=entry.features,
                                    teacher_views=r.uses_teacher and r.live_teacher)
        self.loader = self._train_loader(self.train_set)
        self.cache_info = {
            "views": tc.views, "view_seed": tc.view_seed, "student_views": "stored" if store else "rendered from their seeds",
            "teacher": "cached features" if cached is not None else "live" if r.uses_teacher else "none",
            "built": entry.built, "seconds": round(entry.seconds, 1),
            "dirs": [str(p) for p in (entry.view_dir, entry.feature_dir) if p is not None],
        }

    # ------------------------------------------------------------------ run
    def run(self, *, resume: bool) -> DistillResult:
        r, rt = self.recipe, self.rt
        state = self._resume_state() if resume else None
        if rt.is_main and state is None:
            self._write_run_metadata()
        start_epoch, self.best_score, self.best_epoch = 0, -math.inf, -1
        self.explore_result: dict[str, Any] | None = None
        if state is not None:
            start_epoch = self._load_state(state)
        if self.probe is not None and self.explore_result is None:
            teacher_tf = build_transform(self.teacher_size, "none", training=False)
            self.explore_result = explore_prompt(
                r, self.teacher, self.prompt, self.probe, self.loader, ImageDataset(self.splits.train, teacher_tf),
                ImageDataset(self.splits.val, teacher_tf), sampler_prior(self.stats.counts, r.data.sampler),
                self.stats.group_ids("few"), rt, start_epoch=self._start_epoch, plot_path=self.run_dir.explore_plot,
            )
            if rt.is_main:
                atomic_write_json(self.run_dir.explore_json, self.explore_result)
        if self.fixed_views:
            self._use_fixed_views()
        log.info(
            "training %s -> %s (%d px) with %s on %s: %d train images, %d classes, %d steps/epoch, %s",
            f"{r.teacher.model} ({self.teacher_size} px)" if r.uses_teacher else "-", r.student.model, r.data.image_size,
            r.distill.method, rt.device, len(self.train_set), len(self.class_names), self.steps_per_epoch,
            f"{r.distill.teacher_cache.views} fixed views per image" if self.fixed_views else "fresh augmentation every epoch",
        )
        if r.distill.method != "ce" and rt.is_main:
            log.info("Balanced Softmax prior: %s (data.sampler: %s)", SAMPLER_PRIORS[r.data.sampler], r.data.sampler)
        if r.uses_teacher and r.distill.align_balance == "drw" and rt.is_main:
            log.info("alignment loss: effective-number class weights (DRW) from epoch %d of %d",
                     self.objective.drw_start + 1, r.distill.epochs)
        for epoch in range(start_epoch, r.distill.epochs):
            train_stats = self._train_epoch(epoch)
            val = self._evaluate(self.val_set) if rt.is_main else {}
            if rt.is_main:
                self._end_epoch(epoch, train_stats, val)
            rt.barrier()
        result = self._final_evaluation() if rt.is_main else None
        rt.barrier()
        return result  # type: ignore[return-value]

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self._start_epoch(epoch)
        self.objective.set_epoch(epoch)
        self.net.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        self.akd_steps = []
        n = 0
        started = time.perf_counter()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.recipe.distill.epochs}", leave=False, file=sys.stderr)
        for i, batch in enumerate(self.loader):
            step = epoch * self.steps_per_epoch + i
            terms = self.train_step(batch, step)
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            if "akd_adv" in terms:
                self._log_akd_step(step, terms)
            n += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{terms['loss']:.3f}")
            elif self.rt.is_main and (i + 1) % self.recipe.runtime.log_interval == 0:
                log.info("epoch %d step %d/%d loss %.4f lr %.2e", epoch + 1, i + 1, self.steps_per_epoch, terms["loss"], self.scheduler.get_last_lr()[0])
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - started
        out = {k: v / counts[k] for k, v in sums.items()}  # AKD terms: the mean over AKD steps only
        out["images_per_s"] = n * self.loader.batch_size * self.rt.world_size / max(seconds, 1e-9)
        out["epoch_seconds"] = seconds
        return out

    def _log_akd_step(self, step: int, terms: dict[str, float]) -> None:
        """One record per AKD step: its adversarial alignment, probe and gain terms (history.jsonl, ``akd_steps``)."""
        rec = {"step": step, **{k.removeprefix("akd_"): terms[k] for k in ("akd_adv", "akd_probe", "akd_gain_l2")}}
        self.akd_steps.append(rec)
        log.debug("AKD step %d: adversarial alignment %.4f, probe %.4f, gain L2 %.4g", rec["step"], rec["adv"], rec["probe"], rec["gain_l2"])

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """One optimiser step on a batch of views: ``student`` and ``label``, with ``teacher`` (its view) or
        ``teacher_features`` (cached) when the method distils."""
        rt, r = self.rt, self.recipe
        x = batch["student"].to(rt.device, non_blocking=True)
        y = batch["label"].to(rt.device, non_blocking=True)
        x_t = batch.get("teacher")
        t_feat = batch.get("teacher_features")
        if rt.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if x_t is not None:
            x_t = x_t.to(rt.device, non_blocking=True)
        if t_feat is not None:
            t_feat = t_feat.to(rt.device, non_blocking=True).float()
        with rt.autocast():
            out = self.objective(self.ddp_net, x, y, step, teacher_input=x_t, teacher_features=t_feat)
        self._check_finite(out.terms | {"loss": out.loss.detach()}, step)
        if out.prompt_loss is not None:
            self.prompt_optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(out.prompt_loss).backward()
            self.scaler.step(self.prompt_optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        if r.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.net.parameters(), r.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return {"loss": float(out.loss.detach())} | {k: float(v.detach()) for k, v in out.terms.items()}

    def _check_finite(self, terms: dict[str, torch.Tensor], step: int) -> None:
        bad = [k for k, v in terms.items() if not torch.isfinite(v.detach()).all()]
        bad = [k for k in bad if k != "loss"] or bad  # name the loss term, the total only when no term is at fault
        if bad:
            raise TrainingError(
                f"non-finite loss at step {step} (term {', '.join(bad)}); {self._kept()} "
                "(lower optim.lr or set runtime.amp=none, then --resume)"
            )

    def _kept(self) -> str:
        last = self.run_dir.last_checkpoint
        return f"the last good checkpoint is kept in {last}" if last.is_file() else "no checkpoint was written yet"

    def _check_finite_weights(self, epoch: int) -> None:
        bad = [k for k, v in self.net.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise TrainingError(
                f"non-finite weights after epoch {epoch + 1} ({bad[0]}{' and more' if len(bad) > 1 else ''}); {self._kept()} "
                "(lower optim.lr or set optim.grad_clip, then --resume)"
            )

    @torch.no_grad()
    def _logits(self, dataset) -> tuple[np.ndarray, np.ndarray]:
        """Labels and float32 student logits of ``dataset``."""
        self.student.eval()
        ys, zs = [], []
        for x, y, _ in self._eval_loader(dataset):
            x = x.to(self.rt.device)
            if self.rt.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.rt.autocast():
                logits = self.student(x)
            zs.append(logits.float().cpu().numpy())
            ys.append(y.numpy())
        self.student.train()
        return np.concatenate(ys), np.concatenate(zs)

    def _metrics(self, y_true: np.ndarray, logits: np.ndarray, tau: float) -> dict[str, Any]:
        y_pred = adjusted_predictions(logits, self.train_prior, tau)
        return classification_metrics(
            y_true, y_pred, self.class_names,
            train_counts=list(self.stats.counts), groups=self.stats.group_of(), rare_classes=list(self.stats.rare_classes),
            tail_below=self.recipe.data.groups.tail_below,
        )

    def _evaluate(self, dataset) -> dict[str, Any]:
        """Metrics with the recipe's fixed logit adjustment (none while ``auto`` is still to be chosen)."""
        la = self.recipe.eval.logit_adjust
        return self._metrics(*self._logits(dataset), 0.0 if la == "auto" else la)

    def _logit_adjustment(self) -> dict[str, Any]:
        """The test-time logit adjustment of the best student: tau as set, or chosen on val (``auto``)."""
        la = self.recipe.eval.logit_adjust
        out: dict[str, Any] = {"mode": "auto" if la == "auto" else "fixed" if la else "off", "tau": 0.0 if la == "auto" else la,
                               "prior": "train class frequencies", "class_prior": self.train_prior.tolist(),
                               "applied_by_exported_artifacts": bool(la and la != "auto")}
        if la == "auto":
            y_val, z_val = self._logits(self.val_set)
            out["tau"], scores = choose_tau(y_val, z_val, self.train_prior)
            out["applied_by_exported_artifacts"] = bool(out["tau"])
            out["val_balanced_accuracy"] = {f"{t:g}": s for t, s in scores.items()}
            log.info("logit adjustment: tau %g chosen on val (balanced accuracy %.4f, %.4f without)",
                     out["tau"], scores[out["tau"]], scores[0.0])
        return out

    def _end_epoch(self, epoch: int, train_stats: dict[str, float], val: dict[str, Any]) -> None:
        self._check_finite_weights(epoch)  # never checkpoint NaN/Inf weights as "last good"
        score = val["balanced_accuracy"]
        improved = score > self.best_score
        if improved:
            self.best_score, self.best_epoch = score, epoch
            save_checkpoint(self.run_dir.best_checkpoint, self._export_state(epoch, {k: val[k] for k in SELECTION_METRICS}))
        record = {
            "epoch": epoch + 1,
            "lr": self.scheduler.get_last_lr()[0],
            "train": train_stats,
            "val": {k: val[k] for k in ("balanced_accuracy", "macro_f1", "accuracy", "rare_recall", "group_recall")},
            "best": improved,
        }
        if self.akd_steps:
            record["akd_steps"] = self.akd_steps
        with open(self.run_dir.history, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        save_checkpoint(self.run_dir.last_checkpoint, self._full_state(epoch))
        g = val["group_recall"]
        log.info(
            "epoch %d/%d loss %.4f | val bal-acc %.4f macro-F1 %.4f rare recall %s few %s | %.1f img/s%s",
            epoch + 1, self.recipe.distill.epochs, train_stats.get("loss", float("nan")), score, val["macro_f1"],
            _fmt(val["rare_recall"]), _fmt(g.get("few")), train_stats["images_per_s"], " *best*" if improved else "",
        )
        if self.akd_steps:
            adv = [a["adv"] for a in self.akd_steps]
            log.info("epoch %d AKD: %d steps, adversarial alignment %.4f first, %.4f last, %.4f max",
                     epoch + 1, len(adv), adv[0], adv[-1], max(adv))

    # ------------------------------------------------------------------ checkpoints
    def _export_state(self, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """What an exporter needs: the student, its recipe and classes, and the metrics it was chosen on."""
        return {
            "student": self.student.state_dict(),
            "recipe": self.recipe.to_dict(),
            "class_names": self.class_names,
            "rare_classes": list(self.stats.rare_classes),
            "image_size": self.recipe.data.image_size,
            "epoch": epoch + 1,
            "metrics": metrics,
        }

    def _full_state(self, epoch: int) -> dict[str, Any]:
        state = {
            **self._export_state(epoch, {}),
            "net": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "explore": self.explore_result,
        }
        for name in ("prompt", "probe", "prompt_optimizer"):
            obj = getattr(self, name)
            if obj is not None:
                state[name] = obj.state_dict()
        return state

    def _resume_state(self) -> dict[str, Any] | None:
        path = self.run_dir.last_checkpoint
        if not path.is_file():
            log.warning("--resume: no checkpoint in %s yet; starting from the beginning", self.run_dir.path)
            return None
        state = load_checkpoint(path, key="--resume")
        _check_same_recipe(state["recipe"], self.recipe.to_dict(), path)
        if self.rt.is_main and self.run_dir.history.is_file():  # drop epochs the checkpoint does not hold
            lines = self.run_dir.history.read_text(encoding="utf-8").splitlines()
            kept = [ln for ln in lines if ln.strip() and json.loads(ln)["epoch"] <= state["epoch"]]
            atomic_write_text(self.run_dir.history, "".join(ln + "\n" for ln in kept))
        return state

    def _load_state(self, state: dict[str, Any]) -> int:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        for name in ("prompt", "probe", "prompt_optimizer"):
            obj = getattr(self, name)
            if obj is not None and name in state:
                obj.load_state_dict(state[name])
        self.best_score, self.best_epoch = state["best_score"], state["best_epoch"]
        self.explore_result = state.get("explore")
        log.info("resumed from %s after epoch %d", self.run_dir.last_checkpoint, state["epoch"])
        return int(state["epoch"])

    # ------------------------------------------------------------------ outputs
    def _write_run_metadata(self) -> None:
        rd = self.run_dir
        save_recipe(self.recipe, rd.recipe)
        save_manifest(self.splits, rd.splits)
        atomic_write_json(rd.longtail, self.stats.to_dict())
        from fopro_edge.envinfo import collect_env

        atomic_write_json(rd.env, collect_env())

    def _final_evaluation(self) -> DistillResult:
        best = load_checkpoint(self.run_dir.best_checkpoint)
        self.student.load_state_dict(best["student"])
        la = self._logit_adjustment()
        y_test, z_test = self._logits(self.test_set)
        metrics = self._metrics(y_test, z_test, la["tau"])
        if la["tau"]:
            plain = self._metrics(y_test, z_test, 0.0)
            la["test_without"] = {k: plain[k] for k in ("balanced_accuracy", "macro_f1", "rare_recall", "group_recall")}
        metrics["logit_adjust"] = la
        # the checkpoint carries what its evaluation applied, for exporters to pick up
        best.pop("format", None)
        save_checkpoint(self.run_dir.best_checkpoint, best | {"logit_adjust": {"tau": la["tau"], "class_prior": la["class_prior"]}})
        metrics["split"] = "test"
        metrics["best_epoch"] = int(best["epoch"])
        metrics["method"] = self.recipe.distill.method
        metrics["long_tail"] = {"imbalance_ratio": self.stats.imbalance_ratio}
        metrics["skipped_images"] = {"count": len(self.splits.skipped), "first": self.splits.skipped[:20]}
        if self.explore_result is not None:
            metrics["explore"] = self.explore_result
        metrics["views"] = self._views_info()
        gain = self.prompt.mean_gain().cpu().numpy() if self.prompt is not None else None
        save_predictions(  # before metrics.json, which marks the run finished
            self.run_dir.test_predictions, ids=self.splits.test.ids(), labels=y_test, logits=z_test,
            predictions=adjusted_predictions(z_test, self.train_prior, la["tau"]), tau=la["tau"],
        )
        reports = write_metrics_report(
            metrics, self.run_dir.metrics_dir, title=f"{self.recipe.name}: {self.recipe.distill.method} (test split)", gain=gain
        )
        reports["test_predictions"] = self.run_dir.test_predictions
        reports["timm_model"] = save_student_for_timm(self.run_dir.best_checkpoint, self.run_dir.timm_student)
        log.info(
            "test: balanced accuracy %.4f, macro-F1 %.4f, rare recall %s (best epoch %d)",
            metrics["balanced_accuracy"], metrics["macro_f1"], _fmt(metrics["rare_recall"]), metrics["best_epoch"],
        )
        return DistillResult(self.run_dir.path, self.run_dir.best_checkpoint, int(best["epoch"]), metrics, reports)

    def _views_info(self) -> dict[str, Any]:
        """How the student and the teacher saw the training images (metrics.json, the run report)."""
        r = self.recipe
        out: dict[str, Any] = {"student_size": r.data.image_size, "teacher_size": self.teacher_size if r.uses_teacher else None,
                               "augment": r.data.augment, "rendered_at": max(r.data.image_size, self.teacher_size)
                               if r.uses_teacher or self.fixed_views else r.data.image_size}
        if self.prompt is not None:
            out["prompt_size"] = self.teacher_size
        out["fixed_views"] = self.cache_info
        return out


def cache_enabled(recipe: Recipe, rt: Runtime) -> bool:
    """``distill.teacher_cache.mode`` resolved: ``auto`` is on when training on CPU."""
    mode = recipe.distill.teacher_cache.mode
    return mode is True or (mode == "auto" and rt.device.type == "cpu")


def _build_prompt(r: Recipe, size: int, train_images) -> nn.Module:
    """The FPG at the teacher's resolution; for ``ekd+randfpg`` a fixed random one (``prompt.random_seed``)."""
    from fopro_edge.prompt import FourierPromptGenerator

    shared = r.prompt.channels == "shared" or (r.prompt.channels == "auto" and _grey(train_images))
    prompt = FourierPromptGenerator.from_config(r.prompt, size, prompt_channels=1 if shared else None)
    if r.distill.method == "ekd+randfpg":
        seed = r.seed if r.prompt.random_seed is None else r.prompt.random_seed
        prompt.randomise_(r.prompt.random_log_gain, torch.Generator().manual_seed(seed))
        for p in prompt.parameters():
            p.requires_grad_(False)
    return prompt


def _grey(images, sample: int = 64) -> bool:
    """Every one of (up to) ``sample`` images evenly spread over ``images`` has R = G = B."""
    idx = np.linspace(0, len(images) - 1, num=min(sample, len(images))).astype(int)
    for i in idx:
        a = np.asarray(images.load(int(i)))
        if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 1], a[..., 2])):
            return False
    return True


SELECTION_METRICS = ("balanced_accuracy", "macro_f1", "accuracy", "rare_recall")
RESUMABLE_CHANGES = ("distill.epochs", "runtime.")


def _check_same_recipe(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    """A resumed run must train what it started training; only the epoch count and runtime may change.

    Keys the saved recipe lacks (added to the schema since) count as their defaults.
    """
    from fopro_edge.config import recipe_from_dict

    saved = recipe_from_dict(saved, source=f"{path} (embedded recipe)", check_paths=False, saved=True).to_dict()
    diffs = [k for k in _flat_diff(saved, current) if not k.startswith(RESUMABLE_CHANGES)]
    if diffs:
        raise ConfigError(
            f"--resume: the recipe differs from the one {path} was trained with at {', '.join(diffs[:5])} "
            "(resume with the same recipe, or start a new run with another --out)"
        )


def _flat_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _flat_diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _ids(rt: Runtime) -> list[int] | None:
    return [rt.device.index] if rt.device.type == "cuda" else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _optimizer(r: Recipe, params) -> torch.optim.Optimizer:
    o = r.optim
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.momentum > 0)


def _lr_lambda(r: Recipe, steps_per_epoch: int):
    o = r.optim
    total = max(1, r.distill.epochs * steps_per_epoch)
    warmup = int(o.warmup_epochs * steps_per_epoch)
    floor = o.min_lr / o.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if o.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
