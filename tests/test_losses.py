import math

import torch
import torch.nn.functional as F

from fopro_edge.distill.losses import BalancedSoftmax, alignment_loss


def test_balanced_softmax_equals_cross_entropy_for_uniform_priors():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    assert torch.allclose(BalancedSoftmax([7] * 5)(logits, y), F.cross_entropy(logits, y), atol=1e-6)


def test_balanced_softmax_shifts_by_log_prior():
    logits, y = torch.zeros(1, 2), torch.tensor([1])
    # priors 0.75 / 0.25: softmax over log-priors gives p(y=1) = 0.25
    assert math.isclose(float(BalancedSoftmax([3, 1])(logits, y)), -math.log(0.25), rel_tol=1e-6)
    assert not torch.allclose(BalancedSoftmax([3, 1])(logits, y), F.cross_entropy(logits, y))


def test_alignment_loss_against_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, -3.0]])
    # cos = 1/sqrt(2) and -1 -> mean(2 - 2 cos) = ((2 - sqrt(2)) + 4) / 2
    expected = ((2 - math.sqrt(2)) + 4) / 2
    assert math.isclose(float(alignment_loss(q, t)), expected, rel_tol=1e-6)
    # equals the squared distance of the normalised vectors (BYOL form)
    byol = (F.normalize(q, dim=-1) - F.normalize(t, dim=-1)).pow(2).sum(-1).mean()
    assert torch.allclose(alignment_loss(q, t), byol, atol=1e-6)


def test_alignment_loss_is_computed_in_float32():
    q = torch.randn(4, 8).bfloat16()
    assert alignment_loss(q, q).dtype == torch.float32
    assert float(alignment_loss(q, q)) < 1e-5
