"""Baselines of BDMAE's Table 2 on known cases: transformations, PatchCleanser's masks and votes, Februus."""

from __future__ import annotations

import torch

from tests.test_bdmae import GRID14, TRIGGER, OracleRestorer, TriggerDetector, images
from workbench.core.mae import MaskedAutoencoderViT
from workbench.core.models import build_model
from workbench.core.query import QueryModel
from workbench.defenses.baselines.februus import Februus, class_activation_map
from workbench.defenses.baselines.patchcleanser import PatchCleanser, mask_set
from workbench.defenses.baselines.transforms import Blur, ShrinkPad


def test_blur_and_shrinkpad() -> None:
    wrapper = QueryModel(TriggerDetector(), "label")
    x = TRIGGER(images(3))
    blurred = Blur(wrapper, sigma=1.0).purify(x)
    assert blurred.shape == x.shape and not torch.equal(blurred, x)
    assert torch.allclose(blurred.mean(), x.mean(), atol=0.02)  # a blur keeps the mean (replicate-free centre)
    pad = ShrinkPad(wrapper, pad=4)
    a, b = pad.purify(x, seed=1), pad.purify(x, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, pad.purify(x, seed=2))
    assert int((a == 0).all(dim=1).sum(dim=(1, 2)).min()) >= 4 * 28  # at least 4 padded rows or columns of zeros
    assert Blur(wrapper).predict(x).shape == (3,)


def test_mask_set_covers_every_patch() -> None:
    masks = mask_set(32, 5, 6)
    assert len(masks) == 36
    for r in range(28):
        for c in range(28):
            patch = torch.zeros(32, 32, dtype=torch.bool)
            patch[r:r + 5, c:c + 5] = True
            assert bool((masks & patch).flatten(1).sum(1).eq(25).any())


def test_patchcleanser_recovers_triggered_labels() -> None:
    wrapper = QueryModel(TriggerDetector(), "label")
    x = torch.cat([images(2), TRIGGER(images(2, seed=1))])
    for variant in ("vanilla", "majority"):
        labels = PatchCleanser(wrapper, patch_size=3, variant=variant).predict(x)
        # masks over the trigger disagree with the majority (target) and agree among themselves: the disagreer wins
        assert labels.tolist() == [1, 1, 1, 1]


def test_class_activation_maps_and_februus() -> None:
    torch.manual_seed(0)
    model = build_model("resnet_small", in_channels=3, num_classes=10, image_size=32).eval()
    x = images(2)
    for method in ("gradcam", "xgradcam", "gradcam++"):
        cam = class_activation_map(model, x, method)
        assert cam.shape == (2, 32, 32) and float(cam.min()) >= 0 and float(cam.max()) <= 1 + 1e-6
    februus = Februus(model, OracleRestorer(MaskedAutoencoderViT(GRID14)), "gradcam++", 0.7)
    purified = februus.purify(x)
    assert purified.shape == x.shape and februus.predict(x).shape == (2,)
