"""The malformed-input corpus: bad recipes, bad command lines and bad data.

Every case runs through the real command group (``fopro_edge.cli.cli`` with click's standalone
mode, as ``fopro-edge`` runs it) and must end with exit code 2 (3 for a missing package) and
exactly one stderr line, ``error: ...``, that names the file, the dotted key or the argument and
says what to do, with no traceback.

- recipes: ``tests/corpus/recipes/*.yaml``, each with ``# what:`` and ``# expect:`` header lines;
- command lines (``CLI_CASES``) and generated data (``DATA_CASES``) below.

``docs/errors.md`` carries the table of every case and the message it gets; the last test checks
that it is in sync. Regenerate it with::

    UPDATE_ERRORS_DOC=1 python -m pytest tests/test_reliability_corpus.py -q
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fopro_edge.cli import _register, cli

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "tests" / "corpus" / "recipes"
SMOKE = REPO / "recipes" / "smoke_synthetic.yaml"
DOC = REPO / "docs" / "errors.md"
DOC_START, DOC_END = "<!-- corpus:start -->", "<!-- corpus:end -->"

_register()


@dataclass(frozen=True)
class Case:
    id: str
    group: str  # recipe | cli | data | export
    what: str
    args: tuple[str, ...]  # placeholders: {smoke} {tmp} {run} {recipe}
    expect: str  # a substring of the message
    names: str = ""  # what the message must name (file, key or argument); placeholders allowed
    code: int = 2


# --------------------------------------------------------------------------- the cases


def _recipe_cases() -> list[Case]:
    cases = []
    for path in sorted(CORPUS.glob("*.yaml")):
        header = dict(
            re.match(r"#\s*(what|expect):\s*(.*)", line).groups()
            for line in path.read_text(encoding="utf-8").splitlines()
            if re.match(r"#\s*(what|expect):", line)
        )
        assert {"what", "expect"} <= set(header), f"{path.name}: needs '# what:' and '# expect:' header lines"
        cases.append(Case(f"recipe/{path.stem}", "recipe", header["what"], ("distill", str(path), "--out", "{tmp}/out/x"),
                          header["expect"], names=str(path)))
    return cases


S = "{smoke}"
CLI_CASES = [
    Case("cli/no-recipe", "cli", "no recipe argument", ("distill",), "Missing argument 'RECIPE'", "RECIPE"),
    Case("cli/recipe-not-found", "cli", "recipe file that does not exist", ("distill", "{tmp}/nope.yaml"),
         "recipe file not found", "{tmp}/nope.yaml"),
    Case("cli/recipe-is-a-folder", "cli", "a folder as the recipe", ("distill", "{tmp}"), "is a directory", "RECIPE"),
    Case("cli/set-without-value", "cli", "--set with nothing after it", ("distill", S, "--set"),
         "Option '--set' requires an argument", "--set"),
    Case("cli/set-without-equals", "cli", "--set without '='", ("distill", S, "--set", "distill.epochs"),
         "expected key=value, e.g. --set distill.epochs=5", "--set"),
    Case("cli/set-empty-key", "cli", "--set with an empty key", ("distill", S, "--set", "=3"), "empty key before '='", "--set"),
    Case("cli/set-misspelt-key", "cli", "--set of a misspelt key", ("distill", S, "--set", "distill.epoch=3"),
         "distill.epoch: unknown key (did you mean 'epochs'?)", S),
    Case("cli/set-out-of-range", "cli", "--set of an out-of-range value", ("distill", S, "--set", "distill.epochs=-1"),
         "distill.epochs: -1 is out of range", S),
    Case("cli/set-wrong-type", "cli", "--set of a wrong type", ("distill", S, "--set", "data.batch_size=big"),
         "data.batch_size: expected an integer, got 'big'", S),
    Case("cli/set-into-a-value", "cli", "--set below a value that is not a section",
         ("distill", S, "--set", "distill.method.name=x"), "'method' is not a section", "--set"),
    Case("cli/unknown-option", "cli", "unknown option", ("distill", S, "--epochs", "3"), "No such option", "--epochs"),
    Case("cli/unknown-command", "cli", "unknown command", ("train", S), "No such command 'train'", "train"),
    Case("cli/unknown-device", "cli", "unknown --device", ("distill", S, "--device", "tpu"), "unknown device 'tpu'", "--device"),
    Case("cli/out-is-a-file", "cli", "--out names a file", ("distill", S, "--out", "{tmp}/a_file"), "is a file", "--out"),
    Case("cli/out-not-creatable", "cli", "--out below a file (cannot be created)",
         ("distill", S, "--out", "{tmp}/a_file/run"), "cannot create", "--out"),
    Case("cli/out-holds-a-run", "cli", "--out holds an earlier run (no --resume)", ("distill", S, "--out", "{tmp}/held_run"),
         "already holds a run (use --resume to continue it", "--out"),
    Case("cli/resume-nothing", "cli", "--resume with no earlier run", ("distill", S, "--resume"),
         "--resume: no earlier run of 'smoke_synthetic'", "--resume"),
    Case("cli/resume-corrupt-checkpoint", "cli", "--resume from a corrupt checkpoint",
         ("distill", S, "--resume", "--out", "{tmp}/corrupt_run"), "is not a loadable fopro-edge checkpoint",
         "{tmp}/corrupt_run/checkpoints/last.pt"),
    Case("cli/resume-code-carrying-checkpoint", "cli", "--resume from a checkpoint that carries code (refused, not run)",
         ("distill", S, "--resume", "--out", "{tmp}/evil_run"), "only tensors and plain data are accepted",
         "{tmp}/evil_run/checkpoints/last.pt"),
    Case("ablate/unknown-method", "cli", "ablate: a method that is not a distill.method",
         ("ablate", S, "--methods", "bsm,fopr", "--out", "{tmp}/ablation"), "'fopr' is not a distill.method", "--methods"),
    Case("ablate/seed-not-an-integer", "cli", "ablate: a seed that is not an integer",
         ("ablate", S, "--seeds", "0,one", "--out", "{tmp}/ablation"), "'one' is not an integer", "--seeds"),
    Case("ablate/baseline-not-listed", "cli", "ablate: a baseline that is not among the methods",
         ("ablate", S, "--methods", "ce,fopro", "--out", "{tmp}/ablation"), "'bsm' is not among --methods", "--baseline"),
    Case("ablate/set-per-cell-key", "cli", "ablate: --set of a key every cell sets itself",
         ("ablate", S, "--set", "seed=3", "--out", "{tmp}/ablation"), "is set per cell by --methods/--seeds", "--set"),
    Case("ablate/report-only-unfinished", "cli", "ablate --report-only before the cells are finished",
         ("ablate", S, "--methods", "ce,bsm", "--seeds", "0", "--report-only", "--out", "{tmp}/ablation"),
         "cell(s) not finished", "--out"),
    Case("ablate/unknown-device", "cli", "ablate: unknown --device", ("ablate", S, "--device", "tpu"),
         "unknown device 'tpu'", "--device"),
    Case("probe/unknown-device", "cli", "probe: unknown --device", ("probe", S, "--device", "tpu"),
         "unknown device 'tpu'", "--device"),
    Case("probe/out-holds-a-check", "cli", "probe: --out already holds a teacher check",
         ("probe", S, "--out", "{tmp}/probed"), "already holds a teacher check", "--out"),
]

R = "{run}"
EXPORT_CASES = [
    Case("export/no-target", "export", "no --target", ("export", "--run", R), "Missing option '--target'", "--target"),
    Case("export/unknown-target", "export", "unknown target", ("export", "--target", "tensorflow", "--run", R),
         "'tensorflow' is not one of", "--target"),
    Case("export/onnx-fp16", "export", "precision the target does not support (onnx: fp32 only)",
         ("export", "--target", "onnx", "--run", R, "--precision", "fp16"), "--precision: 'fp16' is not available for --target onnx", "--precision"),
    Case("export/onnxruntime-fp16", "export", "precision the target does not support (onnxruntime: fp32, int8)",
         ("export", "--target", "onnxruntime", "--run", R, "--precision", "fp16"),
         "--precision: 'fp16' is not available for --target onnxruntime (choose one of: fp32, int8)", "precision"),
    Case("export/unknown-precision", "export", "unknown precision", ("export", "--target", "onnx", "--run", R, "--precision", "int4"),
         "'int4' is not one of", "--precision"),
    Case("export/no-source", "export", "neither --run nor --checkpoint", ("export", "--target", "onnx"),
         "give exactly one", "--run/--checkpoint"),
    Case("export/run-not-found", "export", "run directory that does not exist",
         ("export", "--target", "onnx", "--run", "{tmp}/no_such_run"), "not found", "{tmp}/no_such_run"),
    Case("export/not-a-run", "export", "a folder that is not a run directory", ("export", "--target", "onnx", "--run", "{tmp}/empty_dir"),
         "holds no checkpoints/best.pt", "{tmp}/empty_dir"),
    Case("export/not-a-checkpoint", "export", "a tensor file that is not a fopro-edge checkpoint",
         ("export", "--target", "onnx", "--checkpoint", "{tmp}/ckpt/plain_tensors.pt"), "is not a fopro-edge checkpoint",
         "{tmp}/ckpt/plain_tensors.pt"),
    Case("export/code-carrying-checkpoint", "export", "a checkpoint that carries code (refused, not run)",
         ("export", "--target", "onnx", "--checkpoint", "{tmp}/ckpt/evil.pt"), "only tensors and plain data are accepted",
         "{tmp}/ckpt/evil.pt"),
    Case("export/other-architecture", "export", "checkpoint whose weights are another architecture's",
         ("export", "--target", "onnx", "--checkpoint", "{tmp}/ckpt/other_arch.pt"), "weights do not fit 'test_resnet'",
         "{tmp}/ckpt/other_arch.pt"),
    Case("export/other-class-count", "export", "checkpoint whose class list does not match its weights",
         ("export", "--target", "onnx", "--checkpoint", "{tmp}/ckpt/other_classes.pt"), "weights do not fit",
         "{tmp}/ckpt/other_classes.pt"),
    Case("export/data-changed", "export", "checkpoint whose recipe's data no longer has its classes",
         ("export", "--target", "onnx", "--checkpoint", "{tmp}/ckpt/data_changed.pt"), "did the dataset change since training?",
         "{tmp}/ckpt/data_changed.pt"),
    Case("export/set-misspelt-key", "export", "--set of a misspelt profile key",
         ("export", "--target", "onnxruntime", "--run", R, "--set", "calibration.sise=10"), "calibration.sise: unknown key (did you mean 'size'?)",
         "calibration.sise"),
    Case("export/openvino-calibration-method", "export", "an option the target does not use",
         ("export", "--target", "openvino", "--run", R, "--calibration-method", "entropy"),
         "applies to onnxruntime and tensorrt", "--calibration-method"),
    Case("export/build-engine-not-tensorrt", "export", "--build-engine for a target other than tensorrt",
         ("export", "--target", "onnx", "--run", R, "--build-engine"), "only applies to --target tensorrt", "--build-engine"),
    Case("export/set-bad-choice", "export", "--set of a bad gate split", ("export", "--target", "onnx", "--run", R, "--set", "check.split=train"),
         "check.split: 'train' is not allowed", "check.split"),
    Case("export/set-out-of-range", "export", "--set of an out-of-range opset", ("export", "--target", "onnx", "--run", R, "--set", "opset=9"),
         "opset: 9 is out of range", "opset"),
    Case("export/gate-threshold-out-of-range", "export", "gate threshold above 1",
         ("export", "--target", "onnx", "--run", R, "--max-bacc-drop", "1.5"), "1.5 is out of range", "max_balanced_accuracy_drop"),
    Case("export/profile-not-found", "export", "--profile that does not exist",
         ("export", "--target", "onnx", "--run", R, "--profile", "{tmp}/no_profile.yaml"), "export profile file not found",
         "{tmp}/no_profile.yaml"),
]

DATA_CASES = [
    Case("data/empty-dataset", "data", "class folders without any image", (), "no images found", "{tmp}/data/empty"),
    Case("data/one-class", "data", "a dataset with one class", (), "a classifier needs at least 2", "{tmp}/data/one_class"),
    Case("data/class-without-train-images", "data", "a class with validation but no training images (CSV)", (),
         "class 'class_2' has val images but no training images", "{tmp}/data/gap/train.csv"),
    Case("data/all-images-of-a-class-unreadable", "data", "every image of a class unreadable, data.bad_images: skip", (),
         "class 'b' has no training images", "{tmp}/data/all_bad"),
    Case("data/val-class-not-in-train", "data", "a validation class absent from training (CSV)", (),
         "are not in the training split", "{tmp}/data/absent/val.csv"),
    Case("data/duplicate-class-names", "data", "two class folders with the same name", (), "class name 'lesion' is used by two folders",
         "{tmp}/data/dup"),
    Case("data/empty-val-split", "data", "too few images for a validation split", (), "the val split is empty", "{tmp}/data/tiny"),
    Case("data/csv-missing-column", "data", "CSV without the label column", (), "column 'finding' not found", "data.label_column"),
    Case("data/csv-images-missing", "data", "CSV rows whose image files are missing", (), "2 of 8 image files not found",
         "{tmp}/data/missing/train.csv"),
    Case("data/csv-header-only", "data", "CSV with a header and no rows", (), "has a header but no rows", "{tmp}/data/header_only/train.csv"),
    Case("data/csv-not-utf8", "data", "CSV that is not UTF-8 text", (), "not a UTF-8 text CSV", "{tmp}/data/latin1/train.csv"),
    Case("data/zero-byte-image", "data", "zero-byte image, data.bad_images: error", (), "zero-byte file",
         "{tmp}/data/zero_byte/a/img_0.png"),
    Case("data/unknown-rare-class", "data", "rare class that is not in the data", (), "unknown class 'zebra'",
         "data.groups.rare_classes"),
    Case("data/kfold-class-smaller-than-k", "data", "k-fold with a class of fewer images than folds", (),
         "data.folds: class 'b' has 2 image(s), fewer than data.folds = 3", "{tmp}/data/kfold"),
    Case("data/presplit-class-not-in-train", "data", "pre-split tree with a test class that has no train folder", (),
         "class 'c' has no folder in", "{tmp}/data/presplit/test"),
    Case("data/split-file-unknown-path", "data", "split file row naming an image that is not in the tree", (),
         "line 3: 'a/gone.png' is not an image under data.root", "{tmp}/data/split_unknown.csv"),
    Case("data/split-file-image-not-listed", "data", "split file that leaves an image of the tree out", (),
         "1 image(s) under data.root are not listed, first: b/img_3.png", "{tmp}/data/split_unlisted.csv"),
    Case("data/split-file-fold-not-in-file", "data", "data.fold that is not a fold of the split file", (),
         "data.fold: 2 is not a fold of this file (folds: 0, 1)", "{tmp}/data/split_folds.csv"),
]

CASES = _recipe_cases() + CLI_CASES + DATA_CASES + EXPORT_CASES


def test_the_corpus_is_large_enough():
    assert len({c.id for c in CASES}) == len(CASES)
    assert len(_recipe_cases()) >= 30 and len(CASES) >= 60


# --------------------------------------------------------------------------- the environment


def _png(path: Path, seed: int, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(a).convert(mode).save(path)


def _tree(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    for k, (name, n) in enumerate(counts.items()):
        for j in range(n):
            _png(root / name / f"img_{j}.png", seed + 100 * k + j)


def _csv(path: Path, header: list[str], rows: list[list[str]], encoding: str = "utf-8") -> None:
    with path.open("w", newline="", encoding=encoding) as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _recipe(path: Path, data: str) -> None:
    path.write_text(
        "name: data_case\n"
        f"data:\n  image_size: 16\n  batch_size: 4\n  num_workers: 0\n  augment: none\n{data}"
        "teacher: {model: test_efficientnet}\nstudent: {model: test_resnet}\n"
        "distill: {method: ce, epochs: 1}\nruntime: {device: cpu, threads: 1}\n",
        encoding="utf-8",
    )


def _make_data(tmp: Path) -> None:
    d = tmp / "data"
    folder = "  source: folder\n  root: {root}\n"
    csv_src = "  source: csv\n  root: {root}/images\n  train_csv: {root}/train.csv\n"

    for name in ("a", "b"):
        (d / "empty" / name).mkdir(parents=True)
        (d / "empty" / name / "notes.txt").write_text("no images here\n")
    _recipe(d / "empty-dataset.yaml", folder.format(root="./empty"))

    _tree(d / "one_class", {"only": 6})
    _recipe(d / "one-class.yaml", folder.format(root="./one_class"))

    _tree(d / "all_bad", {"a": 6})
    for j in range(4):
        (d / "all_bad" / "b").mkdir(parents=True, exist_ok=True)
        (d / "all_bad" / "b" / f"img_{j}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(40)))
    _recipe(d / "all-images-of-a-class-unreadable.yaml", folder.format(root="./all_bad") + "  bad_images: skip\n")

    _tree(d / "dup" / "upper", {"lesion": 3})
    _tree(d / "dup" / "lower", {"lesion": 3, "normal": 3})
    _recipe(d / "duplicate-class-names.yaml", folder.format(root="./dup"))

    _tree(d / "tiny", {"a": 2, "b": 2})
    _recipe(d / "empty-val-split.yaml", folder.format(root="./tiny"))

    _tree(d / "zero_byte", {"a": 4, "b": 4})
    (d / "zero_byte" / "a" / "img_0.png").write_bytes(b"")
    _recipe(d / "zero-byte-image.yaml", folder.format(root="./zero_byte"))

    _tree(d / "rare", {"a": 6, "b": 6})
    _recipe(d / "unknown-rare-class.yaml", folder.format(root="./rare") + "  groups: {rare_classes: [zebra]}\n")

    _tree(d / "kfold", {"a": 6, "b": 2})
    _recipe(d / "kfold-class-smaller-than-k.yaml", folder.format(root="./kfold") + "  folds: 3\n")

    _tree(d / "presplit" / "train", {"a": 4, "b": 4})
    _tree(d / "presplit" / "test", {"a": 2, "b": 2, "c": 2})
    _recipe(d / "presplit-class-not-in-train.yaml", folder.format(root="./presplit"))

    _tree(d / "listed", {"a": 4, "b": 4})
    listed = [f"{c}/img_{j}.png" for c in "ab" for j in range(4)]
    _csv(d / "split_unknown.csv", ["path", "split"], [[listed[0], "train"], ["a/gone.png", "test"]]
         + [[p, "train"] for p in listed[1:]])
    _recipe(d / "split-file-unknown-path.yaml", folder.format(root="./listed") + "  split_file: ./split_unknown.csv\n")
    _csv(d / "split_unlisted.csv", ["path", "split"], [[p, "train"] for p in listed[:-1]])
    _recipe(d / "split-file-image-not-listed.yaml", folder.format(root="./listed") + "  split_file: ./split_unlisted.csv\n")
    _csv(d / "split_folds.csv", ["path", "fold"], [[p, str(j % 2)] for j, p in enumerate(listed)])
    _recipe(d / "split-file-fold-not-in-file.yaml",
            folder.format(root="./listed") + "  split_file: ./split_folds.csv\n  fold: 2\n")

    # CSV sources: images/<id>.png, labels in column `finding`
    def images(root: Path, n: int) -> list[str]:
        ids = [f"IMG_{i:03d}" for i in range(n)]
        for i, image_id in enumerate(ids):
            _png(root / "images" / f"{image_id}.png", i)
        return ids

    gap = d / "gap"
    ids = images(gap, 16)
    _csv(gap / "train.csv", ["image", "finding"], [[i, str(k)] for i, k in zip(ids[:12], [0, 1, 3] * 4)])
    _csv(gap / "val.csv", ["image", "finding"], [[i, str(k)] for i, k in zip(ids[12:], [0, 1, 2, 3])])
    _recipe(d / "class-without-train-images.yaml",
            csv_src.format(root="./gap") + "  val_csv: ./gap/val.csv\n  image_ext: .png\n")

    absent = d / "absent"
    ids = images(absent, 15)
    _csv(absent / "train.csv", ["image", "finding"], [[i, n] for i, n in zip(ids[:12], ["cat", "dog"] * 6)])
    _csv(absent / "val.csv", ["image", "finding"], [[i, n] for i, n in zip(ids[12:], ["cat", "dog", "fox"])])
    _recipe(d / "val-class-not-in-train.yaml", csv_src.format(root="./absent") + "  val_csv: ./absent/val.csv\n  image_ext: .png\n")

    col = d / "no_column"
    ids = images(col, 8)
    _csv(col / "train.csv", ["image", "label"], [[i, str(k % 2)] for k, i in enumerate(ids)])
    _recipe(d / "csv-missing-column.yaml", csv_src.format(root="./no_column") + "  image_ext: .png\n")

    missing = d / "missing"
    ids = images(missing, 6)
    _csv(missing / "train.csv", ["image", "finding"], [[i, str(k % 2)] for k, i in enumerate(ids + ["GONE_1", "GONE_2"])])
    _recipe(d / "csv-images-missing.yaml", csv_src.format(root="./missing") + "  image_ext: .png\n")

    header_only = d / "header_only"
    images(header_only, 1)
    _csv(header_only / "train.csv", ["image", "finding"], [])
    _recipe(d / "csv-header-only.yaml", csv_src.format(root="./header_only") + "  image_ext: .png\n")

    latin1 = d / "latin1"
    ids = images(latin1, 4)
    _csv(latin1 / "train.csv", ["image", "finding"], [[i, n] for i, n in zip(ids, ["naevus", "kératose"] * 2)], encoding="latin-1")
    _recipe(d / "csv-not-utf8.yaml", csv_src.format(root="./latin1") + "  image_ext: .png\n")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _make_checkpoints(tmp: Path, run: Path) -> None:
    from fopro_edge.config import StudentConfig
    from fopro_edge.distill.checkpoint import load_checkpoint, save_checkpoint
    from fopro_edge.models import build_student

    state = {k: v for k, v in load_checkpoint(run / "checkpoints" / "best.pt").items() if k != "format"}
    ck = tmp / "ckpt"
    other = build_student(StudentConfig(model="test_efficientnet"), len(state["class_names"]))
    save_checkpoint(ck / "other_arch.pt", {**state, "student": other.state_dict()})
    save_checkpoint(ck / "other_classes.pt", {**state, "class_names": [*state["class_names"], "extra"]})
    recipe = state["recipe"]
    changed = {**recipe, "data": {**recipe["data"], "synthetic": {**recipe["data"]["synthetic"], "num_classes": 5}}}
    save_checkpoint(ck / "data_changed.pt", {**state, "recipe": changed})
    torch.save({"conv.weight": torch.zeros(2, 2)}, ck / "plain_tensors.pt")
    torch.save({"format": "fopro-edge-checkpoint/1", "student": _Evil(tmp / "pwned")}, ck / "evil.pt")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    from fopro_edge.config import load_recipe
    from fopro_edge.distill.rundir import prepare_run_dir
    from fopro_edge.distill.trainer import distill

    tmp = tmp_path_factory.mktemp("corpus")
    (tmp / "a_file").write_text("not a folder\n")
    (tmp / "empty_dir").mkdir()
    for name, content in (("held_run", b"\0" * 64), ("corrupt_run", b"this is not a checkpoint\n")):
        (tmp / name / "checkpoints").mkdir(parents=True)
        (tmp / name / "checkpoints" / "last.pt").write_bytes(content)
    (tmp / "probed" / "student-bsm" / "checkpoints").mkdir(parents=True)
    (tmp / "probed" / "student-bsm" / "checkpoints" / "last.pt").write_bytes(b"\0" * 64)
    (tmp / "evil_run" / "checkpoints").mkdir(parents=True)
    torch.save({"format": "fopro-edge-checkpoint/1", "net": _Evil(tmp / "pwned")}, tmp / "evil_run" / "checkpoints" / "last.pt")
    _make_data(tmp)
    recipe = load_recipe(SMOKE, ["distill.method=ce", "distill.epochs=1"])
    run = distill(recipe, prepare_run_dir(tmp / "run", recipe.name, resume=False), progress=False).run_dir
    _make_checkpoints(tmp, run)
    return {"tmp": tmp, "run": run}


# --------------------------------------------------------------------------- running a case

_OUTCOMES: dict[str, tuple[int, str, str, bool]] = {}


def _expand(text: str, case: Case, env: dict[str, Path]) -> str:
    recipe = env["tmp"] / "data" / f"{case.id.split('/', 1)[1]}.yaml"
    return text.format(smoke=SMOKE, tmp=env["tmp"], run=env["run"], recipe=recipe)


def _args(case: Case, env: dict[str, Path]) -> list[str]:
    if case.group == "data":
        return ["distill", _expand("{recipe}", case, env), "--out", f"{env['tmp']}/out/{case.id}"]
    return [_expand(a, case, env) for a in case.args]


def _outcome(case: Case, env: dict[str, Path]) -> tuple[int, str, str, bool]:
    """(exit code, stdout, stderr, handled): run once per session, as ``fopro-edge ARGS`` in the corpus folder."""
    if case.id not in _OUTCOMES:
        old = os.getcwd()
        os.chdir(env["tmp"])  # --resume without --out looks for ./runs
        try:
            result = CliRunner().invoke(cli, _args(case, env), prog_name="fopro-edge")
        finally:
            os.chdir(old)
        handled = result.exception is None or isinstance(result.exception, SystemExit)
        _OUTCOMES[case.id] = (result.exit_code, result.stdout, result.stderr, handled)
    return _OUTCOMES[case.id]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_malformed_input_gets_one_line_and_exit_code_2(case, env):
    code, stdout, stderr, handled = _outcome(case, env)
    assert handled, f"unhandled exception (a traceback for the user): {stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    msg = lines[0]
    assert code == case.code, msg
    assert msg.startswith("error: ") and "Traceback" not in stderr + stdout
    assert case.expect in msg
    assert _expand(case.names, case, env) in msg
    assert not (env["tmp"] / "pwned").exists()  # code carried by a file never runs


@pytest.mark.parametrize("case_id", ["cli/set-without-value", "data/duplicate-class-names", "export/onnx-fp16"])
def test_the_real_entry_point_prints_the_same_single_line(case_id, env):
    """``python -m fopro_edge`` (logging on, as a user runs it) prints exactly the line the corpus recorded."""
    import subprocess
    import sys

    case = next(c for c in CASES if c.id == case_id)
    code, _, stderr, _ = _outcome(case, env)
    proc = subprocess.run([sys.executable, "-m", "fopro_edge", *_args(case, env)], capture_output=True, text=True,
                          cwd=env["tmp"], timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == code == case.code
    assert proc.stderr.strip() == stderr.strip() and proc.stdout == ""


def test_debug_shows_the_traceback_for_the_same_input(env):
    result = CliRunner().invoke(cli, ["--debug", "distill", str(CORPUS / "epochs_zero.yaml")], prog_name="fopro-edge")
    assert result.exit_code != 0 and type(result.exception).__name__ == "ConfigError"


# --------------------------------------------------------------------------- docs/errors.md


def _normalise(text: str, env: dict[str, Path]) -> str:
    return text.replace(str(env["tmp"]), "$TMP").replace(f"{REPO}/", "")


def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def corpus_table(env: dict[str, Path]) -> str:
    rows = ["| # | case | what was tried | command | exit | message |", "|---:|---|---|---|---:|---|"]
    for i, case in enumerate(CASES, 1):
        code, _, stderr, _ = _outcome(case, env)
        msg = next((line for line in stderr.splitlines() if line.strip()), "")
        command = "fopro-edge " + " ".join(_args(case, env))
        rows.append(
            f"| {i} | {case.id} | {case.what} | {_cell(_normalise(command, env))} | {code} | {_cell(_normalise(msg, env))} |"
        )
    return "\n".join(rows)


def test_docs_errors_md_is_in_sync_with_the_corpus(env):
    table = corpus_table(env)
    text = DOC.read_text(encoding="utf-8")
    start, end = text.index(DOC_START) + len(DOC_START), text.index(DOC_END)
    if os.environ.get("UPDATE_ERRORS_DOC"):
        DOC.write_text(text[:start] + "\n" + table + "\n" + text[end:], encoding="utf-8")
        text = DOC.read_text(encoding="utf-8")
        start, end = text.index(DOC_START) + len(DOC_START), text.index(DOC_END)
    assert text[start:end].strip() == table, (
        "docs/errors.md is out of date: UPDATE_ERRORS_DOC=1 python -m pytest tests/test_reliability_corpus.py -q"
    )
