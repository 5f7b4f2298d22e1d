"""End-to-end distillation on generated data: outputs, resume, torchrun."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fopro_edge.config import load_recipe
from fopro_edge.distill.checkpoint import load_checkpoint, load_student
from fopro_edge.distill.rundir import prepare_run_dir
from fopro_edge.distill.trainer import distill

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke_synthetic.yaml"


def _run(tmp_path: Path, name: str, *overrides: str, resume: bool = False):
    recipe = load_recipe(SMOKE, overrides)
    return distill(recipe, prepare_run_dir(tmp_path / name, recipe.name, resume=resume), resume=resume, progress=False)


@pytest.mark.parametrize("method", ["ce", "bsm", "ekd", "ekd+fpg", "ekd+randfpg", "fopro"])
def test_every_method_trains_and_reports(tmp_path, method):
    result = _run(tmp_path, "run", f"distill.method={method}")
    rd = result.run_dir
    for name in ("recipe.yaml", "splits.json", "longtail.json", "env.json", "history.jsonl", "checkpoints/best.pt",
                 "checkpoints/last.pt", "metrics/metrics.json", "metrics/metrics.md", "metrics/per_class_recall.png",
                 "metrics/confusion_matrix.png", "student/config.json", "student/model.safetensors"):
        assert (rd / name).is_file(), name
    assert (rd / "metrics" / "fpg_gain.png").is_file() == (method in ("ekd+fpg", "ekd+randfpg", "fopro"))
    assert (rd / "explore.json").is_file() == (method in ("ekd+fpg", "fopro"))
    m = json.loads((rd / "metrics" / "metrics.json").read_text())
    assert m["split"] == "test" and m["method"] == method
    assert {"balanced_accuracy", "macro_f1", "accuracy", "per_class", "group_recall", "rare_recall", "confusion_matrix"} <= set(m)
    assert len(m["per_class"]) == 4
    history = [json.loads(line) for line in (rd / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    student, info = load_student(result.best_checkpoint)
    assert info.class_names == [c["name"] for c in m["per_class"]]
    assert student(torch.rand(2, 3, 32, 32)).shape == (2, 4)
    assert not any("heads" in k for k in load_checkpoint(result.best_checkpoint)["student"])


def test_fopro_learns_the_synthetic_classes(tmp_path):
    result = _run(tmp_path, "run", "distill.epochs=8")
    assert result.test_metrics["balanced_accuracy"] > 0.5  # chance is 0.25


def test_explore_logs_probe_accuracy_with_and_without_prompt(tmp_path):
    result = _run(tmp_path, "run", "distill.method=ekd+fpg", "distill.epochs=1")
    explore = json.loads((result.run_dir / "explore.json").read_text())
    for key in ("prompted", "clean"):
        assert 0.0 <= explore["probe"][key]["balanced_accuracy"] <= 1.0
    assert explore["gain"]["min"] >= torch.exp(torch.tensor(-1.0)).item() - 1e-6


def test_akd_steps_are_recorded_one_by_one_from_their_start_epoch(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="fopro_edge"):
        result = _run(tmp_path, "run", "distill.akd.start_epoch=1", "distill.akd.every=2", "data.sampler=balanced")
    assert "Balanced Softmax prior: uniform (data.sampler: balanced)" in caplog.text
    first, second = [json.loads(line) for line in (result.run_dir / "history.jsonl").read_text().splitlines()]
    assert "akd_steps" not in first and "akd_adv" not in first["train"]
    steps = second["akd_steps"]
    assert [s["step"] for s in steps] == [4]  # 3 steps per epoch (0-2, 3-5), AKD on even steps from epoch 2
    assert {"adv", "probe", "gain_l2"} <= set(steps[0])
    # the epoch mean of an AKD term is over AKD steps, not over every step of the epoch
    assert second["train"]["akd_adv"] == pytest.approx(sum(s["adv"] for s in steps) / len(steps))


def test_logit_adjustment_auto_is_chosen_on_val_and_recorded(tmp_path):
    from fopro_edge.distill.logit_adjust import TAU_GRID

    result = _run(tmp_path, "run", "distill.method=bsm", "distill.epochs=1", "eval.logit_adjust=auto")
    m = json.loads((result.run_dir / "metrics" / "metrics.json").read_text())
    la = m["logit_adjust"]
    assert la["mode"] == "auto" and la["tau"] in TAU_GRID and la["applied_by_exported_artifacts"] is (la["tau"] != 0)
    assert set(la["val_balanced_accuracy"]) == {f"{t:g}" for t in TAU_GRID}
    assert la["val_balanced_accuracy"][f"{la['tau']:g}"] == max(la["val_balanced_accuracy"].values())
    counts = json.loads((result.run_dir / "longtail.json").read_text())["counts"]
    assert la["class_prior"] == pytest.approx([c / sum(counts) for c in counts])  # the train split's prior
    _, info = load_student(result.best_checkpoint)
    assert info.logit_adjust == {"tau": la["tau"], "class_prior": la["class_prior"]}
    assert (la["tau"] > 0) == ("test_without" in la)

    fixed = _run(tmp_path, "fixed", "distill.method=bsm", "distill.epochs=1", "eval.logit_adjust=1.5")
    la = json.loads((fixed.run_dir / "metrics" / "metrics.json").read_text())["logit_adjust"]
    assert la["mode"] == "fixed" and la["tau"] == 1.5 and "balanced_accuracy" in la["test_without"]
    assert "τ = 1.5 (set in the recipe)" in (fixed.run_dir / "metrics" / "metrics.md").read_text()
    assert load_student(fixed.best_checkpoint)[1].logit_adjust["tau"] == 1.5


def test_an_existing_run_is_not_overwritten(tmp_path):
    from fopro_edge.errors import ConfigError

    _run(tmp_path, "run", "distill.method=bsm", "distill.epochs=1")
    with pytest.raises(ConfigError, match="already holds a run .*--resume"):
        prepare_run_dir(tmp_path / "run", "smoke", resume=False)


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    return state["net"] | {f"prompt.{k}": v for k, v in state.get("prompt", {}).items()}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fopro_edge", "distill", str(SMOKE), "--no-progress", *args]


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path):
    common = ["--set", "distill.epochs=3", "--set", "runtime.log_interval=1", "--set", "data.synthetic.max_per_class=64"]
    subprocess.run(_cli("--out", str(tmp_path / "straight"), *common), check=True, capture_output=True)

    interrupted = tmp_path / "interrupted"
    proc = subprocess.Popen(_cli("--out", str(interrupted), *common), stderr=subprocess.PIPE, text=True)
    killed = False
    for line in proc.stderr:
        if "epoch 2 step 2/" in line:  # inside the second epoch, after the first checkpoint
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
    proc.wait()
    assert killed and proc.returncode == -signal.SIGKILL
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt")["epoch"] == 1

    subprocess.run(_cli("--out", str(interrupted), "--resume", *common), check=True, capture_output=True)
    a, b = _final_weights(tmp_path / "straight"), _final_weights(interrupted)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert load_checkpoint(interrupted / "checkpoints" / "last.pt")["epoch"] == 3


@pytest.mark.ddp
@pytest.mark.parametrize("method", ["fopro", "ekd"])
def test_torchrun_two_processes_on_cpu(tmp_path, method):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           "-m", "fopro_edge", "distill", str(SMOKE), "--out", str(out), "--no-progress", "--set", f"distill.method={method}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FOPRO_EDGE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "steps/epoch" in proc.stderr
    # 60 training images, batch 16, split over 2 ranks -> 1 step per epoch on each rank
    assert "1 steps/epoch" in proc.stderr
    assert proc.stdout.count("run directory:") == 1  # only rank 0 reports
    m = json.loads((out / "metrics" / "metrics.json").read_text())
    assert m["method"] == method
    assert len((out / "history.jsonl").read_text().splitlines()) == 2
    # each rank filled its shard of one cache entry (fopro: views only, its teacher runs live)
    fixed = m["views"]["fixed_views"]
    assert fixed["built"] == (["views", "features"] if method == "ekd" else ["views"])
    for entry in map(Path, fixed["dirs"]):
        meta = json.loads((entry / "meta.json").read_text())
        assert meta["shape"][:2] == [60, 8] and not list(entry.parent.glob(".building-*"))


def test_resume_refuses_another_recipe_but_allows_more_epochs(tmp_path):
    from fopro_edge.errors import ConfigError

    _run(tmp_path, "run", "distill.method=bsm", "distill.epochs=1")
    with pytest.raises(ConfigError, match=r"--resume: the recipe differs .* at distill.method"):
        _run(tmp_path, "run", "distill.method=ce", "distill.epochs=1", resume=True)
    result = _run(tmp_path, "run", "distill.method=bsm", "distill.epochs=2", resume=True)
    history = (result.run_dir / "history.jsonl").read_text().splitlines()
    assert [json.loads(h)["epoch"] for h in history] == [1, 2]


def test_resume_reads_keys_missing_from_an_older_recipe_as_their_defaults(tmp_path):
    from fopro_edge.distill.trainer import _check_same_recipe
    from fopro_edge.errors import ConfigError

    current = load_recipe(SMOKE).to_dict()
    older = {k: v for k, v in current.items() if k != "eval"}
    older["distill"] = {k: v for k, v in current["distill"].items() if k != "align_balance"}
    _check_same_recipe(older, current, tmp_path / "last.pt")
    with pytest.raises(ConfigError, match="differs .* at eval.logit_adjust"):
        _check_same_recipe(older, load_recipe(SMOKE, ["eval.logit_adjust=auto"]).to_dict(), tmp_path / "last.pt")


def test_a_run_leaves_the_teacher_unchanged_and_takes_its_prior_from_the_train_split(tmp_path):
    import numpy as np

    from fopro_edge.distill.runtime import setup_runtime, teardown_runtime
    from fopro_edge.distill.trainer import Trainer

    recipe = load_recipe(SMOKE, ["distill.epochs=1", "distill.akd.every=1"])  # explore, EKD and AKD steps
    rt = setup_runtime(recipe.runtime, None)
    try:
        trainer = Trainer(recipe, prepare_run_dir(tmp_path / "run", recipe.name, resume=False), rt, progress=False)
        before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
        trainer.run(resume=False)
    finally:
        teardown_runtime(rt)
    after = trainer.teacher.state_dict()
    assert before.keys() == after.keys() and any("running_mean" in k for k in before)
    assert [k for k in before if not torch.equal(before[k], after[k])] == []
    train = np.bincount(trainer.splits.train.labels, minlength=4)
    val = np.bincount(trainer.splits.val.labels, minlength=4)
    prior = torch.exp(trainer.objective.bsm.log_prior).numpy()
    assert prior == pytest.approx(train / train.sum(), rel=1e-5)
    assert prior != pytest.approx(val / val.sum(), rel=1e-2)
