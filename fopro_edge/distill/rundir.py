"""The layout of a run directory, and how one is chosen or created."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from fopro_edge.errors import ConfigError


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def splits(self) -> Path:
        return self.path / "splits.json"

    @property
    def longtail(self) -> Path:
        return self.path / "longtail.json"

    @property
    def env(self) -> Path:
        return self.path / "env.json"

    @property
    def history(self) -> Path:
        return self.path / "history.jsonl"

    @property
    def explore_json(self) -> Path:
        return self.path / "explore.json"

    @property
    def explore_plot(self) -> Path:
        """The prompt's effective gain over the val images (explore stage)."""
        return self.path / "explore.png"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def metrics_dir(self) -> Path:
        return self.path / "metrics"

    @property
    def metrics_json(self) -> Path:
        """The test evaluation; its presence marks a finished run."""
        return self.metrics_dir / "metrics.json"

    @property
    def test_predictions(self) -> Path:
        """Per-image test labels, logits and predictions (:mod:`fopro_edge.distill.predictions`)."""
        return self.metrics_dir / "test_predictions.npz"

    @property
    def timm_student(self) -> Path:
        """The best student as a timm model folder (``timm.create_model("local-dir:...")``)."""
        return self.path / "student"


def prepare_run_dir(out: str | Path | None, recipe_name: str, *, resume: bool, runs_root: str | Path = "runs") -> RunDir:
    """Choose the run directory and check it is usable before any training starts.

    Without ``out``, a new ``runs/<name>-<timestamp>`` is made, or with ``resume`` the newest
    ``runs/<name>-*`` that holds a last checkpoint is continued.
    """
    if out is None:
        root = Path(runs_root)
        if resume:
            candidates = sorted(root.glob(f"{recipe_name}-*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
            if not candidates:
                raise ConfigError(f"--resume: no earlier run of '{recipe_name}' under {root}/ (pass --out RUN_DIR)")
            return _checked(RunDir(candidates[-1].parent.parent))
        out = root / f"{recipe_name}-{time.strftime('%Y%m%d-%H%M%S')}"
    rd = RunDir(Path(out))
    if not resume and rd.last_checkpoint.exists():
        raise ConfigError(f"--out: {rd.path} already holds a run (use --resume to continue it, or choose another --out)")
    return _checked(rd)


def _checked(rd: RunDir) -> RunDir:
    try:
        rd.checkpoints.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out: cannot create {rd.path}: {e.strerror} (choose a writable folder)") from None
    probe = rd.path / ".write-test"
    try:
        with open(probe, "wb") as f:
            f.write(b"0" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ConfigError(f"--out: {rd.path} is not writable: {e.strerror} (free space or choose another folder)") from None
    finally:
        probe.unlink(missing_ok=True)
    return rd
