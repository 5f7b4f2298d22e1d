"""Memory soak: resident memory (RSS) of a whole distillation run, epoch by epoch.

Trains the offline demo recipe (FoPro-KD, real digits, the packaged EfficientNet-Lite0 teacher) for
N epochs in this process and records the RSS after every epoch (after validation and checkpointing,
i.e. at the same point of each epoch). Memory is "flat" when the RSS after the first epochs stops
growing: the least-squares slope over epochs 3..N is below ``--max-slope-mib`` MiB per epoch.
The first epochs are left out of the fit: they include allocator warm-up and lazily built state
(optimiser moments, autograd buffers, the first checkpoint's buffers).

    python benchmarks/memory_soak.py --epochs 12 --out benchmarks/results/memory_soak.json

Run it on a machine that is otherwise idle (``cat /proc/loadavg``).
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def rss_mib() -> float:
    """Current resident set size of this process, from /proc (Linux)."""
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("VmRSS not found in /proc/self/status")


def soak(epochs: int, overrides: list[str]) -> dict:
    from fopro_edge.config import load_recipe
    from fopro_edge.distill import trainer as trainer_mod
    from fopro_edge.distill.rundir import prepare_run_dir

    recipe = load_recipe(REPO / "recipes" / "demo_digits.yaml", [f"distill.epochs={epochs}", *overrides])
    samples: list[dict] = []
    started = time.perf_counter()
    end_epoch = trainer_mod.Trainer._end_epoch

    def recording_end_epoch(self, epoch, train_stats, val):
        end_epoch(self, epoch, train_stats, val)
        gc.collect()
        samples.append({
            "epoch": epoch + 1,
            "rss_mib": round(rss_mib(), 1),
            "elapsed_s": round(time.perf_counter() - started, 1),
            "loss": round(float(train_stats.get("loss", float("nan"))), 4),
        })
        print(f"epoch {epoch + 1:3d}/{epochs}: RSS {samples[-1]['rss_mib']:.1f} MiB ({samples[-1]['elapsed_s']:.0f} s)",
              file=sys.stderr, flush=True)

    trainer_mod.Trainer._end_epoch = recording_end_epoch
    before = rss_mib()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            result = trainer_mod.distill(recipe, prepare_run_dir(Path(tmp) / "run", recipe.name, resume=False), progress=False)
            test_bacc = result.test_metrics["balanced_accuracy"]
    finally:
        trainer_mod.Trainer._end_epoch = end_epoch
    return {"recipe": "recipes/demo_digits.yaml", "overrides": [f"distill.epochs={epochs}", *overrides],
            "rss_before_mib": round(before, 1), "samples": samples, "test_balanced_accuracy": test_bacc,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1),
            "seconds": round(time.perf_counter() - started, 1)}


def summarise(samples: list[dict], skip: int, max_slope: float) -> dict:
    rss = np.array([s["rss_mib"] for s in samples])
    epochs = np.array([s["epoch"] for s in samples], dtype=float)
    tail = slice(skip, None)
    slope = float(np.polyfit(epochs[tail], rss[tail], 1)[0]) if len(rss[tail]) >= 2 else None
    third = max(1, len(rss) // 3)
    return {
        "rss_min_max_first_third_mib": [float(rss[:third].min()), float(rss[:third].max())],
        "rss_min_max_last_third_mib": [float(rss[-third:].min()), float(rss[-third:].max())],
        "fit_from_epoch": int(epochs[skip]) if len(epochs) > skip else None,
        "slope_mib_per_epoch": None if slope is None else round(slope, 3),
        "max_slope_mib_per_epoch": max_slope,
        "growth_after_warmup_mib": round(float(rss[tail].max() - rss[tail].min()), 1) if len(rss[tail]) else None,
        "first_epoch_rss_mib": float(rss[0]),
        "last_epoch_rss_mib": float(rss[-1]),
        "flat": None if slope is None else bool(abs(slope) < max_slope),
    }


def resummarise(path: Path, skip: int, max_slope: float) -> None:
    """Recompute the summary of a saved result (after a change to :func:`summarise`)."""
    import json

    from fopro_edge.io import atomic_write_json

    report = json.loads(path.read_text(encoding="utf-8"))
    report["summary"] = summarise(report["samples"], skip, max_slope)
    atomic_write_json(path, report)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--skip", type=int, default=2, help="first epochs left out of the slope fit (warm-up)")
    p.add_argument("--max-slope-mib", type=float, default=1.0, help="flat: |slope| below this many MiB per epoch")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra recipe overrides")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "memory_soak.json")
    p.add_argument("--resummarise", action="store_true", help="only recompute the summary of --out")
    args = p.parse_args()
    if args.resummarise:
        return resummarise(args.out, args.skip, args.max_slope_mib)
    overrides = ["runtime.device=cpu", "runtime.threads=2", *args.overrides]

    from fopro_edge.envinfo import collect_env
    from fopro_edge.io import atomic_write_json

    with open("/proc/loadavg", encoding="utf-8") as f:
        load_before = f.read().split()[:3]
    run = soak(args.epochs, overrides)
    report = {
        "benchmark": "memory_soak",
        "command": "python benchmarks/memory_soak.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "loadavg_before": load_before,
        **run,
        "summary": summarise(run["samples"], args.skip, args.max_slope_mib),
        "machine": collect_env(),
    }
    atomic_write_json(args.out, report)
    s = report["summary"]
    print(f"RSS {s['first_epoch_rss_mib']:.1f} -> {s['last_epoch_rss_mib']:.1f} MiB over {args.epochs} epochs; "
          f"slope from epoch {s['fit_from_epoch']}: {s['slope_mib_per_epoch']} MiB/epoch "
          f"({ {True: 'flat', False: 'GROWING', None: 'too few epochs to fit'}[s['flat']] }); written to {args.out}")


if __name__ == "__main__":
    main()
