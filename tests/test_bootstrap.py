"""The shared class-stratified bootstrap, its two-level variant over seeds, Student's t and the tail group."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fopro_edge.ablate.bootstrap import ClassLayout, Pair, paired_bootstrap
from fopro_edge.ablate.stats import paired_t_interval
from fopro_edge.bootstrap import Strata, seed_slots, slot_counts, two_level_means
from fopro_edge.config import GroupsConfig, load_recipe
from fopro_edge.data.longtail import compute_longtail_stats, tail_members
from fopro_edge.deploy.gate import margin_shift, true_class_margins
from fopro_edge.distill.metrics import classification_metrics

SMOKE = Path(__file__).resolve().parents[1] / "recipes" / "smoke_synthetic.yaml"
PER_CLASS = 50
LAYOUT = ClassLayout(("many", "medium", "few", "few"), (False, False, True, True))


def test_stratified_resamples_keep_every_class_and_do_not_depend_on_the_chunks():
    labels = np.random.default_rng(1).integers(0, 5, 301)
    strata = Strata.of(labels, 7)
    whole = np.concatenate([idx for _, idx in strata.chunks(np.random.default_rng(3), 40)])
    small = np.concatenate([idx for _, idx in strata.chunks(np.random.default_rng(3), 40, chunk_draws=900)])
    assert whole.shape == (40, 301) and np.array_equal(whole, small)
    assert (strata.labels[whole] == strata.labels).all() and strata.present.tolist() == [0, 1, 2, 3, 4]
    one = strata.resample(np.random.default_rng(0))
    assert np.array_equal(np.bincount(labels[one], minlength=7), strata.support) and (np.diff(one) >= 0).all()


def test_the_gate_margin_shift_keeps_its_draws():
    """The shared resampler draws what the gate drew before it: one uniform draw per image and resample."""
    rng = np.random.default_rng(2)
    labels, ref, new = rng.integers(0, 4, 90), rng.normal(size=(90, 4)), rng.normal(size=(90, 4))
    mask = labels == 1
    shift = margin_shift(labels, ref, new, mask, resamples=700, tolerance=0.0)
    m_ref, m_new = true_class_margins(labels, ref), true_class_margins(labels, new)
    delta = (m_new - (m_ref @ m_new) / (m_ref @ m_ref) * m_ref)[mask]
    means = delta[np.random.default_rng(0).integers(0, len(delta), size=(700, len(delta)))].mean(axis=1)
    assert (shift.interval.low, shift.interval.high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])), rel=1e-12)


def test_two_level_means_give_each_slot_its_own_resample():
    slots = np.array([[0, 0], [1, 0], [1, 1]])
    assert slot_counts(slots, 2).tolist() == [3, 3]
    means = two_level_means(slots, [np.array([1.0, 2.0, 3.0]), np.array([10.0, 20.0, 30.0])])
    assert means.tolist() == [1.5, (10 + 3) / 2, 25.0]
    undefined = two_level_means(slots, [np.array([1.0, 2.0, 3.0]), None])
    assert undefined[:2].tolist() == [1.5, 3.0] and np.isnan(undefined[2])
    drawn = seed_slots(np.random.default_rng(0), 3, 1000)
    assert drawn.shape == (1000, 3) and set(np.unique(drawn)) == {0, 1, 2}


def _pairs(changes: list[tuple[int, int]]) -> list[Pair]:
    """Per seed, the method is the baseline with ``fix`` wrong images per class made right and
    ``break_`` right ones made wrong: the same number of changed images keeps the image noise."""
    labels = np.repeat(np.arange(4), PER_CLASS)
    base = np.where(np.arange(len(labels)) % PER_CLASS < 30, labels, (labels + 1) % 4)
    pairs = []
    for s, (fix, break_) in enumerate(changes):
        new = base.copy()
        for k in range(4):
            idx = np.flatnonzero(labels == k)
            new[idx[base[idx] != k][:fix]] = k
            new[idx[base[idx] == k][:break_]] = (k + 1) % 4
        pairs.append(Pair(labels, base, new, LAYOUT, s))
    return pairs


def test_the_two_level_interval_widens_with_the_seed_spread():
    def width(iv):
        return iv.high - iv.low

    steady = paired_bootstrap(_pairs([(10, 5)] * 3), resamples=1000)  # +0.10 every seed
    spread = paired_bootstrap(_pairs([(15, 0), (10, 5), (5, 10)]), resamples=1000)  # +0.30, +0.10, -0.10
    m = "balanced_accuracy"
    assert width(spread.images[m]) == pytest.approx(width(steady.images[m]), rel=0.3)
    assert width(steady.seeds[m]) == pytest.approx(width(steady.images[m]), rel=0.3)
    assert width(spread.seeds[m]) > 3 * width(steady.seeds[m])
    assert spread.seeds[m].contains(0.0) and spread.images[m].low > 0
    assert paired_bootstrap(_pairs([(10, 5)]), resamples=200).seeds[m] is None  # one seed: no seed level


def test_student_t_from_scipy():
    from scipy.stats import t

    assert t.ppf(0.975, 4) == pytest.approx(2.776, abs=5e-4)
    d = [0.1, 0.3, 0.2, 0.0, 0.4]
    iv = paired_t_interval(d).interval
    assert iv.high - 0.2 == pytest.approx(2.7764 * np.std(d, ddof=1) / 5 ** 0.5, rel=1e-4)


def test_tail_membership():
    groups, counts = ["many", "medium", "few", "few"], [200, 60, 10, 5]
    assert tail_members(groups, counts) == (False, True, True, True)  # default: medium and few
    assert tail_members(groups, counts, 20) == (False, False, True, True)
    assert tail_members(groups, [200, None, 10, 5], 20) is None
    stats = compute_longtail_stats(np.repeat(np.arange(4), counts), list("abcd"), GroupsConfig())
    assert stats.groups == ("many", "medium", "few", "few")  # many > 100, few < 20
    assert tail_members(stats.groups, stats.counts, GroupsConfig().tail_below) == (False, True, True, True)  # count <= 100
    assert tail_members(stats.groups, stats.counts, GroupsConfig(tail_below=61).tail_below) == (False, True, True, True)
    assert tail_members(stats.groups, stats.counts, GroupsConfig(tail_below=60).tail_below) == (False, False, True, True)
    assert load_recipe(SMOKE, ["data.groups.tail_below=70"], check_paths=False).data.groups.tail_below == 70


def test_classification_metrics_report_the_tail():
    names, groups = list("abcd"), {"a": "many", "b": "medium", "c": "few", "d": "few"}
    y = np.repeat(np.arange(4), 4)
    pred = y.copy()
    pred[[4, 5, 8]] = 0  # b: 2/4, c: 3/4, d: 4/4
    m = classification_metrics(y, pred, names, train_counts=[200, 60, 10, 5], groups=groups, rare_classes=["d"])
    assert m["tail_classes"] == ["b", "c", "d"] and m["tail_recall"] == pytest.approx(0.75)
    narrow = classification_metrics(y, pred, names, train_counts=[200, 60, 10, 5], groups=groups, rare_classes=["d"],
                                    tail_below=8)
    assert narrow["tail_classes"] == ["d"] and narrow["tail_recall"] == 1.0
