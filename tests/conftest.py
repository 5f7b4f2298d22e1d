from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config):
    # NNCF compiles its PyTorch extension on first use (about 90 s on 2 cores); a load that still
    # cannot finish fails the QAT-KD try within this bound instead of holding the suite
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "600")


@pytest.fixture(autouse=True, scope="session")
def _teacher_cache_of_this_session(tmp_path_factory):
    """The teacher-feature cache of the tests lives in the session's temporary folder, shared by its tests."""
    os.environ["FOPRO_EDGE_CACHE"] = str(tmp_path_factory.mktemp("teacher-cache"))


def pytest_collection_modifyitems(config, items):
    import torch

    has_cuda = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    needs = {"onnx": ("onnx", "onnxruntime"), "openvino": ("openvino", "nncf", "onnx", "onnxruntime")}
    missing = {m: [n for n in mods if importlib.util.find_spec(n) is None] for m, mods in needs.items()}
    run_slow = "slow" in (config.getoption("-m") or "")
    for item in items:
        if item.get_closest_marker("slow") and not run_slow:
            item.add_marker(pytest.mark.skip(reason="slow: run with -m slow"))
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
        if item.get_closest_marker("tensorrt") and not (has_trt and has_cuda):
            item.add_marker(pytest.mark.skip(reason="needs tensorrt and a CUDA GPU"))
        for marker, absent in missing.items():
            if absent and item.get_closest_marker(marker):
                item.add_marker(pytest.mark.skip(reason=f"needs {', '.join(absent)}"))


@pytest.fixture
def repo() -> Path:
    return REPO
