"""Fashion-MNIST-LT: a long-tailed benchmark built offline from the Debian package dataset-fashion-mnist.

Writes a pre-split class-per-folder PNG tree (the layout ``data.layout: presplit`` reads as given)
and ``OUT/manifest.json``:

- train: an exponential profile over the 10 classes, ``n_r = floor(head * imbalance^(-r/9))`` for
  the class of rank r (1000 down to 10 by default: 1000, 599, 359, 215, 129, 77, 46, 27, 16, 10),
  drawn from the official training set. Ranks follow the official label order (rank r = label r:
  T-shirt/top is the head, Ankle boot the tail), or a fixed permutation with ``--order-seed``;
- val: ``--val-per-class`` (50) per class from the official training images left over;
- test: the official balanced test set (1000 per class), or a fixed ``--test-per-class`` subset.

Class folders are ``<label>_<name>`` (``0_tshirt_top`` ... ``9_ankle_boot``), so the loader's
sorted class ids are the official labels; files are ``<source>_<index>.png`` with the image's index
in its idx file (``train_00017.png``, ``t10k_00003.png``). Same inputs and seed, same tree.

Source (MIT, Zalando SE): ``apt-get download dataset-fashion-mnist`` (no root needed), then either
pass the .deb itself or unpack it with ``dpkg -x FILE.deb DIR`` and pass DIR; an installed package
is found at /usr/share/datasets/fashion-mnist.

    apt-get download dataset-fashion-mnist
    python benchmarks/fmnist_lt.py --source dataset-fashion-mnist_*.deb --out data/fmnist_lt
    fopro-edge distill recipes/fmnist_lt.yaml
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import math
import os
import shutil
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PACKAGE = "dataset-fashion-mnist"
INSTALLED = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CLASSES = ("tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Source:
    folder: Path  # holds the four idx .gz files
    version: str  # the Debian package version, or "unknown"
    deb_sha256: str | None = None


# --------------------------------------------------------------------------- reading the source


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzip or raw) as a uint8 array: N labels, or N×rows×cols images."""
    raw = path.read_bytes()
    data = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    if len(data) < 8 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte idx file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise SystemExit(f"{path}: {len(data) - offset} bytes of data, the header says {dims}")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ar_members(deb: Path) -> dict[str, bytes]:
    """The members of a .deb (an ar archive): debian-binary, control.tar.*, data.tar.*."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise SystemExit(f"{deb}: not a .deb (ar) archive")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        name = data[pos:pos + 16].decode().strip().rstrip("/")
        size = int(data[pos + 48:pos + 58].decode().strip())
        members[name] = data[pos + 60:pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def unpack_deb(deb: Path, into: Path) -> Source:
    """Extract the idx files and the version of a dataset-fashion-mnist .deb (no dpkg needed)."""
    members = ar_members(deb)
    control = next((v for k, v in members.items() if k.startswith("control.tar")), None)
    payload = next((v for k, v in members.items() if k.startswith("data.tar")), None)
    if control is None or payload is None:
        raise SystemExit(f"{deb}: no control.tar/data.tar member (not a Debian package)")
    with tarfile.open(fileobj=io.BytesIO(control), mode="r:*") as tar:
        fields = dict(
            line.split(": ", 1) for line in tar.extractfile("./control").read().decode().splitlines() if ": " in line
        )
    if fields.get("Package") != PACKAGE:
        raise SystemExit(f"{deb}: package {fields.get('Package')!r}, expected {PACKAGE}")
    wanted = set(IDX_FILES.values())
    with tarfile.open(fileobj=io.BytesIO(payload), mode="r:*") as tar:
        for m in tar.getmembers():
            if m.isfile() and os.path.basename(m.name) in wanted:
                (into / os.path.basename(m.name)).write_bytes(tar.extractfile(m).read())
    return Source(into, fields.get("Version", "unknown"), sha256(deb))


def find_source(path: Path | None, tmp: Path) -> Source:
    """A .deb, a folder with the idx files, or an unpacked package (``dpkg -x`` output); default: installed."""
    path = path or INSTALLED
    if path.is_file():
        return unpack_deb(path, tmp)
    if not path.is_dir():
        raise SystemExit(f"{path}: not found (apt-get download {PACKAGE}, then --source the .deb)")
    if not (path / IDX_FILES["train_images"]).is_file():
        found = sorted(path.rglob(IDX_FILES["train_images"]))
        if not found:
            raise SystemExit(f"{path}: no {IDX_FILES['train_images']} in it (pass the .deb or its dpkg -x folder)")
        path = found[0].parent
    return Source(path, _changelog_version(path))


def _changelog_version(folder: Path) -> str:
    """The package version from usr/share/doc/<package>/changelog.Debian.gz beside the data."""
    log = folder.parent.parent / "doc" / PACKAGE / "changelog.Debian.gz"
    if log.is_file():
        first = gzip.decompress(log.read_bytes()).decode().split("\n", 1)[0]
        if "(" in first and ")" in first:
            return first[first.index("(") + 1:first.index(")")]
    return "unknown"


# --------------------------------------------------------------------------- the long tail


def longtail_counts(head: int, imbalance: float, num: int) -> list[int]:
    """Exponential profile (CIFAR-LT's): rank r gets floor(head * imbalance^(-r/(num-1))), at least 1."""
    return [max(1, math.floor(head * imbalance ** (-r / (num - 1)) + 1e-9)) for r in range(num)]


def class_order(order_seed: int | None) -> list[int]:
    """Labels from head to tail: the official label order, or a fixed permutation."""
    if order_seed is None:
        return list(range(len(CLASSES)))
    return np.random.default_rng(order_seed).permutation(len(CLASSES)).tolist()


def select(
    train_labels: np.ndarray, test_labels: np.ndarray, *, head: int, imbalance: float, val_per_class: int,
    test_per_class: int | None, seed: int, order: list[int],
) -> dict[str, dict[int, np.ndarray]]:
    """Per split and label, the sorted indices into the official train or test arrays."""
    rng = np.random.default_rng(seed)
    want = dict(zip(order, longtail_counts(head, imbalance, len(order))))
    out: dict[str, dict[int, np.ndarray]] = {s: {} for s in SPLITS}
    for label in range(len(CLASSES)):
        pool = rng.permutation(np.flatnonzero(train_labels == label))
        n = want[label]
        if n + val_per_class > len(pool):
            raise SystemExit(f"class {CLASSES[label]}: {len(pool)} training images, {n} + {val_per_class} wanted")
        out["train"][label] = np.sort(pool[:n])
        out["val"][label] = np.sort(pool[n:n + val_per_class])
        test = np.flatnonzero(test_labels == label)
        if test_per_class is not None and test_per_class < len(test):
            test = np.sort(rng.permutation(test)[:test_per_class])
        out["test"][label] = test
    return out


# --------------------------------------------------------------------------- writing


def folder_name(label: int) -> str:
    return f"{label}_{CLASSES[label]}"


def write_tree(out: Path, images: dict[str, np.ndarray], chosen: dict[str, dict[int, np.ndarray]]) -> None:
    from PIL import Image

    for split, per_class in chosen.items():
        source = "t10k" if split == "test" else "train"
        pixels = images["test" if split == "test" else "train"]
        for label, idx in per_class.items():
            folder = out / split / folder_name(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in idx.tolist():
                Image.fromarray(pixels[i], "L").save(folder / f"{source}_{i:05d}.png", optimize=False)


def manifest(src: Source, args: argparse.Namespace, order: list[int], chosen: dict[str, dict[int, np.ndarray]]) -> dict:
    return {
        "dataset": "Fashion-MNIST-LT",
        "generator": "benchmarks/fmnist_lt.py",
        "layout": "OUT/{train,val,test}/<label>_<name>/<source>_<index>.png (data.layout: presplit)",
        "source": {
            "package": PACKAGE,
            "version": src.version,
            "deb_sha256": src.deb_sha256,
            "license": "MIT (Expat), Copyright 2017 Zalando SE",
            "idx_sha256": {name: sha256(src.folder / name) for name in IDX_FILES.values()},
        },
        "parameters": {
            "seed": args.seed,
            "head": args.head,
            "imbalance": args.imbalance,
            "val_per_class": args.val_per_class,
            "test_per_class": args.test_per_class,
            "order_seed": args.order_seed,
        },
        "train_profile": "exponential: rank r gets floor(head * imbalance^(-r/9))",
        "class_order": {
            "rule": "official label order" if args.order_seed is None else f"permutation, seed {args.order_seed}",
            "head_to_tail": [folder_name(label) for label in order],
        },
        "classes": [folder_name(label) for label in range(len(CLASSES))],
        "counts": {split: {folder_name(k): len(v) for k, v in per.items()} for split, per in chosen.items()},
        "totals": {split: sum(len(v) for v in per.values()) for split, per in chosen.items()},
    }


def generate(args: argparse.Namespace) -> dict:
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        mark = out / "manifest.json"
        if not args.force:
            raise SystemExit(f"{out}: exists and is not empty (--force replaces an earlier Fashion-MNIST-LT tree)")
        if not mark.is_file() or json.loads(mark.read_text()).get("dataset") != "Fashion-MNIST-LT":
            raise SystemExit(f"{out}: not a Fashion-MNIST-LT tree (no manifest.json of this generator); not replaced")
    with tempfile.TemporaryDirectory() as tmp:
        src = find_source(args.source, Path(tmp))
        arrays = {k: read_idx(src.folder / name) for k, name in IDX_FILES.items()}
        order = class_order(args.order_seed)
        chosen = select(
            arrays["train_labels"], arrays["test_labels"], head=args.head, imbalance=args.imbalance,
            val_per_class=args.val_per_class, test_per_class=args.test_per_class, seed=args.seed, order=order,
        )
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        write_tree(partial, {"train": arrays["train_images"], "test": arrays["test_images"]}, chosen)
        info = manifest(src, args, order, chosen)
    (partial / "manifest.json").write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial.rename(out)
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, help=f"the .deb, its dpkg -x folder, or the idx folder (default {INSTALLED})")
    p.add_argument("--out", type=Path, default=Path("data/fmnist_lt"))
    p.add_argument("--seed", type=int, default=0, help="which official images are drawn (default 0)")
    p.add_argument("--head", type=int, default=1000, help="training images of the head class")
    p.add_argument("--imbalance", type=float, default=100.0, help="head / tail training images")
    p.add_argument("--val-per-class", type=int, default=50)
    p.add_argument("--test-per-class", type=int, default=None, help="a fixed subset, e.g. 300 (default: all 1000)")
    p.add_argument("--order-seed", type=int, default=None, help="permute the head-to-tail order (default: label order)")
    p.add_argument("--force", action="store_true", help="replace an earlier Fashion-MNIST-LT tree at --out")
    args = p.parse_args(argv)
    info = generate(args)
    print(f"{args.out}: train {info['totals']['train']}, val {info['totals']['val']}, test {info['totals']['test']} "
          f"images; {PACKAGE} {info['source']['version']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
