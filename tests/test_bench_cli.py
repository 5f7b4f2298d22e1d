"""``fopro-edge bench``: argument errors (one line, exit 2) and a tiny in-process benchmark."""

from __future__ import annotations

import json
import warnings

import pytest
from click.testing import CliRunner

from fopro_edge.cli import _register, cli
from fopro_edge.cli.bench_cmd import parse_int_list, parse_ov_precisions
from fopro_edge.errors import ConfigError

_register()


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_parse_helpers():
    assert parse_int_list("1, 8,1", "--batch") == (1, 8)
    assert parse_int_list(None, "--threads") == ()
    with pytest.raises(ConfigError, match="--batch: 'x' is not a whole number"):
        parse_int_list("1,x", "--batch")
    with pytest.raises(ConfigError, match="--threads: 0 is below 1"):
        parse_int_list("0", "--threads")
    assert parse_ov_precisions("f32,auto") == ("f32", "auto") and parse_ov_precisions(None) is None
    with pytest.raises(ConfigError, match="--ov-precision"):
        parse_ov_precisions("int8")


@pytest.mark.parametrize("args, message", [
    ((), "give --run RUN_DIR or at least one --artifact PATH"),
    (("--artifact", "missing.onnx", "--out", "o"), "--artifact: missing.onnx does not exist"),
    (("--run", "no-such-dir"), "--run: no-such-dir is not a directory"),
    (("--run", ".", "--batch", "one"), "--batch: 'one' is not a whole number"),
    (("--run", ".", "--iters", "5", "--seconds", "1"), "--iters/--seconds: give one of them, not both"),
])
def test_user_errors_are_one_line_exit_2(args, message):
    r = _invoke("bench", *args)
    assert r.exit_code == 2, r.output
    assert message in r.output and len(r.output.strip().splitlines()) == 1


def test_artifact_without_run_needs_out(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"x")
    r = _invoke("bench", "--artifact", str(tmp_path / "m.onnx"))
    assert r.exit_code == 2 and "--out: required" in r.output


def test_bench_an_onnx_file_in_process(tmp_path):
    import torch

    from fopro_edge.bench.models import random_init_student

    model = random_init_student("test_resnet", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, 32, 32),), str(tmp_path / "m.onnx"), dynamo=False, opset_version=17,
                          input_names=["input"], dynamic_axes={"input": {0: "batch"}})
    r = _invoke("bench", "--artifact", str(tmp_path / "m.onnx"), "--out", str(tmp_path / "b"), "--in-process",
                "--iters", "4", "--warmup", "1", "--threads", "1", "--batch", "1,2", "--max-interference", "100")
    assert r.exit_code == 0, r.output
    assert "b1 t1  m" in r.output and "b2 t1  m" in r.output and "bench.md" in r.output
    d = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert [(m["batch_size"], m["status"], m["latency"]["iterations"]) for m in d["measurements"]] == [(1, "ok", 4), (2, "ok", 4)]
    assert d["env"]["cpu"]["usable_cores"] >= 1 and "openvino" in d["env"]
    assert (tmp_path / "b" / "latency.png").is_file()
