"""Are the INT8 artifacts a run kept as fast as, and as kind to the rare classes as, library defaults?

For one run directory (``fopro-edge run RECIPE --out RUN_DIR``) this builds the plain-defaults
INT8 baselines from the run's own fp32 ONNX and calibration images (``calibration.json``):
``quant_pre_process`` + ``onnxruntime.quantization.quantize_static(in, out, reader)`` with no other
argument, and ``nncf.quantize(openvino.convert_model(onnx), dataset, subset_size=N)`` (saved
without fp16 compression, like the export). It then measures five rows in one process: the fp32
ONNX and the kept INT8 model in ONNX Runtime, the ORT defaults, the kept OpenVINO INT8 IR and the
NNCF defaults (both compiled with INFERENCE_PRECISION_HINT f32, as the export checked). Per row:
batch-1 latency (interleaved rounds, rotated order, so drift hits every row alike; p50 / p90 of
the pooled calls), size, and on the TEST split the gate maths with default thresholds against
the PyTorch student. Writes ``<out>.json`` and ``<out>.md``; prints the table.

    python benchmarks/int8_baselines.py RUN_DIR --threads 2 --seconds 5 --out benchmarks/results/int8_baselines_demo

Before timing it waits up to ``--max-wait`` seconds for other processes to leave the CPU idle; the
CPU share they used while timing is recorded either way.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def mib(*paths: Path) -> float:
    return sum(Path(p).stat().st_size for p in paths) / 2**20


def kept_step(export_dir: Path, step_dir: str) -> dict:
    """The export manifest's step for a kept artifact: its gate status and settings."""
    from fopro_edge.deploy.pipeline import read_export

    step = next(s for s in read_export(export_dir / "export.json").steps if Path(s.directory).name == step_dir)
    conf = step.confirmation
    return {"status": step.status, "gate_split": step.gate.split, "confirmation": conf.status if conf else None,
            "confirmation_split": conf.split if conf else None, "settings": step.artifact.metadata}


def build_defaults(run: Path, work: Path, cal: dict) -> tuple[Path, Path]:
    """The two plain-defaults baselines, calibrated on each runtime's calibration images."""
    import contextlib
    import io
    import logging

    import nncf
    import openvino as ov
    from onnxruntime.quantization import quantize_static

    from fopro_edge.deploy.calibration import nncf_dataset, ort_reader
    from fopro_edge.deploy.onnx_backend import INPUT_NAME
    from fopro_edge.deploy.onnxruntime_backend import preprocess  # quant_pre_process with its defaults

    nncf.set_log_level(logging.ERROR)
    pre, ort_out, ov_out = work / "pre.onnx", work / "ort_defaults.onnx", work / "nncf_defaults.xml"
    preprocess(run / "export/onnxruntime/onnx/model.onnx", pre)
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars
        quantize_static(str(pre), str(ort_out), ort_reader(cal["onnxruntime"], INPUT_NAME))
        images = cal["openvino"]
        q = nncf.quantize(ov.convert_model(str(run / "export/openvino/onnx/model.onnx")), nncf_dataset(images),
                          subset_size=len(images))
    ov.save_model(q, str(ov_out), compress_to_fp16=False)
    return ort_out, ov_out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=5.0, help="timed seconds per row, split over the rounds")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-wait", type=float, default=600.0, help="seconds to wait for a quiet machine before timing")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/int8_baselines_demo")
    args = ap.parse_args()
    from fopro_edge.bench import cpuload
    from fopro_edge.bench.stats import percentile
    from fopro_edge.bench.timing import make_inputs, time_runner
    from fopro_edge.config import recipe_from_dict
    from fopro_edge.data import build_splits
    from fopro_edge.deploy.calibration import CheckImages, load_calibration, load_images
    from fopro_edge.deploy.cpu_target import CpuClass, this_cpu
    from fopro_edge.deploy.gate import evaluate_gate
    from fopro_edge.deploy.profiles import GateConfig
    from fopro_edge.deploy.runners import OpenVINORunner, OrtRunner, TorchRunner, predict
    from fopro_edge.distill.checkpoint import load_student
    from fopro_edge.envinfo import collect_env

    run, ex, t = args.run_dir, args.run_dir / "export", args.threads
    student, info = load_student(run / "checkpoints/best.pt")
    recipe = recipe_from_dict(info.recipe, check_paths=False)
    splits = build_splits(recipe.data, recipe.seed)
    if list(splits.class_names) != list(info.class_names):
        raise SystemExit(f"{run}: the recipe's data has classes {list(splits.class_names)}, the checkpoint {info.class_names}")
    cal = {rt: load_images(splits.train, load_calibration(ex / rt / "calibration.json", splits.train.labels, info.class_names,
                                                          info.rare_classes, rt).indices, info.image_size)
           for rt in ("onnxruntime", "openvino")}
    check = CheckImages(splits.test, info.image_size)
    with TorchRunner(student, threads=t) as torch_runner:
        reference = predict(torch_runner, check.batches())
    ort_int8, ov_int8 = ex / "onnxruntime/int8/model.onnx", ex / "openvino/ir-int8/model.xml"
    with tempfile.TemporaryDirectory() as tmp:
        ort_plain, ov_plain = build_defaults(run, Path(tmp), cal)
        rows = [  # name, runtime, kind, runner, files, export step
            ("fp32 ONNX", "onnxruntime", "fp32", OrtRunner(ex / "onnxruntime/onnx/model.onnx", threads=t),
             [ex / "onnxruntime/onnx/model.onnx"], None),
            ("kept INT8 (export)", "onnxruntime", "kept", OrtRunner(ort_int8, precision="int8", threads=t), [ort_int8],
             kept_step(ex / "onnxruntime", "int8")),
            ("quantize_static defaults", "onnxruntime", "defaults", OrtRunner(ort_plain, precision="int8", threads=t),
             [ort_plain], None),
            ("kept INT8 IR (export)", "openvino", "kept",
             OpenVINORunner(ov_int8, precision="int8", inference_precision="f32", threads=t),
             [ov_int8, ov_int8.with_suffix(".bin")], kept_step(ex / "openvino", "ir-int8")),
            ("nncf.quantize defaults", "openvino", "defaults",
             OpenVINORunner(ov_plain, precision="int8", inference_precision="f32", threads=t),
             [ov_plain, ov_plain.with_suffix(".bin")], None),
        ]
        results = []
        for name, rt, kind, runner, files, step in rows:
            g = evaluate_gate(check.labels, reference, predict(runner, check.batches()), info.class_names,
                              info.rare_classes, GateConfig(), runtime=rt, precision=runner.precision, split="test",
                              check_parity=kind == "fp32")
            results.append({"row": name, "runtime": rt, "kind": kind, "files": [str(f) for f in files], "size_mib": mib(*files),
                            "export_gate": step, "runtime_info": runner.info, "balanced_accuracy": g.candidate.balanced_accuracy,
                            "rare_recall": g.candidate.rare_recall, "rare_right_to_wrong": g.flips.rare_right_to_wrong,
                            "changed": g.flips.total, "gate": g.status, "gate_reasons": list(g.reasons), "round_p50s_ms": [],
                            "_ms": []})
        inputs = make_inputs(1, info.image_size)
        cpuload.wait_for_quiet(0.05, max_wait_s=args.max_wait)
        start = cpuload.sample()
        for r in range(args.rounds):  # interleaved, each round starting one row later
            for i in [(r + k) % len(rows) for k in range(len(rows))]:
                ms = [d / 1e6 for d in time_runner(rows[i][3], inputs, seconds=args.seconds / args.rounds).durations_ns]
                results[i]["_ms"] += ms
                results[i]["round_p50s_ms"].append(percentile(ms, 50))
        load = cpuload.between(start, cpuload.sample())
        for row in rows:
            row[3].close()
    base = {x["runtime"]: percentile(x["_ms"], 50) for x in results if x["kind"] == "defaults"}
    for x in results:
        ms = x.pop("_ms")
        x.update(calls=len(ms), p50_ms=percentile(ms, 50), p90_ms=percentile(ms, 90))
        x["p50_vs_defaults"] = x["p50_ms"] / base[x["runtime"]] if x["kind"] != "fp32" else None
    ref = evaluate_gate(check.labels, reference, reference, info.class_names, info.rare_classes, GateConfig()).reference
    env, cpu = collect_env(runtimes=True), this_cpu()
    report = {"run_dir": str(run), "command": shlex.join(["python", *sys.argv]), "date": time.strftime("%Y-%m-%d %H:%M"),
              "threads": t, "batch_size": 1, "rounds": args.rounds, "seconds_per_row": args.seconds,
              "max_wait_s": args.max_wait,
              "check_split": "test", "test_images": len(check), "thresholds": asdict(GateConfig()),
              "calibration_images": {k: len(v) for k, v in cal.items()}, "pytorch_student": asdict(ref),
              "cpu_class": cpu.value, "interference": load.to_dict() if load else None, "rows": results, "env": env}
    vnni = {CpuClass.VNNI: "with VNNI", CpuClass.AVX2: "no VNNI (AVX2 only)", CpuClass.ARM: "Arm, no x86 VNNI"}[cpu]
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}"  # noqa: E731
    ratio = lambda v: "—" if v is None else f"{v:.2f}x"  # noqa: E731
    table = ["| row | runtime | export gate | p50 ms | p90 ms | p50 / defaults | size MiB | bal. acc. % | rare recall % "
             "| rare right→wrong | changed | gate (defaults, test) |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    table += [f"| {x['row']} | {x['runtime']} | {x['export_gate']['status'] if x['export_gate'] else '—'} | {x['p50_ms']:.3f} "
              f"| {x['p90_ms']:.3f} | {ratio(x['p50_vs_defaults'])} "
              f"| {x['size_mib']:.2f} | {pct(x['balanced_accuracy'])} | {pct(x['rare_recall'])} | {x['rare_right_to_wrong']} "
              f"| {x['changed']} | {x['gate']} |" for x in results]
    k = {(x["runtime"], x["kind"]): x for x in results}
    ort, ov = (k[("onnxruntime", "kept")], k[("onnxruntime", "defaults")]), (k[("openvino", "kept")], k[("openvino", "defaults")])
    def spread(kept: dict, defaults: dict) -> str:
        r = [a / b for a, b in zip(kept["round_p50s_ms"], defaults["round_p50s_ms"], strict=True)]
        return f"{min(r):.2f}x–{max(r):.2f}x"

    md = [f"# Kept INT8 vs library defaults on {env['cpu']['model']}, {vnni}\n",
          f"Run `{run}`; {env['cpu']['usable_cores']} usable cores, {t} threads, batch 1; "
          f"`{report['command']}`, {report['date']}. {args.rounds} interleaved rounds, {args.seconds:g} s timed per row; "
          f"accuracy on the test split ({len(check)} images) vs the PyTorch student, default gate thresholds.\n", *table, "",
          f"The kept ONNX Runtime INT8 model runs at p50 {ort[0]['p50_ms']:.3f} ms, {ort[0]['p50_vs_defaults']:.2f}x the "
          f"quantize_static defaults ({ort[1]['p50_ms']:.3f} ms); the kept OpenVINO IR at {ov[0]['p50_ms']:.3f} ms, "
          f"{ov[0]['p50_vs_defaults']:.2f}x the nncf.quantize defaults ({ov[1]['p50_ms']:.3f} ms). "
          f"Round by round (the same rotation for both) the kept / defaults p50 ratio spans {spread(*ort)} in ONNX "
          f"Runtime and {spread(*ov)} in OpenVINO: a ratio inside that span is drift, not a difference. "
          f"Mean rare-class recall is {pct(ort[0]['rare_recall'])} % (kept) vs {pct(ort[1]['rare_recall'])} % (defaults) in "
          f"ONNX Runtime and {pct(ov[0]['rare_recall'])} % vs {pct(ov[1]['rare_recall'])} % in OpenVINO, against "
          f"{pct(ref.rare_recall)} % for the PyTorch student, with {ort[0]['rare_right_to_wrong']} vs {ort[1]['rare_right_to_wrong']} "
          f"and {ov[0]['rare_right_to_wrong']} vs {ov[1]['rare_right_to_wrong']} rare right→wrong flips. "
          + (f"Other processes used {100 * load.other_cpu_share:.0f} % of the CPU while timing." if load else "")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_name(args.out.name + ".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    args.out.with_name(args.out.name + ".md").write_text("\n".join(md) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
