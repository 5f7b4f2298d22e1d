"""Data sources: folder trees, CSV splits (generated and the real FoPro-KD ISIC-2019 files),
image decoding and mode conversion, broken files, the digits demo and the synthetic generators."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fopro_edge.config import DemoConfig, SyntheticConfig
from fopro_edge.data import (
    ISIC2019_CLASSES,
    ImageList,
    drop_unreadable,
    find_unreadable,
    load_digits_longtail,
    longtail_counts,
    make_synthetic_csv_split,
    make_synthetic_tree,
    read_csv_split,
    scan_folder_tree,
)
from fopro_edge.errors import ConfigError, DataError

ISIC_SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "research" / "isic2019-splits"
SMALL = SyntheticConfig(num_classes=4, max_per_class=12, imbalance_ratio=6.0, eval_per_class=2, image_size=16)


def _png(path: Path, color=(10, 20, 30), size=(6, 5), mode="RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)
    return path


# --------------------------------------------------------------------------- folder trees


def test_scan_nested_hyperkvasir_tree(tmp_path):
    root = make_synthetic_tree(tmp_path / "labeled-images", SMALL, seed=0)
    want = longtail_counts(12, 6.0, 4)
    assert want == [12, 6, 3, 2]
    assert (root / "lower-gi-tract" / "pathological-findings" / "pattern-00" / "img_0001.png").is_file()
    assert (root / "upper-gi-tract" / "anatomical-landmarks" / "pattern-01" / "img_0006.png").is_file()
    # noise the scanner must skip: hidden files/folders, non-images, images directly in the root
    (root / ".cache").mkdir()
    _png(root / ".cache" / "hidden-class" / "x.png")
    _png(root / "lower-gi-tract" / "pathological-findings" / "pattern-00" / ".thumb.png")
    (root / "upper-gi-tract" / "notes.txt").write_text("not an image")
    _png(root / "stray.png")

    images = scan_folder_tree(root)
    assert images.class_names == ("pattern-00", "pattern-01", "pattern-02", "pattern-03")
    assert images.counts().tolist() == want
    assert len(images) == sum(want)
    p = Path(images.refs[0])
    assert p.parent.name == "pattern-00" and p.is_absolute()
    assert images.id(0) == images.refs[0]
    im = images.load(len(images) - 1)
    assert im.mode == "RGB" and im.size == (16, 16)


def test_scan_extensions_case_insensitive_and_mixed_folder(tmp_path):
    _png(tmp_path / "a" / "one.PNG")
    _png(tmp_path / "a" / "two.JPeG")
    Image.new("RGB", (4, 4)).save(tmp_path / "a" / "three.webp")
    # "b" holds its own images AND a subfolder "c" with images: both are classes
    _png(tmp_path / "b" / "x.bmp")
    _png(tmp_path / "b" / "c" / "y.tif")
    _png(tmp_path / "b" / "c" / "z.tiff")
    images = scan_folder_tree(tmp_path)
    assert images.class_names == ("a", "b", "c")
    assert images.counts().tolist() == [3, 1, 2]


def test_scan_duplicate_leaf_names_names_both_paths(tmp_path):
    _png(tmp_path / "upper" / "polyps" / "1.png")
    _png(tmp_path / "lower" / "polyps" / "1.png")
    with pytest.raises(DataError) as e:
        scan_folder_tree(tmp_path)
    msg = str(e.value)
    assert "'polyps'" in msg and str(tmp_path / "upper" / "polyps") in msg and str(tmp_path / "lower" / "polyps") in msg
    assert "\n" not in msg


def test_scan_empty_and_missing(tmp_path):
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        scan_folder_tree(tmp_path)
    with pytest.raises(DataError, match="not found"):
        scan_folder_tree(tmp_path / "nope")
    assert issubclass(DataError, ConfigError)


# --------------------------------------------------------------------------- CSV splits


def test_synthetic_csv_split_roundtrip(tmp_path):
    paths = make_synthetic_csv_split(tmp_path, SMALL, seed=1)
    train = read_csv_split(paths["train"], paths["image_dir"])
    assert train.class_names == ("pattern-00", "pattern-01", "pattern-02", "pattern-03")  # from finding_name
    assert train.counts().tolist() == [12, 6, 3, 2]
    val = read_csv_split(paths["val"], paths["image_dir"], class_names=train.class_names)
    assert val.counts().tolist() == [2, 2, 2, 2]
    assert all(r.endswith(".jpg") for r in train.refs)
    assert train.load(0).size == (16, 16)
    header = paths["train"].read_text().splitlines()[0]
    assert header == "image,finding_name,finding"


def test_csv_string_labels_and_integer_fallback_names(tmp_path):
    for name in ("a", "b", "c"):
        _png(tmp_path / f"{name}.png")
    (tmp_path / "s.csv").write_text("file,dx\na,mel\nb,nv\nc,mel\n")
    s = read_csv_split(tmp_path / "s.csv", tmp_path, ".png", image_column="file", label_column="dx")
    assert s.class_names == ("mel", "nv")
    assert s.labels.tolist() == [0, 1, 0]
    # integer labels without a known header -> class_<k>
    (tmp_path / "i.csv").write_text("image,finding\na,2\nb,0\nc.png,1\n")
    i = read_csv_split(tmp_path / "i.csv", tmp_path, "png")
    assert i.class_names == ("class_0", "class_1", "class_2")
    assert i.refs[2] == str(tmp_path / "c.png")  # an id that already has an extension keeps it
    # a val label that is not a training class
    (tmp_path / "v.csv").write_text("image,finding\na,3\n")
    with pytest.raises(DataError, match="not a training class"):
        read_csv_split(tmp_path / "v.csv", tmp_path, ".png", class_names=i.class_names)
    (tmp_path / "v2.csv").write_text("file,dx\na,bcc\n")
    with pytest.raises(DataError, match="not in the training split"):
        read_csv_split(tmp_path / "v2.csv", tmp_path, ".png", "file", "dx", class_names=s.class_names)


def test_csv_errors(tmp_path):
    _png(tmp_path / "ISIC_1.jpg")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        read_csv_split(tmp_path / "empty.csv", tmp_path)
    (tmp_path / "header.csv").write_text("image,finding_name,finding\n")
    with pytest.raises(DataError, match="no rows"):
        read_csv_split(tmp_path / "header.csv", tmp_path)
    (tmp_path / "cols.csv").write_text("image,label\nISIC_1,0\n")
    with pytest.raises(DataError) as e:
        read_csv_split(tmp_path / "cols.csv", tmp_path)
    msg = str(e.value)
    assert "cols.csv" in msg and "'finding'" in msg and "image, label" in msg and "data.label_column" in msg
    (tmp_path / "miss.csv").write_text("image,finding\nISIC_1,0\nISIC_2,1\nISIC_3,1\n")
    with pytest.raises(DataError) as e:
        read_csv_split(tmp_path / "miss.csv", tmp_path)
    assert "2 of 3 image files not found" in str(e.value) and "ISIC_2.jpg" in str(e.value)
    skipped = read_csv_split(tmp_path / "miss.csv", tmp_path, on_missing="skip")
    assert len(skipped) == 1 and skipped.class_names == ("class_0", "class_1")
    assert len(read_csv_split(tmp_path / "miss.csv", tmp_path, check_files=False)) == 3


@pytest.mark.parametrize(
    "factor, train_counts",
    [
        ("0.01", [12725, 4372, 3173, 1788, 717, 478, 103, 89]),
        ("0.002", [12725, 4372, 2180, 897, 369, 152, 62, 25]),
    ],
)
def test_real_isic2019_split_csvs(factor, train_counts):
    if not ISIC_SPLITS.is_dir():
        pytest.skip(f"{ISIC_SPLITS} not present")
    img = ISIC_SPLITS / "no-images-here"
    train = read_csv_split(ISIC_SPLITS / f"train_skin1_{factor}.csv", img, check_files=False)
    assert train.class_names == ISIC2019_CLASSES == ("NV", "MEL", "BCC", "BKL", "AK", "SCC", "VASC", "DF")
    assert train.counts().tolist() == train_counts
    assert train.refs[0] == str(img / "ISIC_0000000.jpg")
    names = train.class_names
    val = read_csv_split(ISIC_SPLITS / f"val_skin1_{factor}.csv", img, class_names=names, check_files=False)
    test = read_csv_split(ISIC_SPLITS / f"test_skin1_{factor}.csv", img, class_names=names, check_files=False)
    assert val.counts().tolist() == [50] * 8
    assert test.counts().tolist() == [100] * 8
    with pytest.raises(DataError, match="image files not found"):
        read_csv_split(ISIC_SPLITS / f"val_skin1_{factor}.csv", img)


# --------------------------------------------------------------------------- decoding


def test_mode_conversions(tmp_path):
    cases = {}
    cases["l.png"] = Image.new("L", (3, 3), 77)
    la = Image.new("LA", (3, 3), (200, 0))  # fully transparent -> black
    cases["la.png"] = la
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(255, 0, 0, 255), (255, 0, 0, 0), (0, 255, 0, 128)])
    cases["rgba.png"] = rgba
    p = Image.new("P", (2, 1))
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putdata([0, 1])
    cases["p.png"] = p
    cases["i16.png"] = Image.fromarray(np.array([[0, 32768, 65535, 1000]], dtype=np.uint16))
    cases["i32.tif"] = Image.fromarray(np.array([[0, 65535, 257]], dtype=np.int32))
    cases["cmyk.jpg"] = Image.new("CMYK", (4, 4), (0, 255, 255, 0))
    for name, im in cases.items():
        im.save(tmp_path / name)
    images = ImageList([str(tmp_path / n) for n in cases], np.zeros(len(cases), np.int64), ("x",))
    out = {n: images.load(i) for i, n in enumerate(cases)}
    assert all(im.mode == "RGB" for im in out.values())
    a = {n: np.asarray(im) for n, im in out.items()}
    assert a["l.png"].dtype == np.uint8 and (a["l.png"] == 77).all()
    assert (a["la.png"] == 0).all()
    assert a["rgba.png"][0, 0].tolist() == [255, 0, 0]
    assert a["rgba.png"][0, 1].tolist() == [0, 0, 0]
    assert a["rgba.png"][0, 2].tolist() == [0, 128, 0]
    assert a["p.png"][0].tolist() == [[10, 20, 30], [200, 100, 50]]
    assert Image.open(tmp_path / "i16.png").mode == "I;16"
    assert a["i16.png"][0, :, 0].tolist() == [0, 128, 255, 4]  # full 16-bit range -> 8 bit, not clipped
    assert a["i32.tif"][0, :, 0].tolist() == [0, 255, 1]
    r, g, b = a["cmyk.jpg"][1, 1].tolist()
    assert r > 200 and g < 50 and b < 50


def test_in_memory_arrays():
    gray = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    images = ImageList(gray, [0, 1], ("a", "b"), id_prefix="digits", source_ids=[7, 9])
    im = images.load(1)
    assert im.mode == "RGB" and np.asarray(im)[0, 0].tolist() == [9, 9, 9]
    assert images.id(1) == "digits:9"
    sub = images.subset([1])
    assert sub.id(0) == "digits:9" and sub.labels.tolist() == [1]
    rgba = np.zeros((1, 2, 2, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    assert np.asarray(ImageList(rgba, [0], ("a",)).load(0))[0, 0].tolist() == [255, 0, 0]
    with pytest.raises(ValueError):
        ImageList(gray, [0, 2], ("a", "b"))
    with pytest.raises(ValueError):
        ImageList(gray.astype(np.float32), [0, 1], ("a", "b"))


def _broken_files(tmp_path: Path) -> dict[str, Path]:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    files = {
        "zero": tmp_path / "zero.jpg",
        "truncated": tmp_path / "truncated.jpg",
        "text": tmp_path / "text.jpg",
    }
    files["zero"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["text"].write_text("this is not an image\n")
    return files


@pytest.mark.parametrize("kind", ["zero", "truncated", "text"])
def test_broken_files_raise_data_error_naming_the_file(tmp_path, kind):
    path = _broken_files(tmp_path)[kind]
    images = ImageList([str(path)], [0], ("a",))
    with pytest.raises(DataError) as e:
        images.load(0)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "cannot read image" in msg and "data.bad_images: skip" in msg
    assert "\n" not in msg
    if kind == "zero":
        assert "zero-byte" in msg


def test_bad_image_policy(tmp_path):
    files = _broken_files(tmp_path)
    good = _png(tmp_path / "good.png")
    refs = [str(files["zero"]), str(good), str(files["truncated"]), str(files["text"])]
    images = ImageList(refs, [0, 0, 1, 1], ("a", "b"))
    assert find_unreadable(images, decode=True) == [0, 2, 3]
    assert find_unreadable(images, decode=False) == [0]
    kept = drop_unreadable(images, "skip")
    assert kept.refs == [str(good)] and kept.class_names == ("a", "b")
    with pytest.raises(DataError, match="zero-byte"):
        drop_unreadable(images, "error")


# --------------------------------------------------------------------------- digits demo


def test_digits_longtail_demo():
    cfg = DemoConfig(max_per_class=150, imbalance_ratio=30.0, eval_per_class=12)
    train, val, test = load_digits_longtail(cfg, seed=0)
    assert train.class_names == tuple(f"digit_{k}" for k in range(10))
    counts = train.counts()
    assert sorted(counts.tolist(), reverse=True) == [150, 102, 70, 48, 33, 22, 15, 10, 7, 5]
    assert val.counts().tolist() == [12] * 10 and test.counts().tolist() == [12] * 10
    ids = [set(s.ids()) for s in (train, val, test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert train.id(0).startswith("digits:")
    im = np.asarray(train.load(0))
    assert im.shape == (8, 8, 3) and im.max() > 200  # 0..16 scaled to 0..255

    again = load_digits_longtail(cfg, seed=0)
    assert again[0].ids() == train.ids() and again[1].ids() == val.ids()
    other = load_digits_longtail(cfg, seed=1)[0].counts()
    assert sorted(other.tolist(), reverse=True) == sorted(counts.tolist(), reverse=True)
    assert other.tolist() != counts.tolist()  # the tail classes depend on the seed


def test_synthetic_patterns_are_class_specific():
    from fopro_edge.data import synthetic_image

    rng = np.random.default_rng(0)
    imgs = np.stack([[synthetic_image(k, 5, 32, rng) for _ in range(8)] for k in range(5)]).astype(np.float64)
    means = imgs.mean(axis=(2, 3))  # class × image × channel mean colour
    centroids = means.mean(axis=1)
    nearest = np.argmin(((means[:, :, None, :] - centroids[None, None]) ** 2).sum(-1), axis=-1)
    assert (nearest == np.arange(5)[:, None]).all()  # a nearest-mean-colour classifier is already perfect
    assert imgs.std() > 20
