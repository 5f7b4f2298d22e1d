"""Splits medical data needs: split seed, stratified k-fold, pre-split trees, split files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fopro_edge.config import DataConfig, recipe_from_dict
from fopro_edge.data import build_splits, save_manifest
from fopro_edge.errors import ConfigError, DataError

COUNTS = {"head": 12, "mid": 7, "tail": 4}


def _tree(root: Path, counts: dict[str, int], prefix: str = "img") -> list[Path]:
    files = []
    for k, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(n):
            path = root / name / f"{prefix}_{name}_{j}.png"
            Image.new("RGB", (8, 8), (k * 40, j, 0)).save(path)
            files.append(path)
    return files


def _folder(root: Path, **kw) -> DataConfig:
    return DataConfig(source="folder", root=str(root), **kw)


def _ids(s) -> list[set[str]]:
    return [set(s.train.ids()), set(s.val.ids()), set(s.test.ids())]


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2
    return msg


# --------------------------------------------------------------------------- split seed


def test_split_seed_is_apart_from_the_training_seed(tmp_path):
    _tree(tmp_path / "t", COUNTS)
    fixed = _folder(tmp_path / "t", split_seed=7)
    a, b = build_splits(fixed, seed=0), build_splits(fixed, seed=5)
    assert _ids(a) == _ids(b)  # the training seed does not move images
    assert _ids(build_splits(_folder(tmp_path / "t"), seed=7)) == _ids(a)  # null: the recipe's seed
    assert _ids(build_splits(_folder(tmp_path / "t", split_seed=8), seed=0)) != _ids(a)
    save_manifest(a, tmp_path / "splits.json")
    plan = json.loads((tmp_path / "splits.json").read_text())["split"]
    assert plan["seed"] == 7 and plan["layout"] == "tree"
    digits = build_splits(DataConfig(source="digits", split_seed=3), seed=0)
    assert digits.test.ids() == build_splits(DataConfig(source="digits"), seed=3).test.ids()


# --------------------------------------------------------------------------- k-fold


def test_kfold_folds_are_disjoint_cover_everything_and_are_stratified(tmp_path):
    _tree(tmp_path / "t", COUNTS)
    k = 4
    tests, every = [], None
    for fold in range(k):
        s = build_splits(_folder(tmp_path / "t", folds=k, fold=fold, split_seed=1, val_fraction=0.2), seed=0)
        tr, va, te = _ids(s)
        assert not (tr & va or tr & te or va & te)
        every = tr | va | te if every is None else every
        assert tr | va | te == every and len(every) == sum(COUNTS.values())
        for c, n in enumerate(COUNTS.values()):
            assert abs(int(s.test.counts()[c]) - n / k) < 1  # stratified: floor or ceil of n/k
        assert (s.val.counts() >= 1).all() and s.plan == {
            "seed": 1, "layout": "tree", "folds": k, "fold": fold, "val_fraction": 0.2}
        tests.append(te)
    assert set().union(*tests) == every and sum(len(t) for t in tests) == len(every)  # a partition
    again = build_splits(_folder(tmp_path / "t", folds=k, fold=2, split_seed=1, val_fraction=0.2), seed=9)
    assert set(again.test.ids()) == tests[2]
    other = build_splits(_folder(tmp_path / "t", folds=k, fold=2, split_seed=2, val_fraction=0.2), seed=0)
    assert set(other.test.ids()) != tests[2]


def test_kfold_class_smaller_than_k_is_one_line(tmp_path):
    _tree(tmp_path / "t", COUNTS)
    with pytest.raises(DataError) as e:
        build_splits(_folder(tmp_path / "t", folds=5), seed=0)
    assert "data.folds: class 'tail' has 4 image(s), fewer than data.folds = 5" in _one_line(e)


# --------------------------------------------------------------------------- pre-split trees


def _presplit(root: Path, val: bool = True) -> dict[str, set[str]]:
    files = {"train": _tree(root / "train", COUNTS, "tr"), "test": _tree(root / "test", {"head": 3, "mid": 2, "tail": 2}, "te")}
    if val:
        files["val"] = _tree(root / "val", {"head": 2, "mid": 2, "tail": 1}, "va")
    return {k: {str(p.resolve()) for p in v} for k, v in files.items()}


def test_presplit_tree_is_used_as_given(tmp_path):
    files = _presplit(tmp_path / "p")
    for layout in ("auto", "presplit"):
        s = build_splits(_folder(tmp_path / "p", layout=layout), seed=0)
        assert s.class_names == ("head", "mid", "tail")
        assert set(s.train.ids()) == files["train"] and set(s.val.ids()) == files["val"]
        assert set(s.test.ids()) == files["test"]
        assert s.test.counts().tolist() == [3, 2, 2]
        assert s.plan["layout"] == "presplit" and "drawn_from_train" not in s.plan
    assert _ids(build_splits(_folder(tmp_path / "p"), seed=4)) == _ids(s)  # no seed moves an image


def test_presplit_without_val_draws_val_from_train(tmp_path):
    files = _presplit(tmp_path / "p", val=False)
    s = build_splits(_folder(tmp_path / "p", val_fraction=0.25), seed=0)
    assert set(s.test.ids()) == files["test"]
    assert set(s.train.ids()) | set(s.val.ids()) == files["train"] and not set(s.train.ids()) & set(s.val.ids())
    assert s.val.counts().tolist() == [3, 2, 1] and s.plan["drawn_from_train"] == ["val"]


def test_presplit_class_sets(tmp_path, caplog):
    _presplit(tmp_path / "p")
    _tree(tmp_path / "p" / "test", {"zebra": 2}, "te")
    with pytest.raises(DataError) as e:
        build_splits(_folder(tmp_path / "p"), seed=0)
    assert f"{(tmp_path / 'p' / 'test').resolve()}: class 'zebra' has no folder in" in _one_line(e)

    _presplit(tmp_path / "q")
    for f in (tmp_path / "q" / "val" / "tail").iterdir():
        f.unlink()
    (tmp_path / "q" / "val" / "tail").rmdir()
    with caplog.at_level(logging.WARNING):
        s = build_splits(_folder(tmp_path / "q"), seed=0)
    assert s.val.counts().tolist() == [2, 2, 0]
    assert "the val split has no image of class(es): tail" in caplog.text


def test_presplit_errors(tmp_path):
    _presplit(tmp_path / "p")
    with pytest.raises(DataError) as e:
        build_splits(_folder(tmp_path / "p", folds=2), seed=0)
    assert "data.folds: the root is a pre-split tree (train/, val/, test/), used as given" in _one_line(e)
    _tree(tmp_path / "plain", COUNTS)
    with pytest.raises(DataError) as e:
        build_splits(_folder(tmp_path / "plain", layout="presplit"), seed=0)
    assert "data.layout: presplit, but the root has no train/ folder" in _one_line(e)
    _tree(tmp_path / "p" / "extra", {"head": 1})
    with pytest.raises(DataError) as e:
        build_splits(_folder(tmp_path / "p"), seed=0)
    assert "and also extra/ (move it into a split folder, or set data.layout: tree" in _one_line(e)
    with pytest.raises(DataError, match="class name 'head' is used by two folders"):
        build_splits(_folder(tmp_path / "p", layout="tree"), seed=0)  # tree: read as one tree, not detected


# --------------------------------------------------------------------------- split files


def _rows(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_split_file_with_named_splits_is_honoured(tmp_path):
    files = _tree(tmp_path / "t", COUNTS)
    rel = [str(p.relative_to(tmp_path / "t")) for p in files]
    want = {r: ("test" if i % 5 == 0 else "val" if i % 5 == 1 else "train") for i, r in enumerate(rel)}
    sf = _rows(tmp_path / "split.csv", "path,split", [f"{r},{s}" for r, s in want.items()])
    s = build_splits(_folder(tmp_path / "t", split_file=str(sf)), seed=0)
    root = (tmp_path / "t").resolve()
    for name in ("train", "val", "test"):
        assert {str(Path(i).relative_to(root)) for i in s.split(name).ids()} == {r for r, v in want.items() if v == name}
    assert s.plan["split_file"] == str(sf) and "drawn_from_train" not in s.plan

    no_val = _rows(tmp_path / "nv.csv", "path,split", [f"./{r},{'test' if v == 'test' else 'train'}" for r, v in want.items()])
    s2 = build_splits(_folder(tmp_path / "t", split_file=str(no_val)), seed=0)
    assert {str(Path(i).relative_to(root)) for i in s2.test.ids()} == {r for r, v in want.items() if v == "test"}
    assert len(s2.val) > 0 and s2.plan["drawn_from_train"] == ["val"]


def test_fold_file_lets_data_fold_pick_the_test_fold(tmp_path):
    files = _tree(tmp_path / "t", COUNTS)
    # HyperKvasir's official_splits/2_fold_split.csv: semicolons, bare file names, its own class names
    rows = [f"{p.name};other-name-{p.parent.name};{i % 2}" for i, p in enumerate(files)]
    sf = _rows(tmp_path / "2_fold_split.csv", "file-name;class-name;split-index", rows)
    for fold in (0, 1):
        s = build_splits(_folder(tmp_path / "t", split_file=str(sf), fold=fold, val_fraction=0.2), seed=0)
        assert {Path(i).name for i in s.test.ids()} == {p.name for i, p in enumerate(files) if i % 2 == fold}
        assert not set(s.val.ids()) & set(s.train.ids()) and len(s.val) > 0
        assert s.plan["folds"] == 2 and s.plan["fold"] == fold
    with pytest.raises(DataError) as e:
        build_splits(_folder(tmp_path / "t", split_file=str(sf), fold=2), seed=0)
    assert f"{sf}: data.fold: 2 is not a fold of this file (folds: 0, 1)" in _one_line(e)
    with pytest.raises(DataError) as e:
        build_splits(_folder(tmp_path / "t", split_file=str(sf), folds=5), seed=0)
    assert "data.folds: 5, but the file has 2 folds" in _one_line(e)


@pytest.mark.parametrize(
    "case, expect",
    [
        ("unknown", "line 3: 'head/nope.png' is not an image under data.root"),
        ("unlisted", "1 image(s) under data.root are not listed, first: "),
        ("twice", "line 3: 'head/img_head_0.png' is listed twice (first on line 2)"),
        ("bad_value", "line 2: split 'training' is not train, val, test or a fold number"),
        ("mixed", "line 3: split '1' mixes fold numbers and named splits"),
        ("no_column", "no 'split' or 'fold' or 'split-index' column (columns present: path, set)"),
        ("no_train", "no row has split 'train'"),
        ("ambiguous", "line 2: 'same.png' matches 2 images in different folders"),
        ("one_fold", "every row is fold 0; a fold file needs at least 2 folds"),
    ],
)
def test_split_file_errors_are_one_line_naming_the_file(tmp_path, case, expect):
    files = _tree(tmp_path / "t", {"head": 3, "tail": 3})
    rel = [str(p.relative_to(tmp_path / "t")) for p in files]
    rows = [f"{r},{'train' if i % 3 else 'test'}" for i, r in enumerate(rel)]
    header = "path,split"
    if case == "unknown":
        rows.insert(1, "head/nope.png,train")
    elif case == "unlisted":
        rows = rows[:-1]
    elif case == "twice":
        rows.insert(1, rows[0])
    elif case == "bad_value":
        rows[0] = f"{rel[0]},training"
    elif case == "mixed":
        rows[1] = f"{rel[1]},1"
    elif case == "no_column":
        header = "path,set"
    elif case == "no_train":
        rows = [f"{r},test" for r in rel]
    elif case == "ambiguous":
        for name in ("head", "tail"):
            Image.new("RGB", (8, 8)).save(tmp_path / "t" / name / "same.png")
        rows = ["same.png,train", *rows]
    elif case == "one_fold":
        rows = [f"{r},0" for r in rel]
    sf = _rows(tmp_path / "split.csv", header, rows)
    with pytest.raises(DataError) as e:
        build_splits(_folder(tmp_path / "t", split_file=str(sf)), seed=0)
    msg = _one_line(e)
    assert msg.startswith(f"{sf}: ") and expect in msg


# --------------------------------------------------------------------------- recipe keys


@pytest.mark.parametrize(
    "data, expect",
    [
        ({"source": "folder", "root": "x", "folds": 3, "fold": 3}, "data.fold: 3 is out of range (folds are 0..2"),
        ({"source": "folder", "root": "x", "fold": 1}, "data.fold: picks the test fold: set data.folds"),
        ({"source": "folder", "root": "x", "folds": 0}, "data.folds: 0 is out of range"),
        ({"source": "digits", "folds": 5}, "data.folds: applies to data.source: folder only"),
        ({"source": "csv", "root": "x", "train_csv": "t.csv", "split_file": "s.csv"}, "data.split_file: applies to data.source: folder only"),
        ({"source": "folder", "root": "x", "layout": "presplit", "folds": 2}, "data.folds: a pre-split tree (data.layout: presplit) is used as given"),
        ({"source": "folder", "root": "x", "layout": "split"}, "data.layout: 'split' is not allowed"),
        ({"split_seed": -1}, "data.split_seed: -1 is out of range"),
    ],
)
def test_split_keys_are_checked_when_the_recipe_loads(data, expect):
    with pytest.raises(ConfigError) as e:
        recipe_from_dict({"data": data}, source="r.yaml", check_paths=False)
    msg = _one_line(e)
    assert msg.startswith("r.yaml: ") and expect in msg


def test_folds_one_is_off(tmp_path):
    _tree(tmp_path / "t", COUNTS)
    r = recipe_from_dict({"data": {"source": "folder", "root": str(tmp_path / "t"), "folds": 1}}, source="r.yaml")
    s = build_splits(r.data, r.seed)
    assert "folds" not in s.plan and np.array_equal(s.test.counts(), build_splits(_folder(tmp_path / "t"), 0).test.counts())
