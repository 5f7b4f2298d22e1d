"""Long-tail statistics of a training split: counts, imbalance ratio, many/medium/few groups, tail, rare set."""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fopro_edge.config import GroupsConfig
from fopro_edge.errors import DataError

GROUPS = ("many", "medium", "few")


@dataclass(frozen=True)
class LongTailStats:
    """Per-class train counts and what follows from them."""

    class_names: tuple[str, ...]
    counts: tuple[int, ...]
    imbalance_ratio: float  # max count / min count (inf when a class has no image)
    groups: tuple[str, ...]  # 'many' | 'medium' | 'few' per class
    rare_classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def rare_class_ids(self) -> tuple[int, ...]:
        index = {n: i for i, n in enumerate(self.class_names)}
        return tuple(index[n] for n in self.rare_classes)

    def group_ids(self, group: str) -> tuple[int, ...]:
        """Class indices in ``group`` ('many', 'medium' or 'few')."""
        if group not in GROUPS:
            raise ValueError(f"unknown group {group!r} (one of {', '.join(GROUPS)})")
        return tuple(i for i, g in enumerate(self.groups) if g == group)

    def group_of(self) -> dict[str, str]:
        """Class name -> 'many' | 'medium' | 'few'."""
        return dict(zip(self.class_names, self.groups))

    def class_priors(self) -> np.ndarray:
        """Train class frequencies (sum to 1), float64."""
        c = np.asarray(self.counts, dtype=np.float64)
        return c / c.sum() if c.sum() > 0 else np.full(len(c), 1.0 / max(len(c), 1))

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_names": list(self.class_names),
            "counts": list(self.counts),
            "imbalance_ratio": self.imbalance_ratio if math.isfinite(self.imbalance_ratio) else None,
            "groups": self.group_of(),
            "group_members": {g: [self.class_names[i] for i in self.group_ids(g)] for g in GROUPS},
            "rare_classes": list(self.rare_classes),
        }


def compute_longtail_stats(
    labels: Sequence[int] | np.ndarray, class_names: Sequence[str], groups: GroupsConfig
) -> LongTailStats:
    """Stats from train labels. Many: count > many_above; few: count < few_below; else medium.

    The rare set is ``groups.rare_classes`` when given, else the few group, else the rarest class.
    """
    names = tuple(str(n) for n in class_names)
    if not names:
        raise DataError("data: no classes (the training split is empty)")
    if groups.few_below > groups.many_above + 1:
        raise DataError(
            f"data.groups: few_below ({groups.few_below}) must be <= many_above + 1 ({groups.many_above + 1}), "
            "or a class could be both 'many' and 'few'"
        )
    counts = np.bincount(np.asarray(labels, dtype=np.int64).reshape(-1), minlength=len(names))
    if len(counts) > len(names):
        raise DataError(f"data: a label ({len(counts) - 1}) is out of range for {len(names)} classes")
    group = tuple(
        "many" if c > groups.many_above else "few" if c < groups.few_below else "medium" for c in counts.tolist()
    )
    lo = int(counts.min())
    ratio = float(counts.max()) / lo if lo > 0 else math.inf

    if groups.rare_classes:
        rare = []
        for name in groups.rare_classes:
            if name not in names:
                close = difflib.get_close_matches(str(name), names, n=1)
                hint = f"did you mean '{close[0]}'? " if close else ""
                raise DataError(
                    f"data.groups.rare_classes: unknown class '{name}' ({hint}known classes: {', '.join(names)})"
                )
            if name not in rare:
                rare.append(name)
        rare_t = tuple(rare)
    else:
        few = [n for n, g in zip(names, group) if g == "few"]
        rare_t = tuple(few) if few else (names[int(np.argmin(counts))],)
    return LongTailStats(names, tuple(int(c) for c in counts), ratio, group, rare_t)


def tail_members(
    groups: Sequence[str | None], counts: Sequence[int | None], tail_below: int | None = None
) -> tuple[bool, ...] | None:
    """Per class, whether it is in the tail: train count below ``tail_below``; without it, the
    medium and few groups (count <= many_above). ``None`` when a count the threshold needs is unknown."""
    if tail_below is None:
        return tuple(g in ("medium", "few") for g in groups)
    known = [int(c) for c in counts if c is not None]
    return tuple(c < tail_below for c in known) if len(known) == len(counts) else None


def longtail_counts(max_per_class: int, imbalance_ratio: float, num_classes: int) -> list[int]:
    """Exponential profile ``n_k = floor(max_per_class * ratio^(-k/(C-1)))``, at least 1 each."""
    if num_classes == 1:
        return [max(1, int(max_per_class))]
    return [
        max(1, math.floor(max_per_class * imbalance_ratio ** (-k / (num_classes - 1)) + 1e-9))
        for k in range(num_classes)
    ]
