"""The training objective itself: each test fails when the part of the method it names breaks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fopro_edge.config import recipe_from_dict
from fopro_edge.distill.method import Objective

COUNTS = [90, 30, 9, 1]


def _recipe(**sections):
    return recipe_from_dict(sections, check_paths=False)


@pytest.mark.parametrize(
    "sampler,weights",
    [("instance", COUNTS), ("sqrt", [math.sqrt(n) for n in COUNTS]), ("balanced", [1, 1, 1, 1])],
)
def test_balanced_softmax_shifts_logits_by_the_log_prior_of_the_sampler(sampler, weights):
    objective = Objective(_recipe(data={"sampler": sampler}, distill={"method": "bsm"}), COUNTS)
    prior = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    # zero logits: the BSM loss of class c is -log softmax(log prior)_c = -log prior_c
    z = torch.zeros(len(COUNTS), len(COUNTS))
    per_class = [float(objective.bsm(z[c : c + 1], torch.tensor([c]))) for c in range(len(COUNTS))]
    np.testing.assert_allclose(per_class, -np.log(prior), rtol=1e-5)
    # and the loss on any logits is cross-entropy on logits + log prior
    torch.manual_seed(0)
    z, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    expected = F.cross_entropy(z + torch.log(torch.as_tensor(prior, dtype=torch.float32)), y)
    assert torch.allclose(objective.bsm(z, y), expected, atol=1e-5)


# ---------------------------------------------------------------------------- a tiny FoPro-KD set-up


def _parts(method: str = "fopro", size: int = 32, **distill):
    """Recipe, objective, student net (with EKD heads), teacher, prompt and probe on 4 classes."""
    from torch import nn

    from fopro_edge.distill.method import DistillNet
    from fopro_edge.models import build_student, build_teacher
    from fopro_edge.models.student import EKDHeads, feature_dim
    from fopro_edge.prompt import FourierPromptGenerator

    akd = {"start_epoch": 0, **distill.pop("akd", {})}
    recipe = _recipe(
        data={"image_size": size}, teacher={"model": "test_efficientnet", "image_size": size}, student={"model": "test_resnet"},
        distill={"method": method, "akd": akd, **distill},
    )
    torch.manual_seed(0)
    teacher = build_teacher(recipe.teacher)
    student = build_student(recipe.student, len(COUNTS))
    t_dim, s_dim = feature_dim(teacher, size, features=teacher), feature_dim(student, size)
    net = DistillNet(student, EKDHeads(s_dim, s_dim, t_dim, len(COUNTS)))
    prompt = FourierPromptGenerator.from_config(recipe.prompt, size) if recipe.uses_prompt else None
    probe = nn.Linear(t_dim, len(COUNTS)) if prompt is not None else None
    return recipe, Objective(recipe, COUNTS, teacher, prompt, probe), net, teacher, prompt, probe


def _batch(n: int = 16, size: int = 32):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 3, size, size, generator=g), torch.arange(n) % len(COUNTS)


def test_akd_steps_raise_the_student_teacher_discrepancy():
    # the probe and gain terms are off: the prompt's only goal is the adversarial one
    _, objective, net, _, prompt, _ = _parts(akd={"every": 1, "probe_weight": 0.0, "gain_l2": 0.0})
    net.eval()  # the student stays fixed; only the prompt moves
    x, y = _batch()
    opt = torch.optim.Adam(prompt.parameters(), lr=1e-2)
    adv = []
    for step in range(10):
        out = objective(net, x, y, step, teacher_input=x)
        assert out.prompt_loss is not None
        adv.append(float(out.terms["akd_adv"]))
        opt.zero_grad()
        out.prompt_loss.backward()
        opt.step()
    with torch.no_grad():
        _, q, _ = net(x)
        from fopro_edge.distill.losses import alignment_loss

        final = float(alignment_loss(q, objective.teacher(prompt(x))))
    assert final > adv[0] + 0.05, adv + [final]  # measured: 2.010 -> 2.15 (flipped sign: it falls)
    assert sum(b > a for a, b in zip(adv, adv[1:])) >= 7, adv
    assert prompt.prompt.grad is not None and prompt.prompt.abs().max() > 0


def test_akd_starts_at_its_start_epoch_and_runs_every_k_steps():
    _, objective, net, *_ = _parts(epochs=4, akd={"every": 2, "start_epoch": 2})
    x, y = _batch(8)
    due = {}
    for epoch in range(4):
        objective.set_epoch(epoch)
        due[epoch] = [objective(net, x, y, step, teacher_input=x).prompt_loss is not None for step in range(4)]
    assert due[0] == due[1] == [False] * 4
    assert due[2] == due[3] == [True, False, True, False]


def test_drw_weights_switch_on_at_0_8_of_training():
    from fopro_edge.distill.losses import alignment_loss, effective_number_weights

    _, objective, net, teacher, *_ = _parts("ekd", epochs=10, align_balance="drw")
    net.eval()
    x, y = _batch(8)
    with torch.no_grad():
        _, q, _ = net(x)
        per_sample = 2 - 2 * F.cosine_similarity(q, teacher(x), dim=-1)
    beta = 0.9999
    w = torch.tensor([(1 - beta) / (1 - beta**n) for n in COUNTS])
    w = w / w.sum() * len(COUNTS)  # released code: sum to the number of classes
    torch.testing.assert_close(torch.as_tensor(effective_number_weights(COUNTS), dtype=torch.float32), w)
    assert w[-1] > 10 * w[0]  # the one-image class weighs most
    align = {}
    for epoch in (0, 7, 8, 9):
        objective.set_epoch(epoch)
        with torch.no_grad():
            align[epoch] = float(objective(net, x, y, 0, teacher_input=x).terms["align"])
    plain, weighted = float(per_sample.mean()), float((per_sample * w[y]).mean())
    assert align[0] == pytest.approx(plain, rel=1e-5) and align[7] == pytest.approx(plain, rel=1e-5)
    assert align[8] == pytest.approx(weighted, rel=1e-5) and align[9] == pytest.approx(weighted, rel=1e-5)
    assert abs(weighted - plain) > 0.1
    assert float(alignment_loss(q, teacher(x))) == pytest.approx(plain, rel=1e-5)


def test_without_drw_the_alignment_is_never_weighted():
    _, objective, net, teacher, *_ = _parts("ekd", epochs=10)
    net.eval()
    x, y = _batch(8)
    objective.set_epoch(9)
    with torch.no_grad():
        _, q, _ = net(x)
        plain = float((2 - 2 * F.cosine_similarity(q, teacher(x), dim=-1)).mean())
        assert float(objective(net, x, y, 0, teacher_input=x).terms["align"]) == pytest.approx(plain, rel=1e-5)


# ---------------------------------------------------------------------------- test-time logit adjustment


def test_logit_adjustment_moves_predictions_toward_rare_classes_as_tau_grows():
    from sklearn.metrics import balanced_accuracy_score

    from fopro_edge.distill.logit_adjust import (
        adjusted_predictions,
        choose_tau,
        train_prior,
    )

    prior = train_prior(COUNTS)
    np.testing.assert_allclose(prior, np.asarray(COUNTS) / sum(COUNTS))
    # a classifier that learned the train prior: logits = class evidence + log prior, on balanced test labels
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 200)
    logits = 2.0 * np.eye(4)[y] + rng.normal(0, 1, (len(y), 4)) + np.log(prior)[None, :]
    taus = [0.0, 0.5, 1.0, 1.5, 2.0]
    rare = [int(np.isin(adjusted_predictions(logits, prior, t), [2, 3]).sum()) for t in taus]
    assert all(b > a for a, b in zip(rare, rare[1:])), rare
    assert (adjusted_predictions(logits, prior, 0.0) == logits.argmax(1)).all()  # tau 0: off
    tau, scores = choose_tau(y, logits, prior)
    assert tau == pytest.approx(1.0, abs=0.26)  # the prior the logits carry is undone at tau = 1
    assert scores[tau] > scores[0.0] + 0.1
    assert balanced_accuracy_score(y, adjusted_predictions(logits, prior, tau)) == scores[tau]


# ---------------------------------------------------------------------------- EKD


def test_ekd_steps_lower_the_alignment_loss_on_a_fixed_batch():
    _, objective, net, *_ = _parts("ekd")
    net.train()
    x, y = _batch()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    align = []
    for step in range(10):
        out = objective(net, x, y, step, teacher_input=x)
        align.append(float(out.terms["align"].detach()))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert align[-1] < 0.7 * align[0], align


@pytest.mark.parametrize("lam", [0.5, 3.0])
def test_ekd_loss_is_both_heads_plus_lambda_times_alignment(lam):
    _, objective, net, *_ = _parts("ekd", align_weight=lam)
    x, y = _batch(8)
    out = objective(net, x, y, 0, teacher_input=x)
    with torch.no_grad():
        z1, _, z2 = net(x)
        assert float(out.terms["bsm"]) == pytest.approx(float(objective.bsm(z1, y)), rel=1e-5)
        assert float(out.terms["bsm_proj"]) == pytest.approx(float(objective.bsm(z2, y)), rel=1e-5)
        expected = out.terms["bsm"] + out.terms["bsm_proj"] + lam * out.terms["align"]
        assert float(out.loss) == pytest.approx(float(expected), rel=1e-6)
    # every part reaches its parameters: the second head through bsm_proj, the projector through both
    out.loss.backward()
    assert net.heads.head.weight.grad.abs().sum() > 0 and net.heads.projector[0].weight.grad.abs().sum() > 0


def test_the_student_sees_the_clean_image_and_the_teacher_the_prompted_one():
    _, objective, net, teacher, prompt, _ = _parts("ekd+fpg")
    with torch.no_grad():
        prompt.prompt.fill_(0.5)  # a prompt that visibly changes the image
    seen = {}
    net.register_forward_pre_hook(lambda m, args: seen.__setitem__("student", args[0]))
    teacher.register_forward_pre_hook(lambda m, args: seen.__setitem__("teacher", args[0]))
    x, y = _batch(8)
    objective(net, x, y, 0, teacher_input=x)
    assert torch.equal(seen["student"], x)
    assert torch.allclose(seen["teacher"], prompt(x)) and not torch.allclose(seen["teacher"], x, atol=1e-3)
