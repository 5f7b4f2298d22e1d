"""The verify bundle: split files shared between steps by content, never by name; the CPU an artifact was made for."""

from __future__ import annotations

import numpy as np
import pytest

from fopro_edge.deploy.bundle import SplitData, write_bundle
from fopro_edge.deploy.profiles import GateConfig


def _split(name: str, seed: int) -> SplitData:
    rng = np.random.default_rng(seed)
    return SplitData(name, rng.random((4, 3, 8, 8), dtype=np.float32), np.arange(4), rng.standard_normal((4, 3)).astype(np.float32))


def _write(step_dir, selection, confirmation, written):
    artifact = step_dir / "model.onnx"
    step_dir.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(b"x")
    return write_bundle(step_dir, step=step_dir.name, target="toy", artifact=artifact, artifact_sha256="0", precision="fp32",
                        class_names=["a", "b", "c"], rare_classes=["c"], thresholds=GateConfig(), preprocessing={},
                        selection=selection, confirmation=confirmation, reports={}, written=written)


def test_steps_share_split_files_of_equal_content_only_and_drop_a_stale_confirmation(tmp_path):
    written: dict = {}
    sel, conf = _split("val", 0), _split("test", 1)
    a = _write(tmp_path / "a", sel, conf, written)
    # same selection; a confirmation with other reference logits (another student, same images)
    other = SplitData("test", conf.images, conf.labels, conf.reference + 1.0)
    b = _write(tmp_path / "b", SplitData("val", sel.images.copy(), sel.labels.copy(), sel.reference.copy()), other, written)
    assert (b / "selection.npz").read_bytes() == (a / "selection.npz").read_bytes()
    with np.load(b / "confirmation.npz") as f:
        np.testing.assert_array_equal(f["reference"], other.reference)  # not linked to a's file of the same name
    with np.load(a / "confirmation.npz") as f:
        np.testing.assert_array_equal(f["reference"], conf.reference)
    # a later export into a's folder without a confirmation leaves no confirmation file behind
    _write(tmp_path / "a", sel, None, {})
    assert not (a / "confirmation.npz").exists() and (a / "selection.npz").is_file()
    assert sel.fingerprint() != SplitData("test", sel.images, sel.labels, sel.reference).fingerprint()


@pytest.mark.parametrize(("made_for", "here", "noted"), [
    ("avx2", "avx2", False),
    ("avx2", "vnni", False),  # 7-bit weights compute the same where nothing saturates
    ("vnni", "avx2", True),  # 8-bit weights can saturate here
    ("arm", "avx2", True),
    ("vnni", "arm", False),  # both accumulate in int32: the exact result
    (None, "avx2", False),  # not an INT8 artifact
])
def test_verify_notes_an_artifact_made_for_another_cpu_class(made_for, here, noted, monkeypatch):
    from fopro_edge.deploy import bundle, cpu_target

    monkeypatch.setattr(cpu_target, "this_cpu", lambda: cpu_target.CpuClass(here))
    notes = bundle._cpu_notes(made_for, "onnxruntime")
    assert bool(notes) is noted
    if noted:
        assert f"made for CPU class {made_for}, verified on CPU class {here}" in notes[0]
