"""How many explore steps does the Fourier prompt need to move, and what does it then do?

Runs the explore stage of a recipe once for the largest step count and, at every listed step
count on the way, records the prompt's effective gain over the val images (min/max, mean
|log gain|) and the clean / prompted probe diagnostic of ``fopro_edge.distill.explore``:

    python benchmarks/explore_steps.py recipes/demo_digits.yaml --steps 50,100,200,400 --lr 1e-3,3e-3,1e-2 \\
        --set runtime.threads=1 --out benchmarks/results/explore_steps_demo.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path


@contextlib.contextmanager
def _rng_kept():
    import random

    import numpy as np
    import torch

    py, npy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        yield
    random.setstate(py)
    np.random.set_state(npy)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--steps", default="50,100,200,400")
    p.add_argument("--lr", default="1e-3")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--no-probes", action="store_true", help="Gain only (skip the probe diagnostic).")
    p.add_argument("--out", type=Path)
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from fopro_edge.config import load_recipe
    from fopro_edge.data import ImageDataset, build_transform
    from fopro_edge.distill.explore import effective_gain, prompt_diagnostic, train_prompt
    from fopro_edge.distill.losses import sampler_prior
    from fopro_edge.distill.rundir import RunDir
    from fopro_edge.distill.runtime import setup_runtime
    from fopro_edge.distill.trainer import Trainer
    from fopro_edge.envinfo import collect_env

    marks = sorted(map(int, a.steps.split(",")))
    rows = []
    for lr in a.lr.split(","):
        recipe = load_recipe(a.recipe, [*a.overrides, "distill.method=ekd+fpg", f"distill.explore.lr={lr}",
                                        f"distill.explore.steps={marks[-1]}"])
        rt = setup_runtime(recipe.runtime)
        with tempfile.TemporaryDirectory() as tmp:
            tr = Trainer(recipe, RunDir(Path(tmp)), rt, progress=False)
        teacher_tf = build_transform(tr.teacher_size, "none", training=False)
        train_eval = ImageDataset(tr.splits.train, teacher_tf)
        val_teacher = ImageDataset(tr.splits.val, teacher_tf)
        few = tr.stats.group_ids("few")
        clock = {"start": time.perf_counter(), "paused": 0.0}

        def record(step: int) -> None:
            if step not in marks:
                return
            with _rng_kept():  # the diagnostic's loaders draw seeds: keep the training's augmentation stream
                _record(step)

        def _record(step: int) -> None:
            paused = time.perf_counter()
            seconds = paused - clock["start"] - clock["paused"]
            if a.no_probes:
                row = {"gain": effective_gain(tr.prompt, val_teacher, rt)[1]}
                row["gain"] |= {"dataset_prompt_min": float(tr.prompt.mean_gain().min()),
                                "dataset_prompt_max": float(tr.prompt.mean_gain().max())}
            else:
                row = prompt_diagnostic(recipe, tr.teacher, tr.prompt, train_eval, val_teacher, few, rt)
            row = {"lr": float(lr), "step": step, "train_seconds": round(seconds, 1), **row}
            rows.append(row)
            g = row["gain"]
            print(json.dumps({k: row[k] for k in ("lr", "step", "train_seconds")}
                             | {k: round(g[k], 4) for k in ("min", "max", "mean_abs_log_gain", "max_abs_log_gain",
                                                                "dataset_prompt_min", "dataset_prompt_max")}
                             | ({"verdict": row["verdict"]} if "verdict" in row else {})), flush=True)
            clock["paused"] += time.perf_counter() - paused

        train_prompt(recipe, tr.teacher, tr.prompt, tr.probe, tr.loader, sampler_prior(tr.stats.counts, recipe.data.sampler),
                     rt, start_epoch=tr._start_epoch, after_step=record)
        print(f"lr {lr}: {len(tr.loader)} steps per pass over {len(tr.train_set)} train images", flush=True)
    if a.out:
        report = {"recipe": a.recipe, "command": "python " + " ".join(sys.argv), "rows": rows, "env": collect_env(),
                  "date": time.strftime("%Y-%m-%d")}
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
