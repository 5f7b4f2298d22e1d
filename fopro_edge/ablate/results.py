"""What one finished ablation cell holds, read back typed from its run directory.

``metrics/metrics.json`` (the test evaluation), ``metrics/test_predictions.npz`` when the run saved
it, ``history.jsonl`` (training seconds and AKD steps per epoch), ``explore.json`` (the explore
stage's paired teacher probe and the prompt's gain), ``env.json`` (the machine it ran on) and
``wall_seconds.txt`` (written by ``fopro-edge ablate`` when it finished the cell).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from fopro_edge.ablate.bootstrap import GROUPS, METRICS, ClassLayout
from fopro_edge.data.longtail import tail_members
from fopro_edge.distill.rundir import RunDir
from fopro_edge.errors import DataError
from fopro_edge.schema import from_json

WALL_SECONDS = "wall_seconds.txt"


@dataclass(frozen=True)
class GroupRecall:
    many: float | None = None
    medium: float | None = None
    few: float | None = None


@dataclass(frozen=True)
class ClassMetrics:
    name: str
    support: int
    recall: float | None = None
    group: str | None = None
    rare: bool = False
    train_count: int | None = None


@dataclass(frozen=True)
class RunMetrics:
    """The part of ``metrics.json`` an ablation reads."""

    method: str
    balanced_accuracy: float
    macro_f1: float
    accuracy: float
    group_recall: GroupRecall
    per_class: tuple[ClassMetrics, ...]
    rare_recall: float | None = None
    best_epoch: int | None = None
    num_samples: int | None = None
    tail_recall: float | None = None  # absent from files of older runs: see with_tail
    tail_classes: tuple[str, ...] | None = None

    def with_tail(self, tail_below: int | None) -> RunMetrics:
        """Tail recall recomputed from the per-class recall (and train counts, for ``tail_below``);
        ``None`` with an empty tail where the train counts it needs are missing."""
        members = tail_members([c.group for c in self.per_class], [c.train_count for c in self.per_class], tail_below)
        if members is None:
            return replace(self, tail_recall=None, tail_classes=())
        recalls = [c.recall for c, t in zip(self.per_class, members) if t and c.recall is not None]
        return replace(self, tail_recall=sum(recalls) / len(recalls) if recalls else None,
                       tail_classes=tuple(c.name for c, t in zip(self.per_class, members) if t))

    def value(self, metric: str) -> float | None:
        if metric.endswith("_recall") and metric.removesuffix("_recall") in GROUPS:
            return getattr(self.group_recall, metric.removesuffix("_recall"))
        return getattr(self, metric)

    def values(self) -> dict[str, float | None]:
        return {m: self.value(m) for m in METRICS}

    def layout(self) -> ClassLayout:
        tail = None if self.tail_classes is None else tuple(c.name in self.tail_classes for c in self.per_class)
        return ClassLayout(tuple(c.group for c in self.per_class), tuple(c.rare for c in self.per_class), tail)


@dataclass(frozen=True)
class _Cpu:
    model: str = ""
    usable_cores: int | None = None


@dataclass(frozen=True)
class _Gpu:
    name: str = ""
    count: int | None = None


@dataclass(frozen=True)
class _Env:
    cpu: _Cpu = field(default_factory=_Cpu)
    gpu: _Gpu | None = None


@dataclass(frozen=True)
class _TrainStats:
    epoch_seconds: float | None = None


@dataclass(frozen=True)
class _AkdStep:
    step: int
    adv: float


@dataclass(frozen=True)
class HistoryRecord:
    epoch: int
    train: _TrainStats = field(default_factory=_TrainStats)
    akd_steps: tuple[_AkdStep, ...] = ()


@dataclass(frozen=True)
class ProbeDifference:
    """Prompted minus clean teacher probe on one metric, with its 95 % intervals."""

    mean: float
    t_interval: tuple[float, float] | None = None  # over probe seeds
    bootstrap_interval: tuple[float, float] | None = None  # over val images


@dataclass(frozen=True)
class _ProbeScore:
    balanced_accuracy: float
    few_recall: float | None = None


@dataclass(frozen=True)
class _ProbeDifferences:
    balanced_accuracy: ProbeDifference
    few_recall: ProbeDifference | None = None


@dataclass(frozen=True)
class _Probe:
    seeds: int
    clean: _ProbeScore
    prompted: _ProbeScore
    difference: _ProbeDifferences


@dataclass(frozen=True)
class _Gain:
    min: float
    max: float
    mean_abs_log_gain: float


@dataclass(frozen=True)
class ExploreDiagnostic:
    """The part of ``explore.json`` a report reads: the paired probe (prompt frozen) and the gain."""

    steps: int
    lr: float
    probe: _Probe | None = None
    gain: _Gain | None = None


@dataclass(frozen=True)
class AkdCurve:
    """The adversarial term of AKD over a run: its first step, and its mean over the first and last
    epoch that had AKD steps."""

    steps: int
    first: float
    first_epoch_mean: float
    last_epoch_mean: float


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not readable JSON ({e}); re-run the cell (delete its folder)") from None


def read_metrics(rd: RunDir, tail_below: int | None = None) -> RunMetrics:
    """The run's test metrics, tail recall for the tail of ``tail_below`` (``data.groups.tail_below``)."""
    return from_json(RunMetrics, _read_json(rd.metrics_json), str(rd.metrics_json)).with_tail(tail_below)


def machine(env: dict) -> str:
    """One line: CPU model and usable cores, and the GPU when there is one."""
    e = from_json(_Env, env, "env.json")
    text = f"{e.cpu.model or 'unknown CPU'}, {e.cpu.usable_cores or '?'} cores"
    if e.gpu is not None and e.gpu.name:
        text += f", {e.gpu.name}" + (f" x{e.gpu.count}" if e.gpu.count and e.gpu.count > 1 else "")
    return text


def read_machine(rd: RunDir) -> str | None:
    if not rd.env.is_file():
        return None
    raw = _read_json(rd.env)
    return machine(raw) if isinstance(raw, dict) else None


def read_history(rd: RunDir) -> list[HistoryRecord]:
    """Every epoch of ``history.jsonl`` (none without the file)."""
    if not rd.history.is_file():
        return []
    records = []
    for i, line in enumerate(rd.history.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{rd.history}: line {i + 1} is not JSON (re-run the cell)") from None
        records.append(from_json(HistoryRecord, raw, f"{rd.history}: line {i + 1}"))
    return records


def train_seconds(history: list[HistoryRecord]) -> float | None:
    """The summed training time of the epochs (survives a resume; excludes evaluation)."""
    seconds = [r.train.epoch_seconds for r in history if r.train.epoch_seconds is not None]
    return sum(seconds) if seconds else None


def akd_curve(history: list[HistoryRecord]) -> AkdCurve | None:
    """The AKD adversarial term of a run; ``None`` for a run without AKD steps."""
    epochs = [[s.adv for s in r.akd_steps] for r in history if r.akd_steps]
    if not epochs:
        return None
    return AkdCurve(steps=sum(map(len, epochs)), first=epochs[0][0], first_epoch_mean=sum(epochs[0]) / len(epochs[0]),
                    last_epoch_mean=sum(epochs[-1]) / len(epochs[-1]))


def read_explore(rd: RunDir) -> ExploreDiagnostic | None:
    """The explore stage's diagnostic; ``None`` for a run without an explore stage."""
    if not rd.explore_json.is_file():
        return None
    return from_json(ExploreDiagnostic, _read_json(rd.explore_json), str(rd.explore_json))


def read_wall_seconds(rd: RunDir) -> float | None:
    path = rd.path / WALL_SECONDS
    try:
        return float(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
