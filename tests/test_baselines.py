"""Baselines of BDMAE's Table 2 on known cases: transformations, PatchCleanser's masks and votes, Februus."""

from __future__ import annotations

from collections import Counter, OrderedDict

import torch

from tests.test_bdmae import GRID14, TRIGGER, OracleRestorer, TriggerDetector, images
from workbench.core.mae import MaskedAutoencoderViT
from workbench.core.models import Normalize, StagedClassifier, build_model
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
    # image n's offsets come from (seed, first_index + n): a test set split into calls is purified the same way
    split = torch.cat([pad.purify(x[:1], seed=1), pad.purify(x[1:], seed=1, first_index=1)])
    assert torch.equal(split, a)
    assert not torch.equal(pad.purify(x[1:], seed=1), a[1:])  # without first_index: image 0's offsets again


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
        # naming the layer whose output is the feature map gives the same map as the model's declared one
        before = model.split_points[model.split_points.index(model.feature_split) - 1]
        assert torch.equal(class_activation_map(model, x, method, layer=before), cam)
    februus = Februus(model, OracleRestorer(MaskedAutoencoderViT(GRID14)), "gradcam++", 0.7)
    purified = februus.purify(x)
    assert purified.shape == x.shape and februus.predict(x).shape == (2,)
    # the MAE's output is unbounded: Februus hands the classifier images in [0, 1]
    wild = Februus(model, ScaledRestorer(MaskedAutoencoderViT(GRID14)), "gradcam++", 1e-6).purify(x)
    assert float(wild.min()) >= 0 and float(wild.max()) <= 1 and float(wild.max()) == 1.0


class ScaledRestorer(OracleRestorer):
    """Predicts 3x the background colour: values far above 1."""

    def predict(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        return 3 * super().predict(x, token_mask)


class GreyProbe(torch.nn.Module):
    """Label 1 + [pixel A is PatchCleanser's grey] + 2 [pixel B is grey]: masks over A and masks over B disagree
    with the majority, and no disagreer's second round is unanimous (masks over the other pixel change it)."""

    def __init__(self, a: tuple[int, int], b: tuple[int, int]) -> None:
        super().__init__()
        self.a, self.b = a, b
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey_a = (x[:, :, self.a[0], self.a[1]] == 0.5).all(dim=1).long()
        grey_b = (x[:, :, self.b[0], self.b[1]] == 0.5).all(dim=1).long()
        return torch.nn.functional.one_hot(1 + grey_a + 2 * grey_b, 5).float()


def test_patchcleanser_fallbacks_without_a_unanimous_disagreer() -> None:
    a, b = (0, 0), (16, 16)  # a corner (few masks cover it) and the centre (overlapping masks cover it)
    wrapper = QueryModel(GreyProbe(a, b), "label")
    x = images(1)
    masks = mask_set(32, 3, 6)
    over_a, over_b = masks[:, a[0], a[1]], masks[:, b[0], b[1]]
    assert not bool((over_a & over_b).any()) and int(over_a.sum()) != int(over_b.sum())
    # every prediction the majority variant makes, counted independently of the implementation
    first = 1 + over_a.long() + 2 * over_b.long()
    votes = Counter(first.tolist())
    for d in (over_a | over_b).nonzero().flatten().tolist():
        votes.update((1 + (over_a | over_a[d]).long() + 2 * (over_b | over_b[d]).long()).tolist())
    assert PatchCleanser(wrapper, patch_size=3, variant="vanilla").predict(x).tolist() == [1]
    assert PatchCleanser(wrapper, patch_size=3, variant="majority").predict(x).tolist() == [votes.most_common(1)[0][0]]
    assert votes.most_common(1)[0][0] != 1


def test_class_activation_maps_find_the_evidence() -> None:
    """Feature map = the image; head = global average pool + linear reading channel 0 for class 0. Every CAM method
    must then light up exactly the bright square of channel 0 after min-max normalisation."""
    head = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2))
    with torch.no_grad():
        head[2].weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        head[2].bias.zero_()
    model = StagedClassifier(Normalize([0, 0, 0], [1, 1, 1]),
                             OrderedDict([("features", torch.nn.Identity()), ("head", head)]),
                             default_split="head", input_shape=(3, 32, 32), feature_split="head")
    x = torch.full((2, 3, 32, 32), 0.2)
    x[:, 0, 5:10, 20:26] = 1.0
    square = torch.zeros(32, 32, dtype=torch.bool)
    square[5:10, 20:26] = True
    for method in ("gradcam", "xgradcam", "gradcam++"):
        cam = class_activation_map(model, x, method, target=torch.zeros(2, dtype=torch.long))
        assert torch.equal(cam >= 0.7, square.expand(2, -1, -1)), method
        assert torch.allclose(cam[:, ~square], torch.zeros(1)), method
