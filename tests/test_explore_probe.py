"""The explore stage in steps, its paired clean / prompted probe diagnostic, and ``fopro-edge probe``."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fopro_edge.cli import _register, cli
from fopro_edge.config import load_recipe
from fopro_edge.data import ImageDataset, build_transform
from fopro_edge.distill import probe as probe_mod
from fopro_edge.distill.explore import effective_gain, prompt_diagnostic, prompt_effect, train_prompt
from fopro_edge.distill.losses import sampler_prior
from fopro_edge.distill.probe import FeatureSplit, compare_features, t_interval
from fopro_edge.distill.report import explore_summary
from fopro_edge.distill.rundir import RunDir, prepare_run_dir
from fopro_edge.distill.runtime import setup_runtime
from fopro_edge.distill.trainer import Trainer, distill
from fopro_edge.errors import ConfigError
from fopro_edge.prompt import FourierPromptGenerator

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke_synthetic.yaml"

_register()


def _trainer(*overrides: str) -> Trainer:
    recipe = load_recipe(SMOKE, ["distill.method=ekd+fpg", *overrides])
    with tempfile.TemporaryDirectory() as tmp:
        return Trainer(recipe, RunDir(Path(tmp)), setup_runtime(recipe.runtime), progress=False)


def _train(tr: Trainer) -> tuple[dict, list[int]]:
    seen: list[int] = []
    out = train_prompt(tr.recipe, tr.teacher, tr.prompt, tr.probe, tr.loader, sampler_prior(tr.stats.counts, "instance"),
                       tr.rt, start_epoch=tr._start_epoch, after_step=seen.append)
    return out, seen


# --------------------------------------------------------------------------- explore in steps


def test_explore_runs_its_configured_number_of_steps_across_loader_passes():
    tr = _trainer("distill.explore.steps=7")
    assert len(tr.loader) == 3  # 60 train images, batches of 16: 7 steps need three passes
    before = tr.prompt.prompt.detach().clone()
    out, seen = _train(tr)
    assert seen == list(range(1, 8))
    assert out["steps"] == 7 and out["loader_passes"] == 3
    assert not torch.equal(before, tr.prompt.prompt)  # the steps moved the prompt


def test_zero_explore_steps_leave_the_prompt_untouched():
    tr = _trainer("distill.explore.steps=0")
    out, seen = _train(tr)
    assert seen == [] and out["steps"] == 0
    assert torch.count_nonzero(tr.prompt.prompt) == 0


def test_the_old_explore_epochs_key_says_what_replaced_it():
    with pytest.raises(ConfigError, match=r"distill\.explore\.epochs: replaced by distill\.explore\.steps"):
        load_recipe(SMOKE, ["distill.explore.epochs=2"])


def test_a_recipe_saved_by_an_older_run_still_loads(tmp_path):
    from fopro_edge.config import recipe_from_dict

    old = load_recipe(SMOKE).to_dict()
    old["distill"]["explore"] = {"epochs": 2, "lr": 0.001}  # as runs before distill.explore.steps saved it
    with pytest.raises(ConfigError, match="replaced by"):
        recipe_from_dict(old, source="old.pt (embedded recipe)", check_paths=False)
    recipe = recipe_from_dict(old, source="old.pt (embedded recipe)", check_paths=False, saved=True)
    assert recipe.distill.explore.lr == 0.001 and "epochs" in old["distill"]["explore"]  # the record is not changed


# --------------------------------------------------------------------------- the diagnostic


def _separable(n: int, classes: int, rng: np.random.Generator, noise: float) -> tuple[np.ndarray, np.ndarray]:
    y = np.repeat(np.arange(classes), n // classes)
    centres = rng.normal(size=(classes, 8)) * 2
    return centres[y] + noise * rng.normal(size=(len(y), 8)), y


def test_both_probes_of_a_seed_see_the_same_train_resample(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = _separable(60, 3, rng, 1.0)
    x[:, 0] = np.arange(len(x))  # row identity, to read back which rows a probe was fitted on
    calls = []
    real = probe_mod.fit_probe

    def spy(xs, ys):
        calls.append((xs[:, 0].copy(), ys.copy()))
        return real(xs, ys)

    monkeypatch.setattr(probe_mod, "fit_probe", spy)
    other = x.copy()
    other[:, 1:] = rng.normal(size=(len(x), 7))
    compare_features(FeatureSplit(x, x[:12]), FeatureSplit(other, other[:12]), y, y[:12], [2], seeds=3)
    assert len(calls) == 6
    for (rows_a, y_a), (rows_b, y_b) in zip(calls[0::2], calls[1::2]):
        np.testing.assert_array_equal(rows_a, rows_b)
        np.testing.assert_array_equal(y_a, y_b)
        np.testing.assert_array_equal(np.bincount(y_a), np.bincount(y))  # stratified: every class keeps its count
    assert not np.array_equal(calls[0][0], calls[2][0])  # another seed, another resample


def test_identical_features_differ_by_exactly_zero():
    x, y = _separable(90, 3, np.random.default_rng(1), 3.0)
    fs = FeatureSplit(x[::2], x[1::2])
    out = compare_features(fs, fs, y[::2], y[1::2], [2], seeds=4, names=("prompted", "clean"))
    for key in ("balanced_accuracy", "few_recall"):
        d = out["difference"][key]
        assert d["per_seed"] == [0.0] * 4
        assert d["t_interval"] == [0.0, 0.0] and d["bootstrap_interval"] == [0.0, 0.0]
    assert prompt_effect(out) == "none"


def test_informative_against_noise_features_is_a_clear_difference_with_its_sign():
    rng = np.random.default_rng(2)
    x, y = _separable(120, 3, rng, 0.5)
    noise = rng.normal(size=x.shape)
    good, bad = FeatureSplit(x[::2], x[1::2]), FeatureSplit(noise[::2], noise[1::2])
    out = compare_features(good, bad, y[::2], y[1::2], [2], seeds=5, names=("prompted", "clean"))
    d = out["difference"]["balanced_accuracy"]
    assert out["prompted"]["balanced_accuracy"] > 0.9 and d["mean"] > 0.3
    assert 0 < d["t_interval"][0] <= d["mean"] <= d["t_interval"][1]
    assert 0 < d["bootstrap_interval"][0] <= d["bootstrap_interval"][1]
    assert d["t_interval"] == pytest.approx(t_interval(d["per_seed"]))
    assert prompt_effect(out) == "more" and prompt_effect(out, "few_recall") == "more"
    flipped = compare_features(bad, good, y[::2], y[1::2], [2], seeds=5, names=("prompted", "clean"))
    assert prompt_effect(flipped) == "less"


def test_an_identity_prompt_changes_nothing_and_a_strong_one_changes_the_features():
    tr = _trainer()
    eval_tf = build_transform(tr.teacher_size, "none", training=False)  # the teacher's views, at its size
    train_set, val_set = ImageDataset(tr.splits.train, eval_tf), ImageDataset(tr.splits.val, eval_tf)
    few = tr.stats.group_ids("few")
    fresh = prompt_diagnostic(tr.recipe, tr.teacher, tr.prompt, train_set, val_set, few, tr.rt)
    assert fresh["probe"]["difference"]["balanced_accuracy"]["per_seed"] == [0.0] * 5
    assert fresh["gain"]["mean_abs_log_gain"] == 0.0 and fresh["gain"]["min"] == fresh["gain"]["max"] == 1.0
    assert fresh["effect"] == {"balanced_accuracy": "none", "few_recall": "none"}
    with torch.no_grad():  # the strongest high-pass the gain bounds allow: the teacher sees other images
        tr.prompt.prompt.fill_(-5.0)
        tr.prompt.prompt[:, :4, :4] = 5.0
    strong = prompt_diagnostic(tr.recipe, tr.teacher, tr.prompt, train_set, val_set, few, tr.rt)
    assert strong["probe"]["difference"]["balanced_accuracy"]["per_seed"] != [0.0] * 5
    assert strong["gain"]["mean_abs_log_gain"] > 0.5


def test_effective_gain_of_a_constant_prompt_is_its_bound():
    tr = _trainer()
    fpg = FourierPromptGenerator(32, alpha=0.5, conditional=False)
    with torch.no_grad():
        fpg.prompt.fill_(20.0)  # tanh saturates: every in-band bin at exp(alpha)
    mean_gain, g = effective_gain(fpg, tr.val_set, tr.rt)
    assert mean_gain.shape == (3, 32, 17)
    assert g["images"] == len(tr.val_set)
    assert g["max"] == pytest.approx(np.exp(0.5), rel=1e-5) and g["min"] == pytest.approx(1.0)  # DC stays at 1
    assert g["mean_abs_log_gain"] == pytest.approx(0.5, rel=1e-5)


def test_a_run_writes_the_interval_the_gain_and_the_plot(tmp_path):
    recipe = load_recipe(SMOKE, ["distill.method=ekd+fpg", "distill.epochs=1", "distill.explore.steps=5",
                                 "distill.explore.select_every=2"])
    result = distill(recipe, prepare_run_dir(tmp_path / "run", recipe.name, resume=False), progress=False)
    ex = json.loads((result.run_dir / "explore.json").read_text())
    assert ex["steps"] == 5 and ex["probe_init"] == "clean"
    # the prompt kept is the best-scoring step on val, the identity (step 0) among the candidates
    scores = {s["step"]: s["val_balanced_accuracy"] for s in ex["selection"]}
    assert list(scores) == [0, 2, 4, 5] and scores[ex["selected_step"]] == max(scores.values())
    assert scores[0] > 0.25  # the probe starts fitted to the clean features (chance is 0.25)
    p = ex["probe"]
    assert p["seeds"] == 5 and p["val_images"] == 16 and p["converged"]
    for side in ("clean", "prompted"):
        assert 0.0 <= p[side]["balanced_accuracy"] <= 1.0 and len(p[side]["balanced_accuracy_per_seed"]) == 5
    d = p["difference"]["balanced_accuracy"]
    assert d["t_interval"][0] <= d["mean"] <= d["t_interval"][1]
    assert d["bootstrap_interval"][0] <= d["bootstrap_interval"][1]
    assert d["mean"] == pytest.approx(p["prompted"]["balanced_accuracy"] - p["clean"]["balanced_accuracy"])
    g = ex["gain"]
    assert {"min", "max", "mean", "mean_abs_log_gain", "plot"} <= set(g) and g["min"] <= g["mean"] <= g["max"]
    assert set(ex["effect"]) == {"balanced_accuracy", "few_recall"} and set(ex["effect"].values()) <= {"more", "less", "none"}
    assert "95 %" in ex["verdict"] and "few-group recall" in ex["verdict"]
    assert (result.run_dir / "explore.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((result.run_dir / "metrics" / "metrics.json").read_text())
    assert metrics["explore"] == ex
    assert "over probe seeds" in (result.run_dir / "metrics" / "metrics.md").read_text()


def test_the_report_states_the_difference_with_its_intervals():
    ex = {"steps": 200, "lr": 0.003, "conclusion": "no measurable effect of the prompt on the teacher probe's balanced accuracy",
          "gain": {"min": 0.8, "max": 1.3, "mean": 1.0, "mean_abs_log_gain": 0.02, "plot": "explore.png"},
          "probe": {"seeds": 5, "val_images": 120,
                    "clean": {"balanced_accuracy": 0.8, "few_recall": 0.6}, "prompted": {"balanced_accuracy": 0.79, "few_recall": 0.62},
                    "difference": {"balanced_accuracy": {"mean": -0.01, "t_interval": [-0.03, 0.01], "bootstrap_interval": [-0.05, 0.03]},
                                   "few_recall": {"mean": 0.02, "t_interval": [-0.1, 0.14], "bootstrap_interval": [-0.12, 0.16]}}}}
    text = explore_summary(ex)
    assert "-1.0 points, 95 % interval -3.0..+1.0 over probe seeds and -5.0..+3.0 over val images" in text
    assert "difference +2.0 points, -10.0..+14.0 over probe seeds and -12.0..+16.0 over val images" in text
    assert "no measurable effect" in text and "0.800–1.300" in text
    old = explore_summary({"epochs": 2, "probe_balanced_accuracy_with_prompt": 0.7, "probe_balanced_accuracy_without_prompt": 0.8})
    assert "no interval" in old


# --------------------------------------------------------------------------- fopro-edge probe


def test_probe_command_compares_the_teacher_with_a_quick_student(tmp_path):
    out = tmp_path / "check"
    res = CliRunner().invoke(cli, ["probe", str(SMOKE), "--student-epochs", "1", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    report = json.loads((out / "probe.json").read_text())
    assert printed == report
    for side in ("teacher_probe", "student"):
        assert 0.0 <= report[side]["balanced_accuracy"] <= 1.0 and report[side]["few_recall"] is not None
    assert report["student"]["method"] == "bsm" and report["student"]["epochs"] == 1
    assert report["compared_on"] == "few_recall" and report["outcome"] in ("teacher_behind", "teacher_ahead", "unclear")
    assert report["verdict"].startswith(f"teacher probe few-group recall {report['teacher_probe']['few_recall']:.2f} "
                                        f"vs quick bsm student {report['student']['few_recall']:.2f}")
    d = report["difference"]["balanced_accuracy"]
    assert d["mean"] == pytest.approx(report["teacher_probe"]["balanced_accuracy"] - report["student"]["balanced_accuracy"])
    # the student went through the distill code path, and is scored as its run scored it on val
    student_run = Path(report["student"]["run_dir"])
    history = [json.loads(line) for line in (student_run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 1
    assert report["student"]["balanced_accuracy"] == pytest.approx(history[-1]["val"]["balanced_accuracy"])
    assert "Verdict" in (out / "probe.md").read_text()


def test_probe_command_prints_a_verdict(tmp_path):
    res = CliRunner().invoke(cli, ["probe", str(SMOKE), "--student-epochs", "1", "--out", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "verdict:" in res.output and "teacher probe few-group recall" in res.output


@pytest.mark.parametrize("value", ["0", "-1", "three"])
def test_a_bad_student_epochs_is_one_line_exit_2(tmp_path, value):
    res = CliRunner().invoke(cli, ["probe", str(SMOKE), "--student-epochs", value, "--out", str(tmp_path / "c")])
    assert res.exit_code == 2
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--student-epochs" in lines[0]
    assert not (tmp_path / "c").exists()


def test_probe_command_refuses_an_out_that_already_holds_a_check(tmp_path):
    (tmp_path / "c" / "student-bsm" / "checkpoints").mkdir(parents=True)
    (tmp_path / "c" / "student-bsm" / "checkpoints" / "last.pt").write_bytes(b"x")
    res = CliRunner().invoke(cli, ["probe", str(SMOKE), "--student-epochs", "1", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2
    assert res.output.strip() == f"error: --out: {tmp_path / 'c'} already holds a teacher check (choose another --out)"


# --------------------------------------------------------------------------- what a fopro run must not touch


def test_a_fopro_run_leaves_the_teacher_untouched_and_takes_the_prior_from_train(tmp_path):
    recipe = load_recipe(SMOKE, ["distill.method=fopro", "distill.epochs=1", "distill.akd.every=1"])
    tr = Trainer(recipe, RunDir(tmp_path / "run"), setup_runtime(recipe.runtime), progress=False)
    before = {k: v.detach().clone() for k, v in tr.teacher.state_dict().items()}  # weights and BatchNorm buffers
    assert any("running_mean" in k for k in before)
    tr.run(resume=False)
    after = tr.teacher.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"the frozen teacher changed during the run: {changed[:5]}"
    train = np.bincount(tr.splits.train.labels, minlength=len(tr.splits.class_names)).astype(np.float64)
    val = np.bincount(tr.splits.val.labels, minlength=len(tr.splits.class_names)).astype(np.float64)
    expected = torch.log(torch.as_tensor(train / train.sum()) + 1e-12).float()
    assert torch.allclose(tr.objective.bsm.log_prior.cpu(), expected)
    assert not np.allclose(train / train.sum(), val / val.sum())  # the two priors differ, so the check can fail
