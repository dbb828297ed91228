"""PGD for label-consistent poisoning stays in its ball and raises the surrogate's loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workbench.core.attacks.adversarial import pgd_perturb
from workbench.core.models import build_model


def test_pgd_stays_in_the_ball_and_increases_the_loss() -> None:
    torch.manual_seed(0)
    model = build_model("lenet5", in_channels=1, num_classes=10, image_size=28).eval()
    x = torch.rand(16, 1, 28, 28)
    y = model(x).argmax(1)
    adv = pgd_perturb(model, x, y, epsilon=8 / 255, steps=5, generator=torch.Generator().manual_seed(0))
    assert float((adv - x).abs().max()) <= 8 / 255 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)
    again = pgd_perturb(model, x, y, epsilon=8 / 255, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(adv, again)
