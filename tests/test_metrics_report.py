"""Evaluation metrics (hand-computed example) and the metrics report writer."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from fopro_edge.distill.metrics import classification_metrics
from fopro_edge.distill.report import markdown_table, write_metrics_report

NAMES = ["A", "B", "C", "D", "E"]
TRAIN = [200, 50, 30, 10, 5]
GROUPS = {"A": "many", "B": "medium", "C": "medium", "D": "few", "E": "few"}
RARE = ["D", "E"]
# D is never predicted; E is absent from y_true but predicted once.
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 3]
Y_PRED = [0, 0, 0, 1, 1, 1, 0, 4, 2, 0]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def example() -> dict:
    return classification_metrics(Y_TRUE, Y_PRED, NAMES, train_counts=TRAIN, groups=GROUPS, rare_classes=RARE)


def test_metrics_hand_computed() -> None:
    m = example()
    assert m["num_samples"] == 10 and m["num_classes"] == 5
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 2 / 3 + 0.5 + 0.0) / 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns that E is predicted but absent
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(Y_TRUE, Y_PRED))
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 2 / 3 + 0.0) / 4)
    by = {r["name"]: r for r in m["per_class"]}
    assert [r["name"] for r in m["per_class"]] == NAMES
    expected = {  # precision, recall, f1, support
        "A": (0.6, 0.75, 2 / 3, 4),
        "B": (2 / 3, 2 / 3, 2 / 3, 3),
        "C": (1.0, 0.5, 2 / 3, 2),
        "D": (0.0, 0.0, 0.0, 1),  # never predicted: precision 0 by zero_division
        "E": (0.0, None, None, 0),  # absent from y_true: recall and F1 undefined
    }
    for name, (p, r, f, s) in expected.items():
        row = by[name]
        assert row["precision"] == pytest.approx(p), name
        assert row["recall"] == (None if r is None else pytest.approx(r)), name
        assert row["f1"] == (None if f is None else pytest.approx(f)), name
        assert row["support"] == s
    assert [by[n]["train_count"] for n in NAMES] == TRAIN
    assert [by[n]["group"] for n in NAMES] == ["many", "medium", "medium", "few", "few"]
    assert [by[n]["rare"] for n in NAMES] == [False, False, False, True, True]
    assert m["group_recall"]["many"] == pytest.approx(0.75)
    assert m["group_recall"]["medium"] == pytest.approx((2 / 3 + 0.5) / 2)
    assert m["group_recall"]["few"] == pytest.approx(0.0)  # E (undefined) excluded, D = 0
    assert m["rare_recall"] == pytest.approx(0.0)
    assert m["confusion_matrix"] == [
        [3, 1, 0, 0, 0],
        [1, 2, 0, 0, 0],
        [0, 0, 1, 0, 1],
        [1, 0, 0, 0, 0],
        [0, 0, 0, 0, 0],  # absent class keeps its row
    ]
    json.dumps(m)  # plain Python types only


def test_group_and_rare_recall_edge_cases() -> None:
    groups = {"A": "many", "B": "many", "C": "medium", "D": "medium", "E": "few"}
    counts = dict(zip(NAMES, TRAIN))  # mapping form
    m = classification_metrics(
        Y_TRUE, Y_PRED, NAMES, train_counts=counts, groups=groups, rare_classes=["C", "E"]
    )
    assert m["group_recall"]["many"] == pytest.approx((0.75 + 2 / 3) / 2)
    assert m["group_recall"]["medium"] == pytest.approx(0.25)
    assert m["group_recall"]["few"] is None  # only E, whose recall is undefined
    assert m["rare_recall"] == pytest.approx(0.5)  # C only
    all_many = {n: "many" for n in NAMES}
    m = classification_metrics(Y_TRUE, Y_PRED, NAMES, train_counts=TRAIN, groups=all_many, rare_classes=[])
    assert m["group_recall"]["medium"] is None and m["group_recall"]["few"] is None
    assert m["rare_recall"] is None
    ones = np.array([1, 1])
    m = classification_metrics(ones, ones, NAMES, train_counts=TRAIN, groups=GROUPS, rare_classes=RARE)
    assert m["balanced_accuracy"] == 1.0 and m["per_class"][0]["recall"] is None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"y_pred": [0] * 9}, "length"),
        ({"y_pred": [0] * 9 + [5]}, "outside"),
        ({"train_counts": [1, 2]}, "entries"),
        ({"groups": {"A": "huge"}}, "unknown groups"),
        ({"rare_classes": ["Z"]}, "rare_classes"),
        ({"y_true": [], "y_pred": []}, "no samples"),
    ],
)
def test_metrics_input_errors(kwargs: dict, match: str) -> None:
    args = {"y_true": Y_TRUE, "y_pred": Y_PRED, "train_counts": TRAIN, "groups": GROUPS, "rare_classes": RARE} | kwargs
    with pytest.raises(ValueError, match=match):
        classification_metrics(args.pop("y_true"), args.pop("y_pred"), NAMES, **args)


def test_markdown_table() -> None:
    text = markdown_table(["name", "value", "note"], [["a|b", 0.123456, None], ["c", 2, "x"]])
    lines = text.strip().splitlines()
    assert lines[0] == "| name | value | note |"
    assert lines[1] == "|---|---:|---|"
    assert lines[2] == "| a\\|b | 0.1235 | – |"
    assert lines[3] == "| c | 2 | x |"
    assert markdown_table(["v"], [[1.5]], float_format=".1f").splitlines()[2] == "| 1.5 |"
    with pytest.raises(ValueError):
        markdown_table(["a", "b"], [[1]])


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5000, path


def test_report_files(tmp_path: Path) -> None:
    m = example()
    pyplot_before = "matplotlib.pyplot" in sys.modules
    rng = np.random.default_rng(0)
    gain = np.exp(rng.normal(0, 0.3, size=(3, 16, 9)))
    gain[:, 0, 0] = 1.0
    paths = write_metrics_report(m, tmp_path / "report", title="Demo eval", gain=gain)
    assert set(paths) == {"json", "markdown", "per_class_recall", "confusion_matrix", "fpg_gain"}
    names = {k: p.name for k, p in paths.items()}
    assert names["json"] == "metrics.json" and names["markdown"] == "metrics.md"
    for key in ("per_class_recall", "confusion_matrix", "fpg_gain"):
        assert paths[key].name == f"{key}.png"
        _assert_png(paths[key])
    assert json.loads(paths["json"].read_text()) == m
    md = paths["markdown"].read_text()
    assert md.startswith("# Demo eval")
    class_rows = [ln for ln in md.splitlines() if ln.startswith("| ") and ln.split("|")[1].strip() in NAMES]
    assert [ln.split("|")[1].strip() for ln in class_rows] == ["A", "B", "C", "D", "E"]  # train count desc
    e_row = [c.strip() for c in class_rows[-1].split("|")[1:-1]]
    assert e_row == ["E", "few", "★", "5", "0", "0.0", "–", "–"]
    assert "| balanced accuracy | 47.9 |" in md
    assert "![FPG gain](fpg_gain.png)" in md
    assert not list((tmp_path / "report").glob("*.tmp"))
    if not pyplot_before:
        assert "matplotlib.pyplot" not in sys.modules  # no global pyplot state


def test_report_sorting_many_classes_and_gain_variants(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 30
    names = [f"class_{i:02d}" for i in range(n)]
    counts = rng.integers(1, 500, size=n).tolist()
    groups = {c: ("many" if k > 100 else "medium" if k >= 20 else "few") for c, k in zip(names, counts)}
    y_true = rng.integers(0, n, size=300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, n, size=300))
    rare = [c for c in names if groups[c] == "few"]
    m = classification_metrics(y_true, y_pred, names, train_counts=counts, groups=groups, rare_classes=rare)
    # a channel-mean gain panel (C > 4) and a 2-D gain both work
    paths = write_metrics_report(m, tmp_path, title="Thirty", gain=np.exp(rng.normal(0, 0.2, size=(6, 12, 7))))
    _assert_png(paths["fpg_gain"])
    _assert_png(paths["confusion_matrix"])
    md_rows = [ln for ln in paths["markdown"].read_text().splitlines() if ln.startswith("| class_")]
    assert len(md_rows) == n
    listed = [int(ln.split("|")[4]) for ln in md_rows]
    assert listed == sorted(counts, reverse=True)
    paths = write_metrics_report(m, tmp_path / "two_d", title="2D", gain=np.ones((8, 5)))
    _assert_png(paths["fpg_gain"])
    with pytest.raises(ValueError, match="positive"):
        write_metrics_report(m, tmp_path / "bad", title="bad", gain=np.zeros((1, 8, 5)))
    no_gain = write_metrics_report(m, tmp_path / "plain", title="plain")
    assert "fpg_gain" not in no_gain and not (tmp_path / "plain" / "fpg_gain.png").exists()
