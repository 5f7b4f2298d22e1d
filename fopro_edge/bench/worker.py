"""Run one measurement in a fresh Python process, so its peak memory is its own and runtimes
loaded for one artifact cannot disturb the next.

    python -m fopro_edge.bench.worker REQUEST.json RESULT.json
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fopro_edge.bench.results import BenchConfig, Measurement
from fopro_edge.bench.targets import Target

log = logging.getLogger(__name__)

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def measure_in_subprocess(target: Target, batch_size: int, threads: int, config: BenchConfig) -> Measurement:
    """:func:`~fopro_edge.bench.measure.measure_one` in a child process; a crash or a timeout
    becomes a measurement with status ``error``."""
    with tempfile.TemporaryDirectory(prefix="fopro-bench-") as tmp:
        req, res = Path(tmp) / "request.json", Path(tmp) / "result.json"
        req.write_text(json.dumps({"target": target.to_dict(), "batch_size": batch_size, "threads": threads,
                                   "config": config.to_dict()}), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
        cmd = [sys.executable, "-m", "fopro_edge.bench.worker", str(req), str(res)]
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=config.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return Measurement(target, batch_size, threads, "error", f"timed out after {config.timeout_s:.0f} s")
        if proc.returncode != 0 or not res.is_file():
            tail = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()][-1:] or [f"exit code {proc.returncode}"]
            log.debug("worker stderr:\n%s", proc.stderr)
            return Measurement(target, batch_size, threads, "error", f"measurement process failed: {tail[0][:300]}")
        return Measurement.from_dict(json.loads(res.read_text(encoding="utf-8")))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m fopro_edge.bench.worker REQUEST.json RESULT.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from fopro_edge.bench.measure import measure_one
    from fopro_edge.io import atomic_write_json

    req = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    m = measure_one(Target.from_dict(req["target"]), int(req["batch_size"]), int(req["threads"]),
                    BenchConfig.from_dict(req["config"]), isolated=True)
    atomic_write_json(args[1], m.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
