"""``fopro-edge ablate``: the seed and image statistics, the resumable ladder, the report, the command."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fopro_edge.ablate import ladder
from fopro_edge.ablate.bootstrap import (
    ClassLayout,
    Pair,
    paired_bootstrap,
    point_metrics,
)
from fopro_edge.ablate.ladder import AblationPlan, Cell, make_plan, run_ladder
from fopro_edge.ablate.report import render_markdown, write_report
from fopro_edge.ablate.results import read_metrics
from fopro_edge.ablate.stats import Interval, paired_t_interval, verdict
from fopro_edge.ablate.summary import AblationReport, Difference, aggregate
from fopro_edge.cli import _register, cli
from fopro_edge.config import load_recipe, save_recipe
from fopro_edge.distill.metrics import classification_metrics
from fopro_edge.distill.predictions import load_predictions, save_predictions

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "smoke_synthetic.yaml"
NAMES = ["a", "b", "c", "d"]
COUNTS = [200, 60, 10, 5]  # train counts: many, medium, few, few
GROUPS = {"a": "many", "b": "medium", "c": "few", "d": "few"}
RARE = ["c", "d"]
PER_CLASS = 50
ENV = {"cpu": {"model": "Test CPU", "usable_cores": 2}, "gpu": None}

_register()


# ------------------------------------------------------------------ statistics
def test_paired_t_interval():
    t = paired_t_interval([0.16, 0.20, 0.24])
    half = 4.302653 * 0.04 / 3 ** 0.5
    assert t.mean == pytest.approx(0.20) and t.sd == pytest.approx(0.04)
    assert (t.interval.low, t.interval.high) == pytest.approx((0.20 - half, 0.20 + half), abs=1e-6)
    one = paired_t_interval([0.3])
    assert one.mean == 0.3 and one.interval is None


def test_point_metrics_reproduce_classification_metrics():
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(4), [30, 12, 6, 0])  # class d absent from the test set
    preds = rng.integers(0, 3, len(labels))  # class d never predicted either
    groups = {"a": "many", "b": "many", "c": "few", "d": "few"}  # no medium class
    m = classification_metrics(labels, preds, NAMES, train_counts=COUNTS, groups=groups, rare_classes=RARE)
    layout = ClassLayout(tuple(groups[n] for n in NAMES), tuple(n in RARE for n in NAMES))
    again = point_metrics(labels, preds, layout)
    assert again["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"], abs=1e-12)
    assert again["macro_f1"] == pytest.approx(m["macro_f1"], abs=1e-12)
    assert again["rare_recall"] == pytest.approx(m["rare_recall"], abs=1e-12)
    for g in ("many", "few"):
        assert again[f"{g}_recall"] == pytest.approx(m["group_recall"][g], abs=1e-12)
    assert again["medium_recall"] is None and m["group_recall"]["medium"] is None
    assert again["tail_recall"] == pytest.approx(m["tail_recall"], abs=1e-12) and m["tail_classes"] == ["c", "d"]


def _labels() -> np.ndarray:
    return np.repeat(np.arange(4), PER_CLASS)


def _baseline_preds(labels: np.ndarray, right: int = 30) -> np.ndarray:
    """The first ``right`` images of each class right, the others predicted as the next class."""
    pred = (labels + 1) % 4
    for k in range(4):
        pred[np.flatnonzero(labels == k)[:right]] = k
    return pred


def _fixed(labels: np.ndarray, base: np.ndarray, fix: int, break_: int = 0) -> np.ndarray:
    """``base`` with ``fix`` wrong images per class made right and ``break_`` right ones made wrong."""
    pred = base.copy()
    for k in range(4):
        idx = np.flatnonzero(labels == k)
        wrong, right = idx[base[idx] != k], idx[base[idx] == k]
        pred[wrong[:fix]] = k
        pred[right[:break_]] = (k + 1) % 4
    return pred


def test_bootstrap_of_a_known_improvement_contains_it_and_excludes_zero():
    labels = _labels()
    base = _baseline_preds(labels)
    layout = ClassLayout(tuple(GROUPS[n] for n in NAMES), tuple(n in RARE for n in NAMES))
    pairs = [Pair(labels, base, _fixed(labels, base, 8 + 2 * s), layout, s) for s in range(3)]
    iv = paired_bootstrap(pairs, resamples=500).images
    assert iv["balanced_accuracy"].contains(0.20) and iv["balanced_accuracy"].low > 0
    assert iv["rare_recall"].contains(0.20) and iv["rare_recall"].low > 0
    noise = [Pair(labels, base, _fixed(labels, base, 5, break_=5), layout, s) for s in range(3)]
    iv = paired_bootstrap(noise, resamples=500).images
    assert iv["balanced_accuracy"].low < 0 < iv["balanced_accuracy"].high
    same = paired_bootstrap([Pair(labels, base, base.copy(), layout, 0)], resamples=200).images
    assert all(v is not None and v.low == v.high == 0.0 for k, v in same.items() if k != "medium_recall")
    assert same["medium_recall"] is not None  # class b is the medium group


def test_bootstrap_is_stratified_by_class():
    """A rare class of one image, right under the method only: every resample holds that image once,
    so the differences are the same in every resample (an unstratified draw would vary them)."""
    labels = np.repeat(np.arange(4), [40, 20, 20, 1])
    base = labels.copy()
    base[-1] = 0
    layout = ClassLayout(tuple(GROUPS[n] for n in NAMES), tuple(n in RARE for n in NAMES))
    iv = paired_bootstrap([Pair(labels, base, labels.copy(), layout, 0)], resamples=300).images
    assert iv["balanced_accuracy"].low == iv["balanced_accuracy"].high == pytest.approx(0.25)
    assert iv["rare_recall"].low == iv["rare_recall"].high == pytest.approx(0.5)


# ------------------------------------------------------------------ synthetic cells
def _write_cell(plan: AblationPlan, method: str, seed: int, preds: np.ndarray, *, predictions: bool = True,
                recipe_overrides: tuple[str, ...] = ()) -> Cell:
    cell = Cell(method, seed, plan.out)
    rd = cell.run_dir
    labels = _labels()
    m = classification_metrics(labels, preds, NAMES, train_counts=COUNTS, groups=GROUPS, rare_classes=RARE)
    m.update(method=method, best_epoch=3 + seed, split="test")
    rd.metrics_dir.mkdir(parents=True)
    if predictions:
        logits = np.eye(4, dtype=np.float32)[preds]
        save_predictions(rd.test_predictions, ids=[f"img{i}" for i in range(len(labels))], labels=labels, logits=logits,
                         predictions=preds, tau=0.0)
    rd.metrics_json.write_text(json.dumps(m))
    save_recipe(load_recipe(SMOKE, [*cell.overrides(plan.overrides), *recipe_overrides]), rd.recipe)
    rd.history.write_text("".join(json.dumps({"epoch": e + 1, "train": {"epoch_seconds": 1.5}}) + "\n" for e in range(4)))
    (rd.path / "wall_seconds.txt").write_text("12.5\n")
    rd.env.write_text(json.dumps(ENV))
    return cell


def _plan(tmp_path: Path, methods=("bsm", "ekd", "fopro"), seeds=(0, 1, 2)) -> AblationPlan:
    return AblationPlan(SMOKE, tmp_path / "ladder", tuple(methods), tuple(seeds), "bsm")


def _ladder(tmp_path: Path, **kw) -> AblationPlan:
    """bsm; ekd = bsm with 8/10/12 more right per class (+0.16/0.20/0.24); fopro = bsm exactly."""
    plan = _plan(tmp_path)
    labels = _labels()
    for s in plan.seeds:
        base = _baseline_preds(labels, right=28 + s)
        _write_cell(plan, "bsm", s, base)
        _write_cell(plan, "ekd", s, _fixed(labels, base, 8 + 2 * s), **kw.get("ekd", {}).get(s, {}))
        _write_cell(plan, "fopro", s, base.copy())
    return plan


def _diff(report, method, metric):
    (d,) = [d for d in report.differences if d.method == method and d.metric == metric]
    return d


def test_aggregate_a_known_difference(tmp_path):
    plan = _ladder(tmp_path)
    r = aggregate(plan, resamples=500, env=ENV)
    d = _diff(r, "ekd", "balanced_accuracy")
    assert d.mean == pytest.approx(0.20) and d.seeds == 3 and d.sd == pytest.approx(0.04)
    assert d.seed_interval.contains(0.20) and d.seed_interval.low > 0
    assert d.seed_interval.high - d.seed_interval.low == pytest.approx(2 * 4.302653 * 0.04 / 3 ** 0.5, abs=1e-6)
    assert d.image_interval.contains(0.20) and d.image_interval.low > 0 and d.bootstrap_note is None
    assert d.seed_bootstrap_interval.contains(0.20) and d.seed_bootstrap_interval.low > 0 and d.verdict == "higher"
    few = _diff(r, "ekd", "few_recall")
    assert few.mean == pytest.approx(0.20) and few.image_interval.low > 0
    tail = _diff(r, "ekd", "tail_recall")  # b, c, d: the medium and few groups
    assert tail.mean == pytest.approx(0.20) and tail.seed_interval.low > 0
    for metric in ("balanced_accuracy", "macro_f1", "many_recall", "medium_recall", "few_recall", "tail_recall",
                   "rare_recall"):
        same = _diff(r, "fopro", metric)
        assert same.mean == 0.0 and same.sd == 0.0 and same.verdict == "no detectable difference"
        for iv in (same.seed_interval, same.seed_bootstrap_interval, same.image_interval):
            assert iv.low == iv.high == 0.0
    (bsm,) = [s for s in r.summary if s.method == "bsm"]
    expected = [(28 + s) / PER_CLASS for s in range(3)]
    assert bsm.metrics["balanced_accuracy"].mean == pytest.approx(np.mean(expected))
    assert bsm.metrics["balanced_accuracy"].sd == pytest.approx(np.std(expected, ddof=1))
    assert bsm.seeds == 3 and not [d for d in r.differences if d.method == "bsm"]
    cell = r.cells[0]
    assert (cell.best_epoch, cell.wall_seconds, cell.train_seconds, cell.machine, cell.predictions) == (
        3, 12.5, 6.0, "Test CPU, 2 cores", True)
    assert r.notes == ()


def test_a_cell_without_predictions_falls_back_to_the_seed_interval(tmp_path):
    plan = _ladder(tmp_path, ekd={1: {"predictions": False}})
    r = aggregate(plan, resamples=200, env=ENV)
    d = _diff(r, "ekd", "balanced_accuracy")
    assert d.image_interval is None and d.seed_bootstrap_interval is None and "ekd-seed1" in d.bootstrap_note
    assert d.seed_interval.contains(0.20) and d.mean == pytest.approx(0.20) and d.verdict == "higher"
    assert _diff(r, "fopro", "balanced_accuracy").image_interval is not None
    md = render_markdown(r)
    assert "ekd-seed1 has no metrics/test_predictions.npz" in md


def test_predictions_that_do_not_reproduce_the_metrics_are_not_used(tmp_path):
    plan = _ladder(tmp_path)
    rd = Cell("ekd", 2, plan.out).run_dir
    p = load_predictions(rd.test_predictions)
    save_predictions(rd.test_predictions, ids=p.ids, labels=p.labels, logits=p.logits, predictions=p.labels, tau=0.0)
    d = _diff(aggregate(plan, resamples=100, env=ENV), "ekd", "balanced_accuracy")
    assert d.image_interval is None and "ekd-seed2" in d.bootstrap_note and d.seed_interval is not None


def test_a_cell_trained_with_another_recipe_is_noted(tmp_path):
    plan = _ladder(tmp_path, ekd={0: {"recipe_overrides": ("distill.epochs=7",)}})
    r = aggregate(plan, resamples=0, env=ENV)
    assert len(r.notes) == 1 and "ekd-seed0" in r.notes[0] and "distill.epochs" in r.notes[0]


def test_report_files(tmp_path):
    plan = _ladder(tmp_path)
    paths = write_report(aggregate(plan, resamples=200, env=ENV))
    data = json.loads(paths["json"].read_text())
    assert data["baseline"] == "bsm" and data["methods"] == ["bsm", "ekd", "fopro"] and len(data["cells"]) == 9
    (d,) = [d for d in data["differences"] if d["method"] == "ekd" and d["metric"] == "balanced_accuracy"]
    assert d["mean"] == pytest.approx(0.2) and d["image_interval"]["low"] > 0 and d["verdict"] == "higher"
    md = paths["markdown"].read_text()
    (row,) = [ln for ln in md.splitlines() if ln.startswith("| `ekd` | balanced accuracy |")]
    assert row.startswith("| `ekd` | balanced accuracy | +0.200 | 3 | **[") and row.endswith("| higher |")
    assert row.split(" | ")[5].startswith("**[") and "**" not in row.split(" | ")[6]  # the image-only one stays plain
    assert ("| `fopro` | balanced accuracy | +0.000 | 3 | [+0.000, +0.000] | [+0.000, +0.000] | [+0.000, +0.000] | "
            "no detectable difference |") in md
    assert "tail recall" in md


def _report(*differences: Difference, seeds: tuple[int, ...] = (0, 1, 2)) -> AblationReport:
    return AblationReport(recipe="r.yaml", out="out", command="fopro-edge ablate r.yaml", methods=("bsm", "fopro"),
                          seeds=seeds, baseline="bsm", overrides=(), confidence=0.95, resamples=2000, cells=(),
                          summary=(), differences=differences, env=ENV, date="today")


def _rows(md: str) -> list[str]:
    return [ln for ln in md.split("## Against", 1)[1].split("## Cells", 1)[0].splitlines() if ln.startswith("| `")]


def test_an_image_only_interval_that_excludes_zero_is_never_bold():
    """fopro − bsm few recall of Fashion-MNIST-LT: the interval over test images excludes 0, the
    ones over seeds do not: nothing is bold and the row says there is no detectable difference."""
    t = paired_t_interval([-0.198, 0.004, 0.044])
    d = Difference("fopro", "few_recall", t.mean, 3, t.sd, t.interval, Interval(-0.30, +0.02), Interval(-0.061, -0.039),
                   verdict=verdict(t.mean, t.interval, Interval(-0.30, +0.02), 3))
    (row,) = _rows(render_markdown(_report(d)))
    assert "**" not in row and row.endswith("| [-0.061, -0.039] | no detectable difference |")
    resolved = replace(d, seed_interval=Interval(-0.10, -0.01), verdict="lower")
    (row,) = _rows(render_markdown(_report(resolved)))
    assert "**[-0.100, -0.010]**" in row and "[-0.061, -0.039] |" in row and "**[-0.061" not in row


def test_with_one_seed_nothing_is_bold_and_the_report_says_why():
    d = Difference("fopro", "few_recall", -0.05, 1, None, None, None, Interval(-0.061, -0.039),
                   verdict=verdict(-0.05, None, None, 1))
    md = render_markdown(_report(d, seeds=(0,)))
    (row,) = _rows(md)
    assert "**" not in row and row.endswith("| one seed: no seed-level interval |")
    assert "One seed: no seed-level interval" in md


def test_seeds_that_disagree_give_no_detectable_difference_however_tight_the_images(tmp_path):
    """ekd − bsm per seed +0.16, −0.04, +0.20: every seed's images resolve its own difference, the seeds do not."""
    plan = _plan(tmp_path, methods=("bsm", "ekd"))
    labels = _labels()
    for s, (fix, break_) in enumerate(((8, 0), (0, 2), (10, 0))):
        base = _baseline_preds(labels)
        _write_cell(plan, "bsm", s, base)
        _write_cell(plan, "ekd", s, _fixed(labels, base, fix, break_=break_))
    r = aggregate(plan, resamples=500, env=ENV)
    d = _diff(r, "ekd", "balanced_accuracy")
    assert d.image_interval.low > 0 and d.seed_interval.contains(0.0) and d.seed_bootstrap_interval.low < d.image_interval.low
    assert d.verdict == "no detectable difference"
    (row,) = [ln for ln in _rows(render_markdown(r)) if "| balanced accuracy |" in ln]
    assert "**" not in row and row.endswith("| no detectable difference |")


def test_the_tail_follows_data_groups_tail_below(tmp_path):
    """Train counts 200, 60, 10, 5: the default tail is b, c, d; tail_below 20 makes it c, d."""
    plan = _ladder(tmp_path)
    base = aggregate(plan, resamples=0, env=ENV)
    assert _diff(base, "ekd", "tail_recall").mean == pytest.approx(0.20)
    narrow = AblationPlan(plan.recipe, plan.out, plan.methods, plan.seeds, "bsm", ("data.groups.tail_below=20",))
    rd = Cell("bsm", 0, plan.out).run_dir
    metrics = read_metrics(rd, 20)
    assert metrics.tail_classes == ("c", "d") and read_metrics(rd).tail_classes == ("b", "c", "d")
    assert metrics.tail_recall == pytest.approx(28 / PER_CLASS) and metrics.layout().tail == (False, False, True, True)
    r = aggregate(narrow, resamples=0, env=ENV)
    (bsm,) = [s for s in r.summary if s.method == "bsm"]
    assert bsm.metrics["tail_recall"].mean == pytest.approx(bsm.metrics["few_recall"].mean)


def test_metrics_json_without_tail_recall_is_still_read(tmp_path):
    plan = _ladder(tmp_path)
    rd = Cell("bsm", 1, plan.out).run_dir
    m = json.loads(rd.metrics_json.read_text())
    del m["tail_recall"], m["tail_classes"]
    rd.metrics_json.write_text(json.dumps(m))
    assert read_metrics(rd).tail_recall == pytest.approx(29 / PER_CLASS)  # from the per-class recall
    for row in m["per_class"]:
        del row["train_count"]
    rd.metrics_json.write_text(json.dumps(m))
    assert read_metrics(rd).tail_recall == pytest.approx(29 / PER_CLASS)  # the default tail needs no counts
    assert read_metrics(rd, 20).tail_recall is None  # a threshold without counts: unknown


# ------------------------------------------------------------------ the ladder
def test_finished_cells_are_reused_and_unfinished_ones_resumed(tmp_path, monkeypatch):
    plan = _plan(tmp_path, methods=("bsm", "ekd"), seeds=(0, 1))
    calls: list[str] = []

    def fake_run(p, cell, **kw):
        calls.append(cell.name)
        shutil.rmtree(cell.run_dir.path, ignore_errors=True)
        _write_cell(p, cell.method, cell.seed, _baseline_preds(_labels()))

    monkeypatch.setattr(ladder, "run_cell", fake_run)
    _write_cell(plan, "bsm", 0, _baseline_preds(_labels()))  # finished before
    Cell("ekd", 1, plan.out).run_dir.checkpoints.mkdir(parents=True)  # interrupted
    statuses = run_ladder(plan)
    assert calls == ["ekd-seed0", "bsm-seed1", "ekd-seed1"]
    assert statuses == {"bsm-seed0": "reused", "ekd-seed0": "trained", "bsm-seed1": "trained", "ekd-seed1": "resumed"}
    calls.clear()
    assert set(run_ladder(plan).values()) == {"reused"} and calls == []


def test_run_cell_resumes_an_existing_cell_folder_like_distill_resume(tmp_path, monkeypatch):
    from fopro_edge.distill import trainer

    seen = []
    monkeypatch.setattr(trainer, "distill", lambda cfg, rd, **kw: seen.append((cfg.distill.method, cfg.seed, rd.path, kw["resume"])))
    plan = make_plan(SMOKE, methods="bsm,ce", seeds="4", out=tmp_path / "l", overrides=["distill.epochs=1"])
    cell = Cell("ce", 4, plan.out)
    ladder.run_cell(plan, cell)
    (cell.run_dir.last_checkpoint).write_bytes(b"")
    ladder.run_cell(plan, cell)
    assert seen == [("ce", 4, cell.run_dir.path, False), ("ce", 4, cell.run_dir.path, True)]


def test_cell_folders_keep_their_names(tmp_path):
    plan = _plan(tmp_path, methods=("ekd+fpg", "bsm"), seeds=(0, 2))
    assert [c.name for c in plan.cells()] == ["ekd_fpg-seed0", "bsm-seed0", "ekd_fpg-seed2", "bsm-seed2"]


# ------------------------------------------------------------------ the command
def _ablate(*args: str):
    return CliRunner().invoke(cli, ["ablate", *args], prog_name="fopro-edge")


def test_report_only_names_the_missing_cells(tmp_path):
    plan = _ladder(tmp_path)
    shutil.rmtree(Cell("ekd", 1, plan.out).run_dir.metrics_dir)  # interrupted
    shutil.rmtree(Cell("fopro", 2, plan.out).run_dir.path)  # never started
    r = _ablate(str(SMOKE), "--methods", "bsm,ekd,fopro", "--seeds", "0,1,2", "--out", str(plan.out), "--report-only")
    assert r.exit_code == 2, r.output
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith("error: ") and "2 cell(s) not finished" in line
    assert "ekd-seed1, fopro-seed2" in line and "bsm-seed0" not in line
    assert not (plan.out / "ablation.json").exists()


@pytest.mark.parametrize("args,words", [
    (["--methods", "bsm,xyz"], ["--methods", "'xyz'"]),
    (["--methods", "ce,ekd"], ["--baseline", "'bsm'"]),
    (["--seeds", "0,a"], ["--seeds", "'a'"]),
    (["--set", "seed=3"], ["--set", "seed"]),
    (["--set", "distill.method=ce"], ["--set", "distill.method"]),
])
def test_bad_arguments_exit_2_naming_them(tmp_path, args, words):
    r = _ablate(str(SMOKE), "--out", str(tmp_path / "l"), *args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr
    assert not (tmp_path / "l").exists()


def test_end_to_end_two_methods_one_seed(tmp_path):
    out = tmp_path / "ladder"
    args = [str(SMOKE), "--methods", "ce,bsm", "--seeds", "0", "--out", str(out), "--set", "distill.epochs=1",
            "--resamples", "200", "--no-progress"]
    r = _ablate(*args)
    assert r.exit_code == 0, r.output
    assert "## Against `bsm`" in r.stdout and "`ce-seed0`" in r.stdout
    for name in ("ce-seed0", "bsm-seed0"):
        rd = out / name
        m = json.loads((rd / "metrics" / "metrics.json").read_text())
        p = load_predictions(rd / "metrics" / "test_predictions.npz")
        assert m["method"] == name.split("-")[0] and len(p.labels) == m["num_samples"] == 16
        assert list(p.ids) == json.loads((rd / "splits.json").read_text())["splits"]["test"]["ids"]
        layout = ClassLayout(tuple(c["group"] for c in m["per_class"]), tuple(c["rare"] for c in m["per_class"]))
        assert point_metrics(p.labels, p.predictions, layout)["balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
        assert (rd / "wall_seconds.txt").is_file()
    data = json.loads((out / "ablation.json").read_text())
    assert [c["status"] for c in data["cells"]] == ["trained", "trained"]
    assert all(c["predictions"] and c["best_epoch"] == 1 for c in data["cells"])
    (d,) = [d for d in data["differences"] if d["metric"] == "balanced_accuracy"]
    assert d["method"] == "ce" and d["seeds"] == 1 and d["seed_interval"] is None and d["image_interval"] is not None
    assert d["seed_bootstrap_interval"] is None and d["verdict"] == "one seed: no seed-level interval"
    assert not [row for row in _rows(r.stdout) if "**" in row]
    assert "One seed: no seed-level interval" in r.stdout
    assert data["env"]["cpu"]["model"]
    stamp = (out / "ce-seed0" / "metrics" / "metrics.json").stat().st_mtime_ns
    again = _ablate(*args, "--json")
    assert again.exit_code == 0, again.output
    data2 = json.loads(again.stdout)
    assert [c["status"] for c in data2["cells"]] == ["reused", "reused"]
    assert data2["differences"] == data["differences"]
    assert (out / "ce-seed0" / "metrics" / "metrics.json").stat().st_mtime_ns == stamp
    only = _ablate(*args[:-3], "--report-only")
    assert only.exit_code == 0, only.output


def test_the_report_says_what_the_prompt_and_akd_did_in_the_cells_that_have_them(tmp_path):
    plan = _ladder(tmp_path)
    assert "What the Fourier prompt" not in render_markdown(aggregate(plan, resamples=0, env=ENV))
    rd = Cell("fopro", 1, plan.out).run_dir
    diff = {"mean": 0.04, "t_interval": [0.004, 0.076], "bootstrap_interval": [-0.014, 0.092]}
    rd.explore_json.write_text(json.dumps({
        "lr": 0.003, "steps": 100, "verdict": "…",
        "probe": {"seeds": 5, "clean": {"balanced_accuracy": 0.724, "few_recall": 0.614},
                  "prompted": {"balanced_accuracy": 0.731, "few_recall": 0.654},
                  "difference": {"balanced_accuracy": {**diff, "mean": 0.006, "t_interval": [-0.01, 0.023]}, "few_recall": diff}},
        "gain": {"min": 0.734, "max": 1.278, "mean_abs_log_gain": 0.118, "plot": "explore.png"},
    }))
    adv = [[2.0, 1.0], [0.7, 0.5]]  # two epochs with AKD steps
    rd.history.write_text("".join(json.dumps({"epoch": e + 1, "train": {"epoch_seconds": 1.5},
                                              "akd_steps": [{"step": 4 * (2 * e + i), "adv": a} for i, a in enumerate(steps)]}) + "\n"
                                  for e, steps in enumerate(adv)))
    r = aggregate(plan, resamples=0, env=ENV)
    (cell,) = [c for c in r.cells if c.method == "fopro" and c.seed == 1]
    assert cell.akd.steps == 4 and (cell.akd.first, cell.akd.first_epoch_mean, cell.akd.last_epoch_mean) == (2.0, 1.5, 0.6)
    assert cell.explore.probe.difference.few_recall.t_interval == (0.004, 0.076) and cell.train_seconds == 3.0
    md = render_markdown(r)
    section = md.split("## What the Fourier prompt and AKD did", 1)[1]
    rows = [ln for ln in section.splitlines() if ln.startswith("| `")]
    assert rows == ["| `fopro-seed1` | 0.724 / 0.614 | +0.006 [-0.010, +0.023] [-0.014, +0.092] | "
                    "+0.040 **[+0.004, +0.076]** [-0.014, +0.092] | 0.73–1.28 (0.118) | 4: 2.00 → 1.50 → 0.60 |"]
    cells = {c["dir"].rsplit("/", 1)[-1]: c for c in json.loads(json.dumps(r.to_dict()))["cells"]}
    assert cells["fopro-seed1"]["akd"]["steps"] == 4 and cells["fopro-seed0"]["akd"] is None
