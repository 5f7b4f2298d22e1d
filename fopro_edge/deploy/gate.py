"""The rare-class gate: an artifact's predictions against the PyTorch student's, image by image.

Pure functions over labels, predictions and logits (numpy only: ``verify`` runs this on a device
with nothing but the runtime). A class with no image in the check split has no recall (``None``),
is left out of every mean and is listed as unchecked; a rare one also fails the gate unless
``allow_missing_rare``. The verdict is taken on point estimates, except the rare-margin test, which
is a paired interval; bootstrap intervals and per-class sign tests say how much the check set can
resolve.

A *close call* is an image whose two most probable classes under the PyTorch student are less than
``close_call_gap`` of softmax probability apart. Any INT8 rounding can tip such an image either
way, so close calls are judged as a group, never counted one by one: the balanced-accuracy limit
counts every image; the per-class recall limits and the flip-rate limit count the decisive images
(not close calls). The rare classes are judged by two rules: no *clear* rare loss (a rare image the
PyTorch student gets right outside a close call and the artifact gets wrong; at most
``max_rare_clear_losses``), and no erosion of the rare margins: the paired bootstrap interval of the
rare images' margin shift (true-class logit minus the strongest other, artifact minus PyTorch, beyond
the common scale of all images' margins, which changes no prediction) must not lie wholly below
``-rare_margin_tolerance`` times the rare margins' mean size (a tiny shift is no erosion, however
significant). A lost rare toss-up without such a shift is rounding noise, which also tips other close calls
the other way.

Fidelity (``max_mean_kl``): the mean KL divergence of the artifact's softmax from the PyTorch
student's over every check image. It needs no threshold in logits (it is read in the student's own
probabilities, which ``predict`` reports and a clinician thresholds) and fits no scale or offset to
the artifact first: a copy whose logits are rescaled or shifted per class is unfaithful even where
every argmax survives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fopro_edge.bootstrap import Strata, percentile_interval
from fopro_edge.deploy.profiles import GateConfig

BOOTSTRAP_SEED = 0  # fixed, so a report is reproducible


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    @property
    def width(self) -> float:
        return self.high - self.low


@dataclass(frozen=True)
class Intervals:
    """Percentile intervals of the drops (reference minus candidate) and of the flip rate."""

    balanced_accuracy_drop: Interval
    class_drops: tuple[Interval | None, ...]  # None: no image of the class
    flip_rate: Interval


@dataclass(frozen=True)
class ClassRow:
    index: int
    name: str
    rare: bool
    support: int
    reference_recall: float | None
    recall: float | None
    right_to_wrong: int
    wrong_to_right: int
    failed: bool
    drop_ci: Interval | None = None  # interval of the recall drop (reference minus artifact)
    mcnemar_p: float | None = None  # exact sign test, right->wrong vs wrong->right

    @property
    def delta(self) -> float | None:
        if self.recall is None or self.reference_recall is None:
            return None
        return self.recall - self.reference_recall


@dataclass(frozen=True)
class Flips:
    """Images whose prediction changed; ``other`` = wrong before and wrong (differently) after."""

    total: int
    right_to_wrong: int
    wrong_to_right: int
    other: int
    rare_total: int
    rare_right_to_wrong: int
    rare_wrong_to_right: int
    rare_close_calls: int = 0  # of rare_right_to_wrong: close calls of the PyTorch student
    rare_close_calls_gained: int = 0  # of rare_wrong_to_right: close calls of the PyTorch student
    close_calls: int = 0  # of total: close calls of the PyTorch student
    close_call_images: int = 0  # images that are close calls, changed or not

    def decisive_rate(self, images: int) -> float:
        """Changed predictions among the images that are not close calls."""
        n = images - self.close_call_images
        return (self.total - self.close_calls) / n if n > 0 else 0.0

    @property
    def rare_clear_right_to_wrong(self) -> int:
        """Rare images the PyTorch student got clearly right that the artifact gets wrong."""
        return self.rare_right_to_wrong - self.rare_close_calls

    def rare_text(self) -> str:
        """Rare right->wrong flips for a table cell, e.g. ``2`` or ``3 (2 close calls)``."""
        n, c = self.rare_right_to_wrong, self.rare_close_calls
        return f"{n} ({c} close call{'s' if c > 1 else ''})" if c else str(n)


@dataclass(frozen=True)
class MarginShift:
    """Mean change of the rare images' true-class margin (logits, artifact minus PyTorch, beyond the
    common ``scale`` of all images' margins), with its paired bootstrap interval; ``None`` interval
    when the bootstrap is off."""

    images: int
    mean: float
    interval: Interval | None
    scale: float = 1.0
    floor: float = 0.0  # logits: a shift this small is no erosion (the tolerance times the rare margins' size)

    @property
    def eroded(self) -> bool | None:
        """The whole interval lies below ``-floor``; ``None`` without an interval (bootstrap off)."""
        return None if self.interval is None else self.interval.high < -self.floor


@dataclass(frozen=True)
class LostImage:
    """A rare-class image that went right -> wrong."""

    index: int  # position in the check split
    label: str
    predicted: str
    reference_gap: float  # the PyTorch student's probability of the label minus its runner-up's
    close_call: bool


@dataclass(frozen=True)
class Scores:
    balanced_accuracy: float
    accuracy: float
    rare_recall: float | None  # mean recall over the rare classes that have images


@dataclass(frozen=True)
class Parity:
    """How far the artifact's outputs are from the PyTorch student's over the check images."""

    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    argmax_agreement: float
    mean_kl: float = 0.0  # KL(student softmax || artifact softmax), nats, averaged over images
    max_kl: float = 0.0  # the largest per-image KL


@dataclass(frozen=True)
class GateReport:
    step: str
    artifact: str
    runtime: str
    precision: str
    split: str
    num_images: int
    passed: bool
    reasons: tuple[str, ...]
    failing_classes: tuple[str, ...]
    unchecked_classes: tuple[str, ...]
    reference: Scores
    candidate: Scores
    flips: Flips
    parity: Parity
    classes: tuple[ClassRow, ...]
    thresholds: dict[str, Any] = field(default_factory=dict)
    runtime_info: dict[str, Any] = field(default_factory=dict)
    parity_checked: bool = False
    balanced_accuracy_drop_ci: Interval | None = None
    flip_rate_ci: Interval | None = None
    notes: tuple[str, ...] = ()  # what the check set is too small to resolve; never changes the verdict
    rare_lost: tuple[LostImage, ...] = ()  # every rare right->wrong image
    rare_margin_shift: MarginShift | None = None  # None: no rare image in the split

    @property
    def status(self) -> str:
        return "PASSED" if self.passed else "FAILED"

    @property
    def balanced_accuracy_drop(self) -> float:
        return self.reference.balanced_accuracy - self.candidate.balanced_accuracy

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status
        d["balanced_accuracy_drop"] = self.balanced_accuracy_drop
        for row, cls in zip(d["classes"], self.classes, strict=True):
            row["delta"] = cls.delta
        return d

    def to_markdown(self) -> str:
        return render_markdown(self)


def recalls(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> list[float | None]:
    """Per-class recall; ``None`` for a class with no image."""
    out: list[float | None] = []
    for k in range(num_classes):
        mask = labels == k
        n = int(mask.sum())
        out.append(float((preds[mask] == k).mean()) if n else None)
    return out


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def scores(labels: np.ndarray, preds: np.ndarray, num_classes: int, rare_ids: Sequence[int]) -> Scores:
    r = recalls(labels, preds, num_classes)
    return Scores(
        balanced_accuracy=_mean(r) or 0.0,
        accuracy=float((labels == preds).mean()) if len(labels) else 0.0,
        rare_recall=_mean([r[k] for k in rare_ids]),
    )


def rare_class_score(labels: np.ndarray, preds: np.ndarray, num_classes: int, rare_ids: Sequence[int]) -> float:
    """The scalar this project optimises when a tool wants one metric (NNCF accuracy control):
    the mean recall of the rare classes, or the balanced accuracy when no rare image is present."""
    s = scores(np.asarray(labels), np.asarray(preds), num_classes, rare_ids)
    return s.rare_recall if s.rare_recall is not None else s.balanced_accuracy


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def reference_gaps(labels: np.ndarray, reference_logits: np.ndarray) -> np.ndarray:
    """Per image: the reference's softmax probability of the label minus that of its strongest other
    class (negative where the reference is wrong)."""
    return true_class_margins(labels, softmax(reference_logits))


def true_class_margins(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Per image: the logit of the label minus the largest other logit (negative where wrong)."""
    z = np.array(logits, np.float64)
    rows = np.arange(len(z))
    true = z[rows, labels].copy()
    z[rows, labels] = -np.inf
    return true - z.max(1) if z.shape[1] > 1 else true


def margin_shift(
    labels: np.ndarray,
    reference_logits: np.ndarray,
    logits: np.ndarray,
    mask: np.ndarray,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    tolerance: float = 0.0,
    seed: int = BOOTSTRAP_SEED,
) -> MarginShift | None:
    """How far the artifact moved the true-class margins of the images in ``mask`` beyond the common
    scale of all images: ``m_artifact - scale * m_reference`` averaged, ``scale`` the least-squares slope
    over every image (logits that shrink or grow together change no prediction). Percentile bootstrap
    interval of the mean over the masked images; ``None`` when ``mask`` selects none."""
    idx = np.flatnonzero(mask)
    if not len(idx):
        return None
    ref, new = true_class_margins(labels, reference_logits), true_class_margins(labels, logits)
    power = float(ref @ ref)
    scale = float(ref @ new) / power if power > 0 else 1.0
    delta = (new - scale * ref)[idx]
    interval = None
    if resamples > 0:
        strata, means = Strata.of(np.zeros(len(delta), np.int64)), np.empty(resamples)  # one stratum: a plain bootstrap
        for rows, draws in strata.chunks(np.random.default_rng(seed), resamples):
            means[rows] = delta[draws].mean(axis=1)
        interval = Interval(*percentile_interval(means, confidence))
    floor = tolerance * float(np.abs(ref[idx]).mean())
    return MarginShift(images=len(idx), mean=float(delta.mean()), interval=interval, scale=scale, floor=floor)


def count_flips(labels: np.ndarray, reference_logits: np.ndarray, logits: np.ndarray, is_rare: np.ndarray,
                close: np.ndarray, thresholds: GateConfig) -> tuple[Flips, MarginShift | None]:
    """The changed predictions as the gate counts them, with the rare margin shift the rare-margin
    test judges (module docstring)."""
    ref_pred, pred = reference_logits.argmax(1), logits.argmax(1)
    ref_ok, ok = ref_pred == labels, pred == labels
    changed = ref_pred != pred
    r2w, w2r = ref_ok & ~ok, ~ref_ok & ok
    shift = margin_shift(labels, reference_logits, logits, is_rare, resamples=thresholds.bootstrap,
                         confidence=thresholds.confidence, tolerance=thresholds.rare_margin_tolerance)
    flips = Flips(
        total=int(changed.sum()),
        right_to_wrong=int(r2w.sum()),
        wrong_to_right=int(w2r.sum()),
        other=int((changed & ~ref_ok & ~ok).sum()),
        rare_total=int((changed & is_rare).sum()),
        rare_right_to_wrong=int((r2w & is_rare).sum()),
        rare_wrong_to_right=int((w2r & is_rare).sum()),
        rare_close_calls=int((r2w & is_rare & close).sum()),
        rare_close_calls_gained=int((w2r & is_rare & close).sum()),
        close_calls=int((changed & close).sum()),
        close_call_images=int(close.sum()),
    )
    return flips, shift


def close_calls(reference_logits: np.ndarray, gap: float) -> np.ndarray:
    """Images whose two most probable reference classes are less than ``gap`` apart (module docstring)."""
    z = np.asarray(reference_logits, np.float64)
    if z.ndim != 2 or z.shape[1] < 2 or gap <= 0:
        return np.zeros(len(z), bool)
    p = np.sort(softmax(z), axis=1)
    return p[:, -1] - p[:, -2] < gap


def softmax_kl(reference_logits: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Per image: KL(softmax(reference) || softmax(logits)) in nats, from log-softmax in float64 (no
    probability is rounded to 0, so a confident artifact that disagrees gets a large, finite value)."""
    def log_softmax(z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, np.float64)
        z = z - z.max(1, keepdims=True)
        return z - np.log(np.exp(z).sum(1, keepdims=True))

    lp, lq = log_softmax(reference_logits), log_softmax(logits)
    return np.maximum((np.exp(lp) * (lp - lq)).sum(1), 0.0)


def parity(reference_logits: np.ndarray, logits: np.ndarray, kl: np.ndarray) -> Parity:
    """``kl``: :func:`softmax_kl` of the same logits."""
    diff = np.abs(np.asarray(reference_logits, np.float64) - np.asarray(logits, np.float64))
    return Parity(
        max_abs_logit_diff=float(diff.max()) if diff.size else 0.0,
        mean_abs_logit_diff=float(diff.mean()) if diff.size else 0.0,
        argmax_agreement=float((reference_logits.argmax(1) == logits.argmax(1)).mean()) if len(logits) else 1.0,
        mean_kl=float(kl.mean()) if kl.size else 0.0,
        max_kl=float(kl.max()) if kl.size else 0.0,
    )


def bootstrap_intervals(
    labels: np.ndarray,
    reference_preds: np.ndarray,
    preds: np.ndarray,
    num_classes: int,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = BOOTSTRAP_SEED,
) -> Intervals | None:
    """Paired bootstrap stratified by class: images are resampled with replacement within each class,
    the same draws for both predictions. ``None`` when ``resamples`` is 0 or there is no image."""
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    if resamples <= 0 or n == 0:
        return None
    strata = Strata.of(labels, num_classes)
    y, ref, new = strata.labels, strata.sorted(reference_preds), strata.sorted(preds)
    present = strata.present
    support, starts = strata.support[present], strata.starts[present]
    lost = (ref == y).astype(np.int8) - (new == y).astype(np.int8)  # +1 right->wrong, -1 wrong->right
    changed = (ref != new).astype(np.int8)
    class_drops = np.empty((resamples, len(present)))
    flip_rates = np.empty(resamples)
    for rows, idx in strata.chunks(np.random.default_rng(seed), resamples):
        class_drops[rows] = np.add.reduceat(lost[idx], starts, axis=1, dtype=np.int32) / support
        flip_rates[rows] = changed[idx].sum(axis=1, dtype=np.int32) / n

    def interval(x: np.ndarray) -> Interval:
        return Interval(*percentile_interval(x, confidence))

    per_class: list[Interval | None] = [None] * num_classes
    for j, k in enumerate(present):
        per_class[k] = interval(class_drops[:, j])
    return Intervals(interval(class_drops.mean(axis=1)), tuple(per_class), interval(flip_rates))


def sign_test_p(right_to_wrong: int, wrong_to_right: int) -> float:
    """Exact two-sided McNemar test: binomial on the discordant pairs, p = 1/2; 1.0 with none."""
    n = right_to_wrong + wrong_to_right
    if n == 0:
        return 1.0
    from math import comb

    tail = sum(comb(n, i) for i in range(min(right_to_wrong, wrong_to_right) + 1))
    return min(1.0, 2.0 * tail / 2**n)  # p = 1/2 is symmetric: twice the smaller tail


def _points(iv: Interval, sign: float = 1.0, fmt: str = ".1f") -> str:
    """An interval in points; ``sign=-1`` turns a drop into a change (artifact minus reference)."""
    lo, hi = sorted((sign * iv.low, sign * iv.high))
    return f"[{round(100 * lo, 1) + 0.0:{fmt}}, {round(100 * hi, 1) + 0.0:{fmt}}]"


def resolution_notes(
    cis: Intervals,
    support: np.ndarray,
    names: Sequence[str],
    rare_ids: Sequence[int],
    thresholds: GateConfig,
) -> tuple[str, ...]:
    """Thresholds narrower than the interval of the drop they limit."""
    conf = f"{100 * thresholds.confidence:g} %"
    notes: list[str] = []
    t = thresholds.max_balanced_accuracy_drop
    if cis.balanced_accuracy_drop.width > t + 1e-12:
        notes.append(
            f"check set too small to resolve a {100 * t:g}-point balanced-accuracy drop: {conf} interval of the "
            f"drop is {_points(cis.balanced_accuracy_drop)} points ({int(support.sum())} images)"
        )
    t = thresholds.max_rare_recall_drop
    for k in rare_ids:
        iv = cis.class_drops[k]
        if iv is not None and iv.width > t + 1e-12:
            notes.append(
                f"check set too small to resolve a {100 * t:g}-point recall drop of rare class '{names[k]}': "
                f"{conf} interval of the drop is {_points(iv)} points ({int(support[k])} images)"
            )
    return tuple(notes)


def evaluate_gate(
    labels: np.ndarray,
    reference_logits: np.ndarray,
    logits: np.ndarray,
    class_names: Sequence[str],
    rare_classes: Sequence[str],
    thresholds: GateConfig,
    *,
    step: str = "",
    artifact: str = "",
    runtime: str = "",
    precision: str = "",
    split: str = "",
    check_parity: bool = False,
    runtime_info: dict[str, Any] | None = None,
) -> GateReport:
    """Compare an artifact's logits with the PyTorch student's on the same labelled images.

    ``check_parity``: also apply ``thresholds.max_fp32_logit_diff`` (for steps that should match
    PyTorch numerically: fp32 artifacts run in f32).
    """
    labels = np.asarray(labels, dtype=np.int64)
    reference_logits = np.asarray(reference_logits, dtype=np.float32)
    logits = np.asarray(logits, dtype=np.float32)
    if reference_logits.shape != logits.shape or len(labels) != len(logits):
        raise ValueError(f"shape mismatch: labels {labels.shape}, reference {reference_logits.shape}, artifact {logits.shape}")
    names = [str(c) for c in class_names]
    num_classes = len(names)
    index = {n: i for i, n in enumerate(names)}
    rare_ids = [index[n] for n in rare_classes if n in index]
    rare_set = set(rare_ids)

    ref_pred, pred = reference_logits.argmax(1), logits.argmax(1)
    ref_ok, ok = ref_pred == labels, pred == labels
    r2w_mask, w2r_mask = ref_ok & ~ok, ~ref_ok & ok
    is_rare = np.isin(labels, list(rare_set)) if rare_set else np.zeros(len(labels), bool)
    gaps = reference_gaps(labels, reference_logits) if len(labels) else np.zeros(0)
    close = close_calls(reference_logits, thresholds.close_call_gap)
    lost = np.flatnonzero(r2w_mask & is_rare)
    flips, shift = count_flips(labels, reference_logits, logits, is_rare, close, thresholds)
    ref_rec, rec = recalls(labels, ref_pred, num_classes), recalls(labels, pred, num_classes)
    support = np.bincount(labels, minlength=num_classes)
    r2w = np.bincount(labels[r2w_mask], minlength=num_classes)
    w2r = np.bincount(labels[w2r_mask], minlength=num_classes)

    reasons: list[str] = []
    failed: set[int] = set()
    drops = {k: ref_rec[k] - rec[k] for k in range(num_classes) if rec[k] is not None and ref_rec[k] is not None}
    decisive = ~close
    net = np.bincount(labels[r2w_mask & decisive], minlength=num_classes) - np.bincount(
        labels[w2r_mask & decisive], minlength=num_classes)
    decisive_drops = {k: net[k] / support[k] for k in drops}  # close-call changes left out

    def recall_text(k: int) -> str:
        d, dd = drops[k], decisive_drops[k]
        return (f"recall {ref_rec[k]:.3f} -> {rec[k]:.3f} (drop {d:.3f}"
                + (f"; {dd:.3f} from decisive images" if abs(dd - d) > 1e-12 else "") + ")")

    if not thresholds.allow_missing_rare:
        for k in rare_ids:
            if support[k] == 0:
                failed.add(k)
                reasons.append(
                    f"rare class '{names[k]}': the check split{f' ({split})' if split else ''} holds no image of it "
                    "(check.allow_missing_rare: true accepts this)"
                )
    for k in rare_ids:
        if k in drops and decisive_drops[k] > thresholds.max_rare_recall_drop + 1e-12:
            failed.add(k)
            reasons.append(f"rare class '{names[k]}': {recall_text(k)} > {thresholds.max_rare_recall_drop:g}")
    if flips.rare_clear_right_to_wrong > thresholds.max_rare_clear_losses:
        clear = r2w_mask & is_rare & ~close
        hit = [k for k in rare_ids if clear[labels == k].any()]
        failed.update(hit)
        reasons.append(
            f"{flips.rare_clear_right_to_wrong} rare-class image(s) the PyTorch student got clearly right (top-2 gap "
            f"at least {thresholds.close_call_gap:g}) went right -> wrong (> {thresholds.max_rare_clear_losses}): "
            + ", ".join(f"'{names[k]}' {int(np.sum(clear & (labels == k)))}" for k in hit)
        )
    net_close = flips.rare_close_calls - flips.rare_close_calls_gained
    if thresholds.rare_margin_test and shift is not None and (shift.eroded or (shift.eroded is None and net_close > 0)):
        hit = [k for k in rare_ids if r2w[k] > 0]
        failed.update(hit)
        reasons.append(
            (f"the rare classes' margins eroded: {_shift_text(shift)}, the whole {100 * thresholds.confidence:g} % "
             f"interval below -{shift.floor:.2g} ({100 * thresholds.rare_margin_tolerance:g} % of the rare margins' "
             "mean size)" if shift.eroded else
             f"{net_close} rare close call(s) lost beyond those gained, and no interval to call it noise (check.bootstrap: 0)")
            + f"; {flips.rare_close_calls} rare close call(s) lost, {flips.rare_close_calls_gained} gained"
        )
    if thresholds.max_class_recall_drop is not None:
        for k in drops:
            limit = max(thresholds.max_class_recall_drop, thresholds.class_flip_allowance / support[k])
            if k not in rare_set and decisive_drops[k] > limit + 1e-12:
                failed.add(k)
                reasons.append(
                    f"class '{names[k]}': {recall_text(k)} > {limit:.3g}: the larger of "
                    f"{thresholds.max_class_recall_drop:g} and {thresholds.class_flip_allowance} of {int(support[k])} images"
                )
    ref_scores = scores(labels, ref_pred, num_classes, rare_ids)
    new_scores = scores(labels, pred, num_classes, rare_ids)
    bacc_drop = ref_scores.balanced_accuracy - new_scores.balanced_accuracy
    if bacc_drop > thresholds.max_balanced_accuracy_drop + 1e-12:
        dropped = sorted((k for k, d in drops.items() if d > 0), key=lambda k: -drops[k])
        failed.update(dropped)
        reasons.append(
            f"balanced accuracy {ref_scores.balanced_accuracy:.4f} -> {new_scores.balanced_accuracy:.4f} "
            f"(drop {bacc_drop:.4f} > {thresholds.max_balanced_accuracy_drop:g}); recall fell for "
            + (", ".join(f"'{names[k]}'" for k in dropped) or "no single class")
        )
    if thresholds.max_flip_rate is not None and len(labels):
        rate = flips.decisive_rate(len(labels))
        if rate > thresholds.max_flip_rate + 1e-12:
            reasons.append(
                f"{flips.total - flips.close_calls}/{len(labels) - flips.close_call_images} decisive predictions changed "
                f"({rate:.3f} > {thresholds.max_flip_rate:g})"
                + (f"; {flips.close_calls} close call(s) more" if flips.close_calls else ""))
    kl = softmax_kl(reference_logits, logits)
    par = parity(reference_logits, logits, kl)
    if thresholds.max_mean_kl is not None and par.mean_kl > thresholds.max_mean_kl:
        worst = [k for k in range(num_classes) if support[k] and kl[labels == k].mean() > thresholds.max_mean_kl]
        failed.update(worst)
        reasons.append(
            f"outputs unfaithful to the PyTorch student: mean softmax KL {par.mean_kl:.3g} nats > "
            f"{thresholds.max_mean_kl:g} (largest {par.max_kl:.3g}; mean |logit diff| {par.mean_abs_logit_diff:.3g})"
            + (f"; above the limit on the images of {', '.join(repr(names[k]) for k in worst)}" if worst else "")
        )
    if check_parity and thresholds.max_fp32_logit_diff is not None and par.max_abs_logit_diff > thresholds.max_fp32_logit_diff:
        reasons.append(
            f"max |logit diff| vs PyTorch {par.max_abs_logit_diff:.3g} > {thresholds.max_fp32_logit_diff:g} "
            "(an fp32 artifact should match the student numerically)"
        )

    cis = bootstrap_intervals(labels, ref_pred, pred, num_classes, resamples=thresholds.bootstrap,
                              confidence=thresholds.confidence)
    rows = tuple(
        ClassRow(
            index=k,
            name=names[k],
            rare=k in rare_set,
            support=int(support[k]),
            reference_recall=ref_rec[k],
            recall=rec[k],
            right_to_wrong=int(r2w[k]),
            wrong_to_right=int(w2r[k]),
            failed=k in failed,
            drop_ci=cis.class_drops[k] if cis else None,
            mcnemar_p=sign_test_p(int(r2w[k]), int(w2r[k])) if support[k] else None,
        )
        for k in range(num_classes)
    )
    return GateReport(
        step=step,
        artifact=artifact,
        runtime=runtime,
        precision=precision,
        split=split,
        num_images=int(len(labels)),
        passed=not reasons,
        reasons=tuple(reasons),
        failing_classes=tuple(names[k] for k in sorted(failed)),
        unchecked_classes=tuple(names[k] for k in range(num_classes) if support[k] == 0),
        reference=ref_scores,
        candidate=new_scores,
        flips=flips,
        parity=par,
        classes=rows,
        thresholds=asdict(thresholds),
        runtime_info=dict(runtime_info or {}),
        parity_checked=check_parity,
        balanced_accuracy_drop_ci=cis.balanced_accuracy_drop if cis else None,
        flip_rate_ci=cis.flip_rate if cis else None,
        notes=resolution_notes(cis, support, names, rare_ids, thresholds) if cis else (),
        rare_lost=tuple(LostImage(int(i), names[labels[i]], names[pred[i]], round(float(gaps[i]), 4), bool(close[i]))
                        for i in lost),
        rare_margin_shift=shift,
    )


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _ci(iv: Interval | None, sign: float = 1.0) -> str:
    return "n/a" if iv is None else _points(iv, sign, "+.1f")


def _p(p: float | None) -> str:
    return "n/a" if p is None else (f"{p:.3f}" if p >= 0.001 else "<0.001")


def _shift_text(s: MarginShift) -> str:
    ci = "no interval" if s.interval is None else f"CI [{s.interval.low:+.2f}, {s.interval.high:+.2f}]"
    return f"mean margin shift {s.mean:+.2f} logits, {ci}, {s.images} images, beyond a common scale of {s.scale:.3f}"


def render_markdown(r: GateReport) -> str:
    """The check report: verdict, reasons, resolution notes, summary and one row per class."""
    conf = f"{100 * r.thresholds.get('confidence', 0.95):g} %"
    flip_rate = r.flips.total / r.num_images if r.num_images else 0.0
    lines = [
        f"# Check: {r.step} — {r.status}",
        "",
        f"- artifact: `{r.artifact}`",
        f"- runtime: {r.runtime} ({r.precision})"
        + "".join(f"; {k}: {v}" for k, v in r.runtime_info.items() if not isinstance(v, (dict, list))),
        f"- check split: {r.split}, {r.num_images} images, compared image by image with the PyTorch student",
        f"- balanced accuracy: {_pct(r.reference.balanced_accuracy)} -> {_pct(r.candidate.balanced_accuracy)} %"
        f" (drop {100 * r.balanced_accuracy_drop:.2f} pt"
        + (f", {conf} CI {_ci(r.balanced_accuracy_drop_ci)} pt)" if r.balanced_accuracy_drop_ci else ")"),
        f"- rare-class recall (mean): {_pct(r.reference.rare_recall)} -> {_pct(r.candidate.rare_recall)} %",
        f"- flips: {r.flips.total} changed ({r.flips.right_to_wrong} right->wrong, {r.flips.wrong_to_right} "
        f"wrong->right); rare-class images: {r.flips.rare_total} changed ({r.flips.rare_right_to_wrong} right->wrong, "
        f"{r.flips.rare_wrong_to_right} wrong->right"
        + (f"; {r.flips.rare_close_calls} of the right->wrong were close calls" if r.flips.rare_close_calls else "")
        + f"); flip rate {_pct(flip_rate)} %"
        + (f" ({conf} CI {_points(r.flip_rate_ci)} %)" if r.flip_rate_ci else "")
        + (f"; {r.flips.close_calls} of the {r.flips.total} changes were close calls ({r.flips.close_call_images} "
           f"close-call images): decisive flip rate {_pct(r.flips.decisive_rate(r.num_images))} %"
           if r.flips.close_call_images else ""),
        *([f"- rare-class margin shift (artifact minus PyTorch, true-class logit minus the strongest other): "
           f"{_shift_text(r.rare_margin_shift)}: "
           + {True: "eroded", False: "no systematic erosion (a lost rare close call is rounding noise)",
              None: "no interval (bootstrap off)"}[r.rare_margin_shift.eroded]] if r.rare_margin_shift else []),
        f"- fidelity: mean softmax KL {r.parity.mean_kl:.3g} nats (largest {r.parity.max_kl:.3g}); max |logit diff| "
        f"{r.parity.max_abs_logit_diff:.3g}, mean {r.parity.mean_abs_logit_diff:.3g}; argmax agreement "
        f"{100 * r.parity.argmax_agreement:.1f} %",
    ]
    if r.unchecked_classes:
        lines.append(f"- not checked (no image in the split): {', '.join(r.unchecked_classes)}")
    if r.reasons:
        lines += ["", "## Why it failed", ""] + [f"- {x}" for x in r.reasons]
        lines.append(f"- failing classes: {', '.join(r.failing_classes) or '(none: a global threshold)'}")
    if r.notes:
        lines += ["", "## Resolution", ""] + [f"- {x}" for x in r.notes]
    if r.rare_lost:
        gap = r.thresholds.get("close_call_gap", 0.0)
        lines += ["", "## Rare images that went right→wrong", "",
                  f"PyTorch gap: its probability of the label minus its runner-up's. Below {gap:g} the image is a close "
                  "call (any rounding can tip it): close calls are judged together, by the rare-margin test (the "
                  "margin shift above), not one by one; a clear loss fails the gate.", "",
                  "| image | class | artifact predicts | PyTorch gap | kind |", "|---:|---|---|---:|---|"]
        lines += [f"| {x.index} | {x.label} | {x.predicted} | {x.reference_gap:.3f} | "
                  f"{'close call' if x.close_call else 'clear loss'} |" for x in r.rare_lost]
    lines += [
        "",
        "## Per class",
        "",
        f"| class | rare | images | recall PyTorch % | recall artifact % | Δ pt | Δ {conf} CI | right→wrong "
        "| wrong→right | McNemar p | status |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in r.classes:
        delta = "n/a" if c.delta is None else f"{100 * c.delta:+.1f}"
        lines.append(
            f"| {c.name} | {'yes' if c.rare else ''} | {c.support} | {_pct(c.reference_recall)} | {_pct(c.recall)} | "
            f"{delta} | {_ci(c.drop_ci, -1.0)} | {c.right_to_wrong} | {c.wrong_to_right} | {_p(c.mcnemar_p)} | "
            f"{'FAIL' if c.failed else ('—' if c.support == 0 else 'ok')} |"
        )
    t = r.thresholds
    lines += [
        "",
        "Thresholds: max balanced-accuracy drop {}, max clear rare losses {} (right→wrong with a PyTorch top-2 gap of "
        "at least {}), rare-margin test {} (fails when the interval of the rare margin shift lies below -{} x the rare margins' mean size), max rare "
        "recall drop {} (decisive images), rare class without images {}, max non-rare recall drop {} (or {} image(s) of "
        "the class), max flip rate {} (decisive images), max mean softmax KL {}, fp32 max |logit diff| {}{}. "
        "Intervals: paired bootstrap stratified by class, {} resamples; the other rules use the point estimates.".format(
            t.get("max_balanced_accuracy_drop"), t.get("max_rare_clear_losses"), t.get("close_call_gap", 0.0),
            "on" if t.get("rare_margin_test", True) else "off", t.get("rare_margin_tolerance"), t.get("max_rare_recall_drop"),
            "allowed" if t.get("allow_missing_rare") else "fails",
            t.get("max_class_recall_drop"), t.get("class_flip_allowance"), t.get("max_flip_rate"), t.get("max_mean_kl"),
            t.get("max_fp32_logit_diff"), "" if r.parity_checked else " (not applied to this step)",
            t.get("bootstrap") or "0 (off)",
        ),
        "",
    ]
    return "\n".join(lines)
