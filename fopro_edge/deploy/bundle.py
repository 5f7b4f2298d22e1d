"""The verification bundle: what a device needs to re-run an export step's gate, without torch.

Every gated export step writes ``<step>/verify-bundle/`` beside its artifact:

- ``selection.npz`` (and ``confirmation.npz`` when the step was confirmed): the check images exactly
  as the gate fed them (float32 RGB in [0, 1], NCHW, already resized and cropped), their labels and
  the PyTorch student's logits;
- ``bundle.json``: class names, rare classes, the gate thresholds, the preprocessing contract, the
  artifact's file name and sha256, the export's own verdicts, and the sha256 of every data file.

``fopro-edge verify ARTIFACT --bundle DIR`` (:func:`verify`) runs the artifact on those images and
applies the same gate maths, so a device checks the file it will really run (an engine built there
from the QDQ ONNX, say). This module imports numpy, the gate and the runners only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fopro_edge.deploy.gate import GateReport, evaluate_gate
from fopro_edge.deploy.profiles import GateConfig
from fopro_edge.errors import ConfigError, GateFailedError
from fopro_edge.io import atomic_write_json, atomic_write_text, sha256_files

log = logging.getLogger(__name__)

BUNDLE_DIR = "verify-bundle"
FORMAT = "fopro-edge-verify-bundle/1"


@dataclass(frozen=True)
class SplitData:
    """One split of a bundle: the images the gate saw, their labels and the PyTorch logits."""

    split: str
    images: np.ndarray
    labels: np.ndarray
    reference: np.ndarray

    def fingerprint(self) -> str:
        """sha256 of the split's name and arrays: equal fingerprints, equal files."""
        h = hashlib.sha256(self.split.encode())
        for a in (np.ascontiguousarray(self.images, np.float32), np.ascontiguousarray(self.labels, np.int64),
                  np.ascontiguousarray(self.reference, np.float32)):
            h.update(str(a.shape).encode())
            h.update(memoryview(a).cast("B"))
        return h.hexdigest()


def write_bundle(
    step_dir: Path,
    *,
    step: str,
    target: str,
    artifact: Path,
    artifact_sha256: str,
    precision: str,
    artifact_files: Sequence[Path] = (),
    class_names: Sequence[str],
    rare_classes: Sequence[str],
    thresholds: GateConfig,
    preprocessing: Mapping[str, Any],
    selection: SplitData,
    confirmation: SplitData | None,
    reports: Mapping[str, GateReport | None],
    runtime_options: Mapping[str, Any] | None = None,
    deploy_cpu: str | None = None,
    written: dict[str, Path] | None = None,
) -> Path:
    """Write ``step_dir/verify-bundle``. ``written``: split files written earlier, by fingerprint
    (:meth:`SplitData.fingerprint`); a split with the same content is hard-linked to its file when
    possible, so steps of one export share the bytes. New files are added to it."""
    d = step_dir / BUNDLE_DIR
    d.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for role, data in (("selection", selection), ("confirmation", confirmation)):
        path = d / f"{role}.npz"
        if data is None:
            path.unlink(missing_ok=True)  # left by an earlier export into this folder
            continue
        key = data.fingerprint()
        _write_split(path, data, (written or {}).get(key))
        if written is not None:
            written.setdefault(key, path)
        files[role] = {"file": path.name, "split": data.split, "images": int(len(data.labels)),
                       "sha256": sha256_files([path])}
    manifest = {
        "format": FORMAT,
        "step": step,
        "target": target,
        "artifact": {"file": os.path.relpath(artifact, d), "sha256": artifact_sha256, "precision": precision,
                     "suffixes": [Path(f).suffix for f in artifact_files] or [artifact.suffix]},
        "class_names": list(class_names),
        "rare_classes": list(rare_classes),
        "thresholds": asdict(thresholds),
        "preprocessing": dict(preprocessing),
        "runtime_options": dict(runtime_options or {}),
        "deploy_cpu": deploy_cpu,  # the CPU class an INT8 artifact was made for (avx2 | vnni | arm), else None
        "splits": files,
        "export": {role: _summary(r) for role, r in reports.items() if r is not None},
    }
    atomic_write_json(d / "bundle.json", manifest)
    return d


def _write_split(path: Path, data: SplitData, same: Path | None) -> None:
    """``path`` holding ``data``: a link to (or copy of) ``same``, a file of equal content, if given."""
    if same is not None and same.is_file() and same.resolve() != path.resolve():
        path.unlink(missing_ok=True)
        try:
            os.link(same, path)
        except OSError:
            shutil.copyfile(same, path)
        return
    tmp = path.with_name(f".{path.name}.tmp.npz")
    np.savez_compressed(tmp, images=np.ascontiguousarray(data.images, np.float32),
                        labels=np.asarray(data.labels, np.int64), reference=np.asarray(data.reference, np.float32),
                        split=np.array(data.split))
    os.replace(tmp, path)


def _summary(r: GateReport) -> dict[str, Any]:
    """What verify compares: the verdict, the flips and every class's recall."""
    return {"status": r.status, "split": r.split, "images": r.num_images, "flips": asdict(r.flips),
            "recall": {c.name: c.recall for c in r.classes},
            "balanced_accuracy": r.candidate.balanced_accuracy, "parity_checked": r.parity_checked}


# --------------------------------------------------------------------------- reading and verifying


@dataclass(frozen=True)
class Bundle:
    root: Path
    manifest: dict[str, Any]

    @property
    def thresholds(self) -> GateConfig:
        from fopro_edge.schema import from_json

        return from_json(GateConfig, self.manifest["thresholds"], f"{self.root}/bundle.json: thresholds")

    def split(self, role: str) -> SplitData | None:
        entry = self.manifest["splits"].get(role)
        if entry is None:
            return None
        path = self.root / entry["file"]
        if not path.is_file():
            raise ConfigError(f"{path}: missing from the bundle (copy the whole {self.root.name} folder)")
        if sha256_files([path]) != entry["sha256"]:
            raise ConfigError(f"{path}: sha256 differs from bundle.json (the file changed after export; copy it again)")
        with np.load(path) as z:
            return SplitData(str(z["split"]), z["images"], z["labels"], z["reference"])


def read_bundle(path: str | Path) -> Bundle:
    root = Path(path)
    if root.is_file() and root.name == "bundle.json":
        root = root.parent
    manifest_path = root / "bundle.json"
    if not manifest_path.is_file():
        raise ConfigError(f"--bundle: {root}: no bundle.json (give the '{BUNDLE_DIR}' folder an export step wrote)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{manifest_path}: not a bundle manifest ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ConfigError(f"{manifest_path}: format {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                          f"expected '{FORMAT}'")
    return Bundle(root, manifest)


@dataclass(frozen=True)
class VerifyResult:
    artifact: str
    artifact_sha256: str
    same_file: bool  # the artifact is the very file the export checked
    runtime: str
    runtime_info: dict[str, Any]
    reports: dict[str, GateReport]  # role -> gate report (selection, confirmation)
    reproduced: dict[str, list[str]]  # role -> differences from the export's gate (empty: identical)
    notes: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.reports.values())

    @property
    def status(self) -> str:
        return "PASSED" if self.passed else "FAILED"

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "artifact": self.artifact, "artifact_sha256": self.artifact_sha256,
                "same_file": self.same_file, "runtime": self.runtime, "runtime_info": self.runtime_info,
                "reproduced": self.reproduced, "notes": list(self.notes),
                "reports": {k: v.to_dict() for k, v in self.reports.items()}}

    def to_markdown(self) -> str:
        lines = [f"# Verify: {Path(self.artifact).name} — {self.status}", "",
                 f"- artifact: `{self.artifact}` (sha256 {self.artifact_sha256[:16]}…, "
                 + ("the file the export checked)" if self.same_file else "NOT the file the export checked: "
                    "e.g. an engine built here; its own gate below)"),
                 f"- runtime: {self.runtime}" + "".join(f"; {k}: {v}" for k, v in self.runtime_info.items()
                                                        if not isinstance(v, (dict, list)))]
        lines += [f"- {n}" for n in self.notes]
        for role, diffs in self.reproduced.items():
            lines.append(f"- {role}: " + ("reproduces the export's gate exactly (same flips, same per-class recall, "
                                          "same verdict)" if not diffs else "differs from the export's gate: "
                                          + "; ".join(diffs)))
        for role, r in self.reports.items():
            lines += ["", f"## {role.capitalize()} ({r.split})", "", r.to_markdown().split("\n", 1)[1]]
        return "\n".join(lines) + "\n"


def _differences(expected: Mapping[str, Any] | None, r: GateReport) -> list[str]:
    if expected is None:
        return ["the bundle holds no export result for it"]
    out = []
    if expected["status"] != r.status:
        out.append(f"verdict {expected['status']} at export, {r.status} here")
    flips = asdict(r.flips)
    for k, v in expected["flips"].items():
        if flips.get(k) != v:
            out.append(f"flips.{k} {v} at export, {flips.get(k)} here")
    for c in r.classes:
        want = expected["recall"].get(c.name)
        if want is not None and c.recall is not None and abs(want - c.recall) > 1e-9:
            out.append(f"recall of '{c.name}' {want:.3f} at export, {c.recall:.3f} here")
    return out


def artifact_digest(path: Path, suffixes: Sequence[str]) -> str:
    """sha256 over the artifact's files as the export hashed them (an IR: the .xml, then its .bin)."""
    files = [path.with_suffix(s) for s in suffixes]
    return sha256_files(files) if all(f.is_file() for f in files) else sha256_files([path])


def verify(artifact: str | Path, bundle: str | Path, *, threads: int | None = None,
           inference_precision: str | None = None) -> VerifyResult:
    """Run ``artifact`` on the bundle's images and apply the bundle's gate to each split."""
    from fopro_edge.deploy import backends
    from fopro_edge.deploy.runners import predict

    path = Path(artifact)
    if not path.is_file():
        raise ConfigError(f"ARTIFACT: not found: {path}")
    b = read_bundle(bundle)
    m = b.manifest
    entry = backends.for_artifact(path)
    if entry is None:
        raise ConfigError(f"ARTIFACT: {path}: unknown artifact type '{path.suffix}' "
                          f"(expected one of: {', '.join(backends.artifact_suffixes())})")
    options = {"inference_precision": inference_precision or m["runtime_options"].get("inference_precision", "f32")}
    digest = artifact_digest(path, m["artifact"].get("suffixes") or [path.suffix])
    same_file = digest == m["artifact"]["sha256"]
    # the file the export checked: its precision as the bundle records it (no package needed to read it back)
    precision = m["artifact"]["precision"] if same_file else entry.read_precision(path)
    thresholds = b.thresholds
    reports: dict[str, GateReport] = {}
    reproduced: dict[str, list[str]] = {}
    with entry.open_runner(path, precision=precision, threads=threads, options=options) as runner:
        for role in ("selection", "confirmation"):
            data = b.split(role)
            if data is None:
                continue
            logits = predict(runner, [data.images[i:i + thresholds.batch_size]
                                      for i in range(0, len(data.images), thresholds.batch_size)], thresholds.batch_size)
            exported = m["export"].get(role)
            r = evaluate_gate(data.labels, data.reference, logits, m["class_names"], m["rare_classes"], thresholds,
                              step=f"{m['step']} ({role})", artifact=str(path), runtime=runner.name,
                              precision=runner.precision, split=data.split,
                              check_parity=bool(exported and exported.get("parity_checked")),
                              runtime_info=runner.info)
            reports[role] = r
            reproduced[role] = _differences(exported, r)
        runtime, info = runner.name, dict(runner.info)
    if not reports:
        raise ConfigError(f"--bundle: {b.root}/bundle.json lists no split to check")
    return VerifyResult(str(path), digest, same_file, runtime, info, reports, reproduced,
                        _cpu_notes(None if m["target"] == "tensorrt" else m.get("deploy_cpu"), runtime))


def _cpu_notes(deploy_cpu: str | None, runtime: str) -> tuple[str, ...]:
    """Where a CPU INT8 artifact is verified on a CPU that computes it differently, say so."""
    from fopro_edge.deploy.cpu_target import CpuClass, computes_differently, this_cpu

    if not deploy_cpu or runtime not in ("onnxruntime", "openvino"):
        return ()
    here = this_cpu()
    if not computes_differently(CpuClass(deploy_cpu), here):
        return ()
    return (f"made for CPU class {deploy_cpu}, verified on CPU class {here.value}: its 8-bit weights can saturate "
            "this CPU's integer kernels, so results here can be worse than there; the verdict that counts is the "
            "one on the deployment CPU",)


def write_result(result: VerifyResult, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "check.json", result.to_dict())
    atomic_write_text(out / "check.md", result.to_markdown())


def raise_for_result(result: VerifyResult) -> None:
    if not result.passed:
        failed = [f"{role}: {', '.join(r.failing_classes) or '(a global threshold)'}; {r.reasons[0]}"
                  for role, r in result.reports.items() if not r.passed]
        raise GateFailedError(f"gate FAILED for {result.artifact} on the bundle's images: " + " | ".join(failed))
