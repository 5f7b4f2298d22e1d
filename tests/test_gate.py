"""The rare-class gate, unit level: missing rare classes, support-scaled class limits, the flip rate,
paired bootstrap intervals, resolution notes and the per-class sign test. Pure numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fopro_edge.deploy.gate import Interval, bootstrap_intervals, evaluate_gate, sign_test_p
from fopro_edge.deploy.profiles import GateConfig

# only the rule under test decides: balanced accuracy, flip rate and fidelity opened up
CLASS_RULE_ONLY = GateConfig(max_balanced_accuracy_drop=1.0, max_flip_rate=None, max_mean_kl=None)


def _logits(preds: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((len(preds), k), np.float32)
    out[np.arange(len(preds)), preds] = 5.0
    return out


def _gate(labels, ref, new, names, rare, cfg: GateConfig = GateConfig(), **kw):
    k = len(names)
    ref_logits, logits = _logits(np.asarray(ref), k), _logits(np.asarray(new), k)
    return evaluate_gate(np.asarray(labels), ref_logits, logits, names, rare, cfg, **kw)


def _lose(labels: np.ndarray, cls: int, count: int, to: int) -> np.ndarray:
    """Predictions equal to the labels, except ``count`` images of ``cls`` predicted as ``to``."""
    pred = labels.copy()
    pred[np.flatnonzero(labels == cls)[:count]] = to
    return pred


def _set(per_class: int, classes: int = 10, r2w_classes: int = 4, w2r_classes: int = 2):
    """``per_class`` images per class; the reference misses one image of every class; the candidate
    loses one more image in ``r2w_classes`` classes and recovers the missed one in ``w2r_classes`` others."""
    labels = np.repeat(np.arange(classes), per_class)
    first = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
    ref = labels.copy()
    ref[first] = (labels[first] + 1) % classes
    new = ref.copy()
    new[first[:w2r_classes]] = labels[first[:w2r_classes]]
    new[first[classes - r2w_classes:] + 1] = (labels[first[classes - r2w_classes:]] + 1) % classes
    return labels, ref, new


NAMES10 = [f"c{i}" for i in range(10)]


# --------------------------------------------------------------------------- missing rare class


def test_missing_rare_class_fails_unless_allowed():
    labels = np.zeros(20, np.int64)
    r = _gate(labels, labels, labels, ["head", "rare"], ["rare"], split="val")
    assert not r.passed and r.failing_classes == ("rare",)
    assert r.reasons == ("rare class 'rare': the check split (val) holds no image of it "
                         "(check.allow_missing_rare: true accepts this)",)
    allowed = _gate(labels, labels, labels, ["head", "rare"], ["rare"], GateConfig(allow_missing_rare=True))
    assert allowed.passed and allowed.unchecked_classes == ("rare",) and allowed.failing_classes == ()


def test_missing_non_rare_class_is_only_unchecked():
    labels = np.zeros(20, np.int64)
    r = _gate(labels, labels, labels, ["head", "other"], [])
    assert r.passed and r.unchecked_classes == ("other",)


# --------------------------------------------------------------------------- non-rare classes, scaled to support


def test_small_non_rare_class_may_lose_one_image_not_two():
    names, rare = ["head", "small", "rare"], ["rare"]
    labels = np.repeat([0, 1, 2], [50, 5, 5])
    one = _gate(labels, labels, _lose(labels, 1, 1, 0), names, rare, CLASS_RULE_ONLY)
    assert one.passed, one.reasons
    two = _gate(labels, labels, _lose(labels, 1, 2, 0), names, rare, CLASS_RULE_ONLY)
    assert not two.passed and two.failing_classes == ("small",)
    assert "class 'small': recall 1.000 -> 0.600" in two.reasons[0]


@pytest.mark.parametrize(("lost", "passed"), [(9, True), (10, True), (11, False)])
def test_large_non_rare_class_is_limited_to_ten_points(lost, passed):
    names = ["big", "other"]
    labels = np.repeat([0, 1], [100, 100])
    r = _gate(labels, labels, _lose(labels, 0, lost, 1), names, [], CLASS_RULE_ONLY)
    assert r.passed is passed and r.failing_classes == (() if passed else ("big",))


def test_non_rare_class_limit_none_is_not_checked():
    labels = np.repeat([0, 1], [100, 100])
    cfg = GateConfig(max_balanced_accuracy_drop=1.0, max_flip_rate=None, max_class_recall_drop=None, max_mean_kl=None)
    assert _gate(labels, labels, _lose(labels, 0, 50, 1), ["big", "other"], [], cfg).passed


# --------------------------------------------------------------------------- flip rate


def _wrong_to_other_wrong(changed: int):
    """100 images; the reference misses 10; ``changed`` of those become a different wrong answer."""
    labels = np.repeat(np.arange(10), 10)
    ref = labels.copy()
    missed = np.arange(0, 100, 10)
    ref[missed] = (labels[missed] + 1) % 10
    new = ref.copy()
    new[missed[:changed]] = (labels[missed[:changed]] + 2) % 10
    return labels, ref, new


def test_flip_rate_above_five_percent_fails():
    flips_rule = GateConfig(max_mean_kl=None)
    r = _gate(*_wrong_to_other_wrong(6), NAMES10, ["c9"], flips_rule)
    assert not r.passed and r.failing_classes == ()
    assert r.reasons == ("6/100 decisive predictions changed (0.060 > 0.05)",)
    assert _gate(*_wrong_to_other_wrong(5), NAMES10, ["c9"], flips_rule).passed
    assert _gate(*_wrong_to_other_wrong(6), NAMES10, ["c9"], GateConfig(max_flip_rate=None, max_mean_kl=None)).passed


def test_balanced_accuracy_counts_close_calls_even_when_the_margins_do_not_erode():
    """A weak student has many close calls; an artifact that tips three of them and moves nine others up
    changes no decisive prediction and erodes nothing on average, yet costs 2.5 points of balanced
    accuracy. That limit counts every image, so it still fails."""
    labels = np.repeat(np.arange(10), 12)
    ref = _logits(labels, 10)
    close = np.r_[np.arange(0, 120, 12), 1, 13]  # one close call per class, two more in classes 0 and 1
    ref[close, (labels[close] + 1) % 10] = np.where(np.arange(12) < 3, 4.9, 4.2)  # runner-up near the label's 5.0
    new = ref.copy()
    new[close, labels[close]] += np.r_[[-0.5] * 3, [0.0] * 3, [0.5] * 6]  # three tip over, six move up
    lenient = GateConfig(max_rare_clear_losses=10, max_rare_recall_drop=1.0, max_class_recall_drop=None, max_mean_kl=None)
    r = evaluate_gate(labels, ref, new, NAMES10, ["c0"], lenient)
    assert r.flips.close_calls == 3 and r.flips.decisive_rate(120) == 0.0
    assert not r.rare_margin_shift.eroded
    assert not r.passed and r.reasons == ("balanced accuracy 1.0000 -> 0.9750 (drop 0.0250 > 0.02); recall fell for 'c0', 'c1', 'c2'",)


# --------------------------------------------------------------------------- bootstrap intervals


def _point_drops(labels, ref, new, k):
    """Computed as the bootstrap does (integer counts over the support), so equality is exact."""
    per_class = np.array([((ref == c) & (labels == c)).sum() - ((new == c) & (labels == c)).sum() for c in range(k)])
    per_class = per_class / np.bincount(labels, minlength=k)
    return per_class, per_class.mean(), float((ref != new).sum() / len(labels))


def test_bootstrap_interval_contains_the_point_estimate():
    labels, ref, new = _set(per_class=100)
    cis = bootstrap_intervals(labels, ref, new, 10)
    per_class, bacc, flips = _point_drops(labels, ref, new, 10)
    eps = 1e-12
    assert cis.balanced_accuracy_drop.low - eps <= bacc <= cis.balanced_accuracy_drop.high + eps
    assert cis.balanced_accuracy_drop.width > 0
    assert cis.flip_rate.low - eps <= flips <= cis.flip_rate.high + eps
    for iv, d in zip(cis.class_drops, per_class, strict=True):
        assert iv.low - eps <= d <= iv.high + eps


def test_bootstrap_is_reproducible_and_the_report_carries_it():
    labels, ref, new = _set(per_class=12)
    assert bootstrap_intervals(labels, ref, new, 10) == bootstrap_intervals(labels, ref, new, 10)
    a, b = _gate(labels, ref, new, NAMES10, ["c9"]), _gate(labels, ref, new, NAMES10, ["c9"])
    assert a.balanced_accuracy_drop_ci == b.balanced_accuracy_drop_ci and a.flip_rate_ci == b.flip_rate_ci
    assert [c.drop_ci for c in a.classes] == [c.drop_ci for c in b.classes]
    assert a.balanced_accuracy_drop_ci == bootstrap_intervals(labels, ref, new, 10).balanced_accuracy_drop
    d = json.loads(json.dumps(a.to_dict()))
    assert set(d["balanced_accuracy_drop_ci"]) == {"low", "high"} and d["classes"][9]["drop_ci"] is not None
    assert d["notes"] == list(a.notes)


def test_bootstrap_has_zero_width_when_predictions_are_identical():
    labels, ref, _ = _set(per_class=12)  # the reference is wrong on some images: only the pairing cancels it
    cis = bootstrap_intervals(labels, ref, ref, 10)
    assert cis.balanced_accuracy_drop == cis.flip_rate == Interval(0.0, 0.0)
    assert all(iv == Interval(0.0, 0.0) for iv in cis.class_drops)


def test_bootstrap_narrows_as_the_set_grows():
    small = bootstrap_intervals(*_set(per_class=12), 10)
    large = bootstrap_intervals(*(np.tile(x, 20) for x in _set(per_class=12)), 10)
    assert large.balanced_accuracy_drop.width < 0.5 * small.balanced_accuracy_drop.width
    assert large.flip_rate.width < 0.5 * small.flip_rate.width
    assert large.class_drops[9].width < 0.5 * small.class_drops[9].width


def test_bootstrap_off_and_classes_without_images():
    labels, ref, new = _set(per_class=12)
    assert bootstrap_intervals(labels, ref, new, 10, resamples=0) is None
    cis = bootstrap_intervals(labels, ref, new, 12)
    assert cis.class_drops[10] is None and cis.class_drops[11] is None
    r = _gate(labels, ref, new, NAMES10, ["c9"], GateConfig(bootstrap=0))
    assert r.balanced_accuracy_drop_ci is None and r.notes == () and r.classes[0].drop_ci is None
    assert "| c0 |  | 12 |" in r.to_markdown()


# --------------------------------------------------------------------------- resolution notes


def test_resolution_note_for_a_small_set_not_for_a_large_one():
    lenient = GateConfig(max_rare_clear_losses=1, max_mean_kl=None)  # c9 loses one image clearly
    small = _gate(*_set(per_class=12), NAMES10, ["c9"], lenient)
    assert small.passed, small.reasons  # notes never change the verdict
    assert small.notes[0].startswith("check set too small to resolve a 2-point balanced-accuracy drop: "
                                     "95 % interval of the drop is [")
    assert small.notes[0].endswith("] points (120 images)")
    assert any("10-point recall drop of rare class 'c9'" in n and "(12 images)" in n for n in small.notes)
    md = small.to_markdown()
    assert "## Resolution" in md and small.notes[0] in md
    assert "| Δ 95 % CI |" in md and "| McNemar p |" in md

    large = _gate(*_set(per_class=500), NAMES10, ["c9"], lenient)
    assert large.num_images == 5000 and large.notes == ()
    assert "## Resolution" not in large.to_markdown()


# --------------------------------------------------------------------------- sign test


def test_mcnemar_p_value_matches_scipy():
    from scipy.stats import binomtest

    assert sign_test_p(0, 6) == pytest.approx(2 / 2**6)  # all six discordant pairs one way
    assert sign_test_p(2, 9) == pytest.approx(binomtest(2, 11, 0.5).pvalue)
    assert sign_test_p(3, 3) == 1.0 and sign_test_p(0, 0) == 1.0
    labels = np.repeat([0, 1], [20, 20])
    r = _gate(labels, labels, _lose(labels, 0, 6, 1), ["a", "b"], [], GateConfig(bootstrap=0))
    assert r.classes[0].mcnemar_p == pytest.approx(0.03125) and r.classes[1].mcnemar_p == 1.0
