"""Random-initialised timm models for latency suites (no weights needed, realistic numerics).

timm zero-initialises the last BatchNorm gamma of every ResNet block; after BN folding those convs
become all-zero and exporters de-duplicate them, which shrinks the graph and flatters the timing.
So every BatchNorm here gets non-trivial, seeded statistics (feasibility study, section 1):
gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1), running mean ~ N(0, 0.1), running var ~ U(0.5, 1.5).
"""

from __future__ import annotations

from typing import Any


def randomize_batchnorm(model: Any, seed: int = 0) -> int:
    """Give every BatchNorm layer of ``model`` seeded non-trivial statistics; returns how many."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                n = m.num_features
                if m.weight is not None:
                    m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                    m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                count += 1
    return count


def random_init_student(model_name: str, num_classes: int, *, seed: int = 0) -> Any:
    """A :class:`~fopro_edge.models.student.Student` (normalisation inside, input RGB in [0, 1])
    around a random-initialised timm model with non-trivial BatchNorm statistics, in eval mode."""
    import torch

    from fopro_edge.config import StudentConfig
    from fopro_edge.models.student import build_student

    torch.manual_seed(seed)
    student = build_student(StudentConfig(model=model_name, pretrained=False), num_classes)
    randomize_batchnorm(student, seed)
    return student.eval()
