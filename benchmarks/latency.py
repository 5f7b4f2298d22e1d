"""Latency of student and teacher architectures across CPU backends and precisions, in one run.

Builds each model with random weights and non-trivial BatchNorm statistics, exports it with the
project's own backends (ONNX; ONNX Runtime static QDQ INT8; OpenVINO IR fp32 and NNCF INT8,
calibrated on real images: the digits demo upscaled to the suite's image size), then measures every
(model, backend) pair with ``fopro_edge.bench`` (each in a fresh process, re-measured while other
processes disturb it) and writes ``latency_<suite>.{json,md,png}``.

    python benchmarks/latency.py benchmarks/suites/cpu_latency.yaml --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

log = logging.getLogger("latency")

SUITE_KEYS = {"name", "image_size", "num_classes", "batch_sizes", "threads", "warmup", "iters", "seconds",
              "max_interference", "retries", "retry_wait_s", "calibration_images", "students", "teacher", "backends",
              "compile"}
BACKEND_KEYS = {"label", "backend", "precision", "activation_type", "inference_precision", "static_batch"}


def load_suite(path: Path) -> dict[str, Any]:
    suite = yaml.safe_load(path.read_text(encoding="utf-8"))
    unknown = set(suite) - SUITE_KEYS
    if unknown:
        raise SystemExit(f"{path}: unknown key(s) {sorted(unknown)} (known: {sorted(SUITE_KEYS)})")
    for i, b in enumerate(suite["backends"]):
        if set(b) - BACKEND_KEYS:
            raise SystemExit(f"{path}: backends[{i}]: unknown key(s) {sorted(set(b) - BACKEND_KEYS)}")
    return suite


def calibration_images(count: int, size: int):
    """Class-stratified digits (real images) from the demo's train split, resized to ``size``."""
    from fopro_edge.config import DemoConfig
    from fopro_edge.data import load_digits_longtail, stratified_calibration_indices
    from fopro_edge.deploy.calibration import load_images

    train, _, _ = load_digits_longtail(DemoConfig(), seed=0)
    idx = stratified_calibration_indices(train.labels, count, [], 0)
    return load_images(train, idx, size)


def export_model(model_name: str, num_classes: int, size: int, backends: list[dict], work: Path, images) -> dict[str, Path]:
    """Artifacts of one model for every non-PyTorch backend (reused when already in ``work``)."""
    from fopro_edge.bench.models import random_init_student
    from fopro_edge.deploy import onnxruntime_backend as ob
    from fopro_edge.deploy import openvino_backend as vb
    from fopro_edge.deploy.onnx_backend import export_onnx, read_metadata
    from fopro_edge.distill.checkpoint import StudentInfo

    d = work / model_name
    d.mkdir(parents=True, exist_ok=True)

    def onnx_file(static: bool) -> Path:
        """The fp32 ONNX model: dynamic batch (the export default) or batch fixed at 1
        (export profile ``dynamic_batch: false``)."""
        path = d / ("model.b1.onnx" if static else "model.onnx")
        if not path.is_file():
            info = StudentInfo(model=model_name, class_names=[f"c{i}" for i in range(num_classes)], rare_classes=[],
                               image_size=size, checkpoint="random-init", sha256="random-init-seed0")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                export_onnx(random_init_student(model_name, num_classes, seed=0), info, path, dynamic_batch=not static,
                            batch_size=1)
        return path

    out: dict[str, Path] = {}
    for b in backends:
        kind, prec, static = b["backend"], b.get("precision", "fp32"), bool(b.get("static_batch"))
        if kind == "pytorch":
            continue
        src = onnx_file(static)
        tag = "-b1" if static else ""
        meta = read_metadata(src)
        if kind == "onnxruntime" and prec == "fp32":
            out[b["label"]] = src
        elif kind == "onnxruntime":
            act = b.get("activation_type", "u8")
            path = d / f"ort-int8-{act}{tag}.onnx"
            if not path.is_file():
                pre = d / f"model{tag}.pre.onnx"
                ob.preprocess(src, pre)
                ob.quantize_qdq(pre, path, images, ob.QuantSettings(activation_type=act), batch_size=1 if static else 8,
                                fixed_batch=static, metadata_source=src)
            out[b["label"]] = path
        elif kind == "openvino":
            path = d / f"ir-{prec}{tag}" / "model.xml"
            if not path.is_file():
                if prec == "int8":
                    vb.quantize_ir(src, path, images, vb.NNCFSettings(), metadata=meta)
                else:
                    vb.convert_ir(src, path, precision=prec, metadata=meta)
            out[b["label"]] = path
    return out


def build_targets(suite: dict[str, Any], work: Path) -> list:
    from fopro_edge.bench import Target
    from fopro_edge.bench.targets import artifact_size

    size = int(suite["image_size"])
    images = calibration_images(int(suite["calibration_images"]), size)
    teacher = suite["teacher"]
    models = [(m, int(suite["num_classes"]), "student") for m in suite["students"]]
    models.append((teacher["model"], int(teacher.get("num_classes", 1000)), "teacher"))
    targets = []
    for name, n_cls, role in models:
        t0 = time.monotonic()
        arts = export_model(name, n_cls, size, suite["backends"], work, images)
        log.info("%s: artifacts ready in %.0f s", name, time.monotonic() - t0)
        spec = {"source": "timm", "model": name, "num_classes": n_cls, "image_size": size, "seed": 0}
        for b in suite["backends"]:
            label = f"{name} · {b['label']}"
            if b["backend"] == "pytorch":
                targets.append(Target(label, "pytorch", "fp32", role=role, model=spec, group=name))
                if name in (suite.get("compile") or []):
                    targets.append(Target(f"{name} · pytorch torch.compile", "pytorch", "fp32", role="artifact",
                                          model=spec, group=name, options={"compile": True}))
                continue
            path = arts[b["label"]]
            opts = {"inference_precision": b["inference_precision"]} if b["backend"] == "openvino" else {}
            targets.append(Target(label, b["backend"], b.get("precision", "fp32"), path=str(path), options=opts,
                                  size_bytes=artifact_size(path), group=name, image_size=size))
    return targets


def verdict(report, student: str = "mobilenetv3_large_100") -> list[str]:
    """The issue's targets: best INT8 artifact of the student vs eager student / eager teacher."""
    lines = []
    for threads in report.config.thread_counts:
        best = report.best(group=student, precision="int8", batch_size=1, threads=threads)
        if best is None:
            continue
        sp = report.speedups(best)
        s, t = sp["vs_student"], sp["vs_teacher"]
        lines.append(
            f"- batch 1, {threads} threads: best INT8 artifact of `{student}` is **{best.target.name}** "
            f"({best.precision_used}), p50 {best.latency.p50_ms:.2f} ms: "
            f"**{s:.1f}x** the PyTorch eager fp32 student (target ≥ 8x: {'met' if s and s >= 8 else 'NOT met'}), "
            f"**{t:.1f}x** the PyTorch eager ResNet-50 teacher (target ≥ 30x: {'met' if t and t >= 30 else 'NOT met'})."
        )
        if best.runtime_latency is not None:
            rt = best.runtime_latency.p50_ms
            sb, tb = report.baseline(best, "student"), report.baseline(best, "teacher")
            lines.append(
                f"- the same artifact by OpenVINO's own per-call figure (what benchmark_app reports, without the "
                f"Python binding): {rt:.2f} ms, {sb.latency.p50_ms / rt:.1f}x / {tb.latency.p50_ms / rt:.1f}x. "
                "The wall-clock figure above is the one this project reports."
            )
    return lines


def write_markdown(report, suite: dict[str, Any], args: argparse.Namespace, paths: dict[str, Path]) -> list[str]:
    """Insert the targets verdict and the method note into the written Markdown report."""
    from fopro_edge.io import atomic_write_text

    lines = verdict(report)
    md = paths["markdown"].read_text(encoding="utf-8")
    head, sep, rest = md.partition("\n## ")
    note = ("\n## Targets (issue: batch 1, 2 threads)\n\n" + "\n".join(lines) + "\n\nRandom-initialised weights with "
            "non-trivial BatchNorm statistics; INT8 calibrated on " + f"{suite['calibration_images']} real digits images "
            f"upscaled to {suite['image_size']} px. Artifacts built in `{args.work}` by this script.\n")
    atomic_write_text(paths["markdown"], head + note + sep + rest)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fopro-latency"), help="where the artifacts are built")
    ap.add_argument("--iters", type=int, default=None, help="override the suite's iterations (quick checks)")
    ap.add_argument("--only", nargs="*", default=None, help="only these models")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine first")
    ap.add_argument("--build-only", action="store_true", help="build the artifacts in --work and stop")
    ap.add_argument("--render-only", action="store_true", help="rewrite the .md and .png from the existing .json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("nncf", "PIL", "matplotlib", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from fopro_edge.bench import BenchConfig, measure_targets
    from fopro_edge.bench.cpuload import wait_for_quiet
    from fopro_edge.bench.report import write_bench_report

    suite = load_suite(args.suite)
    stem = f"latency_{suite['name']}"
    if args.render_only:
        from fopro_edge.bench.results import BenchReport

        report = BenchReport.from_dict(json.loads((args.out / f"{stem}.json").read_text(encoding="utf-8")))
        write_markdown(report, suite, args, write_bench_report(report, args.out, stem=stem, chart_name=f"{stem}.png"))
        return 0
    if args.only:
        suite["students"] = [m for m in suite["students"] if m in args.only]
    targets = build_targets(suite, args.work)
    if args.build_only:
        print(f"{len(targets)} targets, artifacts in {args.work}")
        return 0
    if args.only and suite["teacher"]["model"] not in args.only:
        targets = [t for t in targets if t.group != suite["teacher"]["model"] or t.role == "teacher"]
    iters = args.iters or suite.get("iters")
    config = BenchConfig(
        batch_sizes=tuple(suite["batch_sizes"]), threads=tuple(suite["threads"]), warmup=int(suite["warmup"]),
        iters=None if suite.get("seconds") and not args.iters else iters,
        seconds=None if args.iters or not suite.get("seconds") else float(suite["seconds"]),
        max_interference=float(suite["max_interference"]), retries=int(suite["retries"]),
        retry_wait_s=float(suite["retry_wait_s"]),
    )
    if not args.no_wait:
        wait_for_quiet(config.max_interference)
    t0 = time.monotonic()
    report = measure_targets(targets, config, title=f"Latency suite `{suite['name']}` ({args.suite.name})")
    report = replace(report, title=f"{report.title}, {time.monotonic() - t0:.0f} s")
    paths = write_bench_report(report, args.out, stem=stem, chart_name=f"{stem}.png")
    lines = write_markdown(report, suite, args, paths)
    for line in lines:
        print(line)
    print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
