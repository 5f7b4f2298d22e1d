"""Splits, long-tail statistics, calibration subsets, transforms, datasets and samplers."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from fopro_edge.config import DataConfig, GroupsConfig, SyntheticConfig
from fopro_edge.data import (
    DataSplits,
    ImageDataset,
    ImageList,
    build_sampler,
    build_splits,
    build_transform,
    check_splits,
    compute_longtail_stats,
    make_synthetic_csv_split,
    make_synthetic_tree,
    save_manifest,
    stratified_calibration_indices,
)
from fopro_edge.errors import DataError

SMALL = SyntheticConfig(num_classes=4, max_per_class=20, imbalance_ratio=10.0, eval_per_class=3, image_size=16)


# --------------------------------------------------------------------------- splits


def test_folder_splits_stratified_and_deterministic(tmp_path):
    root = make_synthetic_tree(tmp_path / "tree", SMALL, seed=0)
    # one class with only 2 images: too small to split, stays in train
    for j in range(2):
        Image.new("RGB", (8, 8), (j, 0, 0)).save(root / "upper-gi-tract" / f"tiny-{j}.png")
    cfg = DataConfig(source="folder", root=str(root), val_fraction=0.2, test_fraction=0.2)
    s = build_splits(cfg, seed=3)
    assert s.class_names == ("pattern-00", "pattern-01", "pattern-02", "pattern-03", "upper-gi-tract")
    total = [20, 9, 4, 2, 2]
    assert (s.train.counts() + s.val.counts() + s.test.counts()).tolist() == total
    assert s.val.counts().tolist() == [4, 2, 1, 0, 0]
    assert s.test.counts().tolist() == [4, 2, 1, 0, 0]
    assert s.train.counts().tolist() == [12, 5, 2, 2, 2]
    assert (s.train.counts() >= 1).all()
    ids = [set(x.ids()) for x in (s.train, s.val, s.test)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    again = build_splits(cfg, seed=3)
    assert again.val.ids() == s.val.ids() and again.test.ids() == s.test.ids()
    assert build_splits(cfg, seed=4).val.ids() != s.val.ids()


def test_csv_splits_with_and_without_val_csv(tmp_path):
    paths = make_synthetic_csv_split(tmp_path, SMALL, seed=0)
    full = DataConfig(
        source="csv", root=str(paths["image_dir"]), train_csv=str(paths["train"]),
        val_csv=str(paths["val"]), test_csv=str(paths["test"]),
    )
    s = build_splits(full, seed=0)
    assert s.train.counts().tolist() == [20, 9, 4, 2]
    assert s.val.counts().tolist() == [3] * 4 and s.test.counts().tolist() == [3] * 4
    no_val = DataConfig(
        source="csv", root=str(paths["image_dir"]), train_csv=str(paths["train"]),
        test_csv=str(paths["test"]), val_fraction=0.25,
    )
    s2 = build_splits(no_val, seed=0)
    assert s2.val.counts().tolist() == [5, 2, 1, 1]
    assert s2.train.counts().tolist() == [15, 7, 3, 1]
    assert s2.test.counts().tolist() == [3] * 4
    assert not set(s2.val.ids()) & set(s2.train.ids())


def test_csv_val_class_absent_from_training(tmp_path):
    for n in ("a", "b", "c"):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{n}.jpg")
    (tmp_path / "train.csv").write_text("image,finding\na,0\nb,2\n")
    (tmp_path / "val.csv").write_text("image,finding\nc,1\n")
    cfg = DataConfig(source="csv", root=str(tmp_path), train_csv=str(tmp_path / "train.csv"),
                     val_csv=str(tmp_path / "val.csv"), test_csv=str(tmp_path / "val.csv"))
    with pytest.raises(DataError, match=r"class 'class_1' has val/test images but no training images"):
        build_splits(cfg, seed=0)


def test_check_splits_errors():
    x = np.zeros((4, 2, 2), np.uint8)
    ok = ImageList(x, [0, 1, 0, 1], ("a", "b"))
    empty = ok.subset([])
    with pytest.raises(DataError, match="training split is empty"):
        check_splits(DataSplits(empty, ok, ok, ok.class_names))
    with pytest.raises(DataError, match="duplicate class names: a"):
        dup = ImageList(x, [0, 1, 0, 1], ("a", "a"))
        check_splits(DataSplits(dup, dup, dup, dup.class_names))
    with pytest.raises(DataError, match="class 'b' has val/test images but no training images"):
        check_splits(DataSplits(ok.subset([0, 2]), ok, ok, ok.class_names))
    with pytest.raises(DataError, match="the val split is empty"):
        check_splits(DataSplits(ok, empty, ok, ok.class_names))


def test_digits_and_synthetic_sources_and_manifest(tmp_path):
    s = build_splits(DataConfig(source="digits"), seed=0)
    assert s.num_classes == 10 and len(s.val) == 120 and len(s.test) == 120
    syn = build_splits(DataConfig(source="synthetic", synthetic=SMALL), seed=0)
    assert syn.train.counts().tolist() == [20, 9, 4, 2]
    assert syn.train.refs.shape == (35, 16, 16, 3)
    assert len(set(syn.train.ids()) | set(syn.val.ids()) | set(syn.test.ids())) == 35 + 12 + 12
    save_manifest(syn, tmp_path / "splits.json")
    m = json.loads((tmp_path / "splits.json").read_text())
    assert m["class_names"] == list(syn.class_names)
    assert m["splits"]["train"]["class_counts"] == [20, 9, 4, 2]
    assert m["splits"]["val"]["labels"] == syn.val.labels.tolist()
    assert m["splits"]["test"]["ids"][0].startswith("synthetic:")


# --------------------------------------------------------------------------- long-tail stats


def test_longtail_stats_groups_and_rare_set():
    counts = [500, 101, 100, 20, 19, 3]
    labels = np.repeat(np.arange(6), counts)
    names = ["nv", "mel", "bcc", "bkl", "ak", "df"]
    st = compute_longtail_stats(labels, names, GroupsConfig())
    assert st.counts == tuple(counts)
    assert st.groups == ("many", "many", "medium", "medium", "few", "few")
    assert st.group_of()["bcc"] == "medium"
    assert st.imbalance_ratio == pytest.approx(500 / 3)
    assert st.rare_classes == ("ak", "df") and st.rare_class_ids == (4, 5)
    assert st.group_ids("few") == (4, 5)
    pri = st.class_priors()
    assert pri.dtype == np.float64 and pri.sum() == pytest.approx(1.0) and pri[0] == pytest.approx(500 / 743)
    d = st.to_dict()
    assert d["group_members"]["many"] == ["nv", "mel"] and d["rare_classes"] == ["ak", "df"]
    json.dumps(d)

    groups = GroupsConfig(many_above=200, few_below=5, rare_classes=["mel", "df"])
    custom = compute_longtail_stats(labels, names, groups)
    assert custom.groups == ("many", "medium", "medium", "medium", "medium", "few")
    assert custom.rare_classes == ("mel", "df")

    no_few = compute_longtail_stats(np.repeat([0, 1, 2], [300, 40, 30]), ["a", "b", "c"], GroupsConfig())
    assert no_few.group_ids("few") == () and no_few.rare_classes == ("c",)


def test_longtail_unknown_rare_class_and_bad_groups():
    labels = np.repeat([0, 1], [10, 2])
    with pytest.raises(DataError) as e:
        compute_longtail_stats(labels, ["melanoma", "nevus"], GroupsConfig(rare_classes=["melanom"]))
    msg = str(e.value)
    assert "data.groups.rare_classes" in msg and "did you mean 'melanoma'" in msg
    with pytest.raises(DataError, match="few_below"):
        compute_longtail_stats(labels, ["a", "b"], GroupsConfig(many_above=10, few_below=50))
    st = compute_longtail_stats(np.array([0, 0]), ["a", "b"], GroupsConfig())
    assert math.isinf(st.imbalance_ratio) and st.to_dict()["imbalance_ratio"] is None


# --------------------------------------------------------------------------- calibration


def test_calibration_subset_covers_every_class():
    counts = [1000, 300, 50, 5, 2, 1]
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(6), counts))
    idx = stratified_calibration_indices(labels, 60, rare_class_ids=[4, 5], seed=0)
    assert len(idx) == 60 and len(set(idx.tolist())) == 60
    assert (np.diff(idx) > 0).all()
    got = np.bincount(labels[idx], minlength=6).tolist()
    # equal share 10 each (the small classes give all they have: 5, 2, 1); the 22 slots left go in
    # proportion to the images left (990, 290, 40 -> 16.5, 4.8, 0.7 -> 16, 5, 1 by largest remainder)
    assert got == [26, 15, 11, 5, 2, 1]
    np.testing.assert_array_equal(idx, stratified_calibration_indices(labels, 60, [4, 5], seed=0))
    assert not np.array_equal(idx, stratified_calibration_indices(labels, 60, [4, 5], seed=1))
    assert len(stratified_calibration_indices(labels, 10**6, [5], seed=0)) == len(labels)

    tiny = stratified_calibration_indices(labels, 3, rare_class_ids=[3, 4, 5], seed=0)
    assert sorted(labels[tiny].tolist()) == [3, 4, 5]
    with pytest.raises(DataError, match="rare class"):
        stratified_calibration_indices(labels[labels != 5], 20, [5], seed=0, class_names=list("abcdef"))


# --------------------------------------------------------------------------- transforms and datasets


@pytest.mark.parametrize("augment", ["none", "light", "timm"])
@pytest.mark.parametrize("training", [True, False])
def test_transforms_range_and_shape(augment, training):
    torch.manual_seed(0)
    tf = build_transform(40, augment, training)
    rng = np.random.default_rng(0)
    for size in ((8, 8), (50, 30)):  # an 8x8 digit upscales; a non-square image is cropped
        arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        arr[0, 0] = 255
        x = tf(Image.fromarray(arr))
        assert x.dtype == torch.float32 and x.shape == (3, 40, 40)
        assert x.min() >= 0.0 and x.max() <= 1.0 and x.max() > 0.5
    gray = tf(Image.new("L", (8, 8), 255))
    assert gray.shape == (3, 40, 40)


def test_eval_transform_is_not_normalised():
    x = build_transform(16, "none", training=False)(Image.new("RGB", (8, 8), (255, 0, 51)))
    assert torch.allclose(x[:, 8, 8], torch.tensor([1.0, 0.0, 0.2]), atol=1e-6)
    with pytest.raises(DataError, match="data.augment"):
        build_transform(16, "heavy", training=True)


def test_image_dataset_and_samplers():
    syn = build_splits(DataConfig(source="synthetic", synthetic=SMALL), seed=0)
    ds = ImageDataset(syn.train, build_transform(24, "none", training=False))
    x, y, i = ds[len(ds) - 1]
    assert x.shape == (3, 24, 24) and y == 3 and i == len(ds) - 1
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    xb, yb, ib = next(iter(loader))
    assert xb.shape == (8, 3, 24, 24) and ib.tolist() == list(range(8))

    labels = syn.train.labels  # counts 20, 9, 4, 2
    assert build_sampler(labels, "instance") is None
    bal = build_sampler(labels, "balanced", num_samples=4000, seed=1)
    drawn = Counter(labels[list(bal)].tolist())
    assert all(850 < drawn[c] < 1150 for c in range(4))
    sq = build_sampler(labels, "sqrt", num_samples=4000, seed=1)
    frac = np.bincount(labels[list(sq)], minlength=4) / 4000
    expected = np.sqrt([20, 9, 4, 2]) / np.sqrt([20, 9, 4, 2]).sum()
    assert np.abs(frac - expected).max() < 0.04
    assert list(build_sampler(labels, "balanced", seed=5)) == list(build_sampler(labels, "balanced", seed=5))
    assert len(build_sampler(labels, "sqrt")) == len(labels)
