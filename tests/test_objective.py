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
