"""The ladder of an ablation: one full distill run per (method, seed) cell, resumable.

Cell ``(method, seed)`` lives in ``OUT/<method with '+' as '_'>-seed<seed>/`` and is the run of
``fopro-edge distill RECIPE --out CELL --set distill.method=METHOD --set seed=SEED`` plus the
user's overrides. A cell whose ``metrics/metrics.json`` exists is finished and reused; a cell folder
without it is continued like ``distill --resume`` does (from its last checkpoint, or from the start
when it has none; a checkpoint of another recipe is refused).
"""

from __future__ import annotations

import logging
import shlex
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fopro_edge.ablate.results import WALL_SECONDS
from fopro_edge.distill.rundir import RunDir
from fopro_edge.errors import ConfigError, FoproEdgeError
from fopro_edge.io import atomic_write_text

log = logging.getLogger(__name__)

DEFAULT_METHODS = ("ce", "bsm", "ekd", "ekd+fpg", "fopro")
DEFAULT_BASELINE = "bsm"
PER_CELL_KEYS = ("distill.method", "seed")  # set by the ladder, not by --set

DONE, PARTIAL, ABSENT = "done", "partial", "absent"


def known_methods() -> tuple[str, ...]:
    from fopro_edge.config import DistillConfig

    return typing.get_args(typing.get_type_hints(DistillConfig)["method"])


@dataclass(frozen=True)
class Cell:
    method: str
    seed: int
    root: Path

    @property
    def name(self) -> str:
        return f"{self.method.replace('+', '_')}-seed{self.seed}"

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.root / self.name)

    @property
    def state(self) -> str:
        rd = self.run_dir
        return DONE if rd.metrics_json.is_file() else PARTIAL if rd.path.exists() else ABSENT

    def overrides(self, user: Sequence[str]) -> list[str]:
        return [*user, f"distill.method={self.method}", f"seed={self.seed}"]


@dataclass(frozen=True)
class AblationPlan:
    recipe: Path
    out: Path
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    baseline: str
    overrides: tuple[str, ...] = ()

    def cells(self) -> list[Cell]:
        """Seed by seed, so that every finished seed already holds a full comparison."""
        return [Cell(m, s, self.out) for s in self.seeds for m in self.methods]

    def missing(self) -> list[Cell]:
        return [c for c in self.cells() if c.state != DONE]

    def command(self) -> str:
        parts = ["fopro-edge", "ablate", str(self.recipe), "--methods", ",".join(self.methods),
                 "--seeds", ",".join(map(str, self.seeds)), "--out", str(self.out), "--baseline", self.baseline]
        for item in self.overrides:
            parts += ["--set", item]
        return shlex.join(parts)


def parse_methods(text: str) -> tuple[str, ...]:
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    known = known_methods()
    if not methods:
        raise ConfigError(f"--methods: empty (give a comma-separated list, e.g. --methods {','.join(DEFAULT_METHODS)})")
    for m in methods:
        if m not in known:
            raise ConfigError(f"--methods: '{m}' is not a distill.method (choose from {', '.join(known)})")
    dup = sorted({m for m in methods if methods.count(m) > 1})
    if dup:
        raise ConfigError(f"--methods: {', '.join(dup)} listed twice (list each method once)")
    return methods


def parse_seeds(text: str) -> tuple[int, ...]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ConfigError("--seeds: empty (give a comma-separated list of integers, e.g. --seeds 0,1,2)")
    seeds = []
    for s in items:
        try:
            seeds.append(int(s))
        except ValueError:
            raise ConfigError(f"--seeds: '{s}' is not an integer (e.g. --seeds 0,1,2)") from None
        if seeds[-1] < 0:
            raise ConfigError(f"--seeds: {s} is negative (seeds are integers >= 0)")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"--seeds: {', '.join(map(str, dup))} listed twice (list each seed once)")
    return tuple(seeds)


def make_plan(
    recipe: str | Path,
    *,
    methods: str,
    seeds: str,
    out: str | Path | None = None,
    baseline: str = DEFAULT_BASELINE,
    overrides: Sequence[str] = (),
    check_recipes: bool = True,
) -> AblationPlan:
    """Check the arguments and, with ``check_recipes``, every cell's recipe, before anything trains.
    Without ``out`` the ladder lives in ``runs/<recipe name>-ablation`` (rerunning resumes it)."""
    from fopro_edge.config import load_recipe
    from fopro_edge.schema import parse_override

    ms, ss = parse_methods(methods), parse_seeds(seeds)
    if baseline not in ms:
        raise ConfigError(f"--baseline: '{baseline}' is not among --methods {','.join(ms)} (add it or choose one of them)")
    for item in overrides:
        key, _ = parse_override(item)
        if ".".join(key) in PER_CELL_KEYS:
            raise ConfigError(f"--set: {'.'.join(key)} is set per cell by --methods/--seeds (drop '--set {item}')")
    cfg = load_recipe(recipe, overrides)
    plan = AblationPlan(Path(recipe), Path(out) if out is not None else Path("runs") / f"{cfg.name}-ablation",
                        ms, ss, baseline, tuple(overrides))
    if check_recipes:
        for cell in plan.cells():
            load_recipe(recipe, cell.overrides(overrides))
    return plan


def run_cell(plan: AblationPlan, cell: Cell, *, device: str | None = None, progress: bool | None = None) -> None:
    """One cell, the way ``fopro-edge distill RECIPE --out CELL [--resume]`` runs it."""
    from fopro_edge.config import load_recipe
    from fopro_edge.distill.rundir import prepare_run_dir
    from fopro_edge.distill.trainer import distill

    resume = cell.run_dir.path.exists()
    cfg = load_recipe(plan.recipe, cell.overrides(plan.overrides))
    distill(cfg, prepare_run_dir(cell.run_dir.path, cfg.name, resume=resume), resume=resume, device=device,
            progress=progress)


def run_ladder(plan: AblationPlan, *, device: str | None = None, progress: bool | None = None) -> dict[str, str]:
    """Train every cell that is not finished; returns, per cell name, ``reused``, ``resumed`` or ``trained``."""
    done: dict[str, str] = {}
    cells = plan.cells()
    for i, cell in enumerate(cells, 1):
        state = cell.state
        if state == DONE:
            log.info("cell %d/%d %s: finished earlier, reused", i, len(cells), cell.name)
            done[cell.name] = "reused"
            continue
        log.info("cell %d/%d %s: %s", i, len(cells), cell.name, "resuming" if state == PARTIAL else "training")
        started = time.perf_counter()
        try:
            run_cell(plan, cell, device=device, progress=progress)
        except FoproEdgeError as e:
            raise type(e)(f"cell {cell.run_dir.path}: {e}") from e
        if cell.state != DONE:  # e.g. a non-zero rank of a distributed run, or a runner that wrote nothing
            raise FoproEdgeError(f"cell {cell.run_dir.path}: the run ended without {cell.run_dir.metrics_json}")
        atomic_write_text(cell.run_dir.path / WALL_SECONDS, f"{time.perf_counter() - started:.1f}\n")
        done[cell.name] = "resumed" if state == PARTIAL else "trained"
    return done
