"""Fashion-MNIST-LT: the generator on tiny synthetic idx files, and the real tree when it was generated."""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fopro_edge.config import DataConfig, load_recipe
from fopro_edge.data import build_splits, longtail_counts

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "fmnist_lt.yaml"


def _generator():
    spec = importlib.util.spec_from_file_location("fmnist_lt", REPO / "benchmarks" / "fmnist_lt.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def _source(folder: Path, train_per_class: int = 30, test_per_class: int = 8) -> Path:
    """The four idx files of a tiny Fashion-MNIST look-alike (4x4 images, pixel 0 = label)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", train_per_class), ("t10k", test_per_class)):
        labels = rng.permutation(np.repeat(np.arange(10), n))
        images = rng.integers(0, 256, (len(labels), 4, 4))
        images[:, 0, 0] = labels
        (folder / f"{prefix}-images-idx3-ubyte.gz").write_bytes(_idx(images))
        (folder / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(_idx(labels))
    return folder


def _deb(path: Path, src: Path) -> Path:
    """A minimal dataset-fashion-mnist .deb (ar archive) holding the idx files of ``src``."""

    def tar(files: dict[str, bytes]) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    control = tar({"./control": b"Package: dataset-fashion-mnist\nVersion: 9.9-test\n"})
    data = tar({f"./usr/share/datasets/fashion-mnist/{p.name}": p.read_bytes() for p in sorted(src.iterdir())})
    out = b"!<arch>\n"
    for name, body in (("debian-binary", b"2.0\n"), ("control.tar.gz", control), ("data.tar.gz", data)):
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n".encode() + body + b"\n" * (len(body) % 2)
    path.write_bytes(out)
    return path


def _run(gen, **kw) -> dict:
    args = ["--seed", "0", "--head", "20", "--imbalance", "10", "--val-per-class", "3"]
    for k, v in kw.items():
        args += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    gen.main(args)
    return json.loads((Path(kw["out"]) / "manifest.json").read_text())


def _digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_generator_writes_a_deterministic_presplit_long_tail(tmp_path):
    gen = _generator()
    src = _source(tmp_path / "src")
    m = _run(gen, source=src, out=tmp_path / "a")
    want = longtail_counts(20, 10.0, 10)
    assert list(m["counts"]["train"].values()) == want and m["counts"]["train"]["0_tshirt_top"] == 20
    assert set(m["counts"]["val"].values()) == {3} and set(m["counts"]["test"].values()) == {8}
    assert m["class_order"]["head_to_tail"][-1] == "9_ankle_boot" and m["source"]["version"] == "unknown"
    assert set(m["source"]["idx_sha256"]) == {p.name for p in src.iterdir()}

    s = build_splits(DataConfig(source="folder", root=str(tmp_path / "a")), seed=0)  # layout: auto detects it
    assert s.plan["layout"] == "presplit" and s.train.counts().tolist() == want
    assert s.class_names == tuple(m["classes"])
    for split in ("train", "val", "test"):  # pixel 0 carries the label: every image sits in its class folder
        images = s.split(split)
        assert all(np.asarray(images.load(i))[0, 0, 0] == images.labels[i] for i in range(len(images)))
    train_files = {Path(i).name for i in s.train.ids()}
    assert not train_files & {Path(i).name for i in s.val.ids()}  # val: training images left over

    b = _run(gen, source=_deb(tmp_path / "fm.deb", src), out=tmp_path / "b")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")  # same tree from the .deb
    assert b["source"]["version"] == "9.9-test" and b["source"]["idx_sha256"] == m["source"]["idx_sha256"]
    c = _run(gen, source=src, out=tmp_path / "c", test_per_class=5, order_seed=1)
    assert set(c["counts"]["test"].values()) == {5}
    assert c["class_order"]["rule"] == "permutation, seed 1" and c["class_order"]["head_to_tail"] != m["classes"]
    assert c["counts"]["train"][c["class_order"]["head_to_tail"][0]] == 20
    with pytest.raises(SystemExit, match="exists and is not empty"):
        _run(gen, source=src, out=tmp_path / "a")
    _run(gen, source=src, out=tmp_path / "a", force=True)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")


@pytest.mark.skipif(not (REPO / "data" / "fmnist_lt" / "manifest.json").is_file(),
                    reason="Fashion-MNIST-LT not generated (python benchmarks/fmnist_lt.py)")
def test_the_generated_benchmark_reads_as_the_recipe_says():
    r = load_recipe(RECIPE)
    s = build_splits(r.data, r.seed)
    assert s.plan["layout"] == "presplit"
    assert s.train.counts().tolist() == [1000, 599, 359, 215, 129, 77, 46, 27, 16, 10]
    assert s.val.counts().tolist() == [50] * 10 and len(s.test) in (3000, 10000)
