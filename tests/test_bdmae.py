"""BDMAE on a known case: an oracle restorer and a classifier that only reacts to the trigger.

With a restorer that returns the clean image wherever it is asked to, and a model that outputs the target
class exactly when the trigger is present, BDMAE must find the trigger tokens, purify every triggered image
and leave clean images alone; its bookkeeping (queries, restorations, per-image randomness) must be exact.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import needs_real_data
from workbench.core.attacks import make_attack
from workbench.core.data import load_splits
from workbench.core.mae import MAEArchitecture, MAERestorer, MaskedAutoencoderViT, neighbours4
from workbench.core.query import QueryModel
from workbench.core.validation import WorkbenchError
from workbench.defenses.bdmae import (
    BDMAE,
    VARIANTS,
    BDMAEConfig,
    cut_permutation_masks,
    ssim_map,
    tie_priorities,
    top_tokens,
    topology_masks,
)

GRID14 = MAEArchitecture(img_size=56, patch_size=4, in_chans=3, embed_dim=16, depth=1, num_heads=2,
                         decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2)
TRIGGER = make_attack("bdmae_badnets_colour")


class OracleRestorer(MAERestorer):
    """Restores every token to the image's background colour (the clean image, for the images below)."""

    def predict(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        self.restorations += len(x)
        background = x[:, :, :8, :8].mean(dim=(2, 3), keepdim=True)
        return background.expand_as(x).clone()


class TriggerDetector(torch.nn.Module):
    """Class 0 when the colour patch is (mostly) present at its place, else class 1."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = TRIGGER(torch.zeros(1, 3, 32, 32))[0, :, 16:19, 27:30]
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hits = ((x[:, :, 16:19, 27:30] - self.patch).abs().amax(dim=1) < 0.05).float().mean(dim=(1, 2))
        triggered = (hits > 0.3).float()
        return torch.stack([triggered, 1 - triggered], dim=1)


def images(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    colours = torch.rand(n, 3, 1, 1, generator=gen) * 0.6 + 0.2
    return (colours + 0.01 * torch.randn(n, 3, 32, 32, generator=gen)).clamp(0, 1)


@pytest.fixture
def defence() -> BDMAE:
    torch.manual_seed(0)
    restorer = OracleRestorer(MaskedAutoencoderViT(GRID14))
    return BDMAE(QueryModel(TriggerDetector(), "label"), restorer, batch_images=3)


def trigger_tokens() -> torch.Tensor:
    restorer_grid = torch.zeros(32, 32)
    restorer_grid[16:19, 27:30] = 1
    tokens = torch.nn.functional.interpolate(restorer_grid.view(1, 1, 32, 32), size=(56, 56), mode="nearest")
    return tokens.view(14, 4, 14, 4).amax(dim=(1, 3)).flatten() > 0


def test_purifies_triggered_images_and_spares_clean_ones(defence: BDMAE) -> None:
    clean = images(4)
    triggered = TRIGGER(clean)
    result = defence.purify(torch.cat([clean, triggered]), seed=1)
    assert result.original_labels.tolist() == [1] * 4 + [0] * 4
    assert result.labels.tolist() == [1] * 8
    assert torch.allclose(result.purified[:4], clean)  # nothing restored on clean images
    on_trigger = trigger_tokens()

    def contrast(scores: torch.Tensor) -> torch.Tensor:
        return scores[4:, on_trigger].mean(dim=1) - scores[4:, ~on_trigger].mean(dim=1)

    for scores in (result.score_image_initial, result.score_image, result.score):  # sharply localised
        assert bool((scores[4:, on_trigger].mean(dim=1) > 2 * scores[4:, ~on_trigger].mean(dim=1)).all())
    # S_l is noisy after 25 random masks (co-masked tokens share the credit); refinement sharpens it (Sec. 4.3)
    assert bool((contrast(result.score_label) > contrast(result.score_label_initial) + 0.05).all())
    assert bool(result.restoration_masks[4:, -1][:, on_trigger].all())  # the final mask covers the trigger
    assert float(result.score_label[:4].abs().max()) == 0.0  # labels of clean images never change


def test_batched_equals_one_image_at_a_time(defence: BDMAE) -> None:
    x = torch.cat([images(3), TRIGGER(images(3, seed=2))])
    batched = defence.purify(x, seed=5)
    for i in range(len(x)):
        single = defence.purify(x[i:i + 1], seed=5, first_index=i)
        assert torch.equal(single.labels, batched.labels[i:i + 1])
        assert torch.allclose(single.score, batched.score[i:i + 1])
        assert torch.allclose(single.purified, batched.purified[i:i + 1], atol=1e-6)


def test_same_seed_same_result_and_exact_bookkeeping(defence: BDMAE) -> None:
    x = TRIGGER(images(4))
    queries_before = defence.classifier.queries
    first = defence.purify(x, seed=3)
    second = defence.purify(x, seed=3)
    assert torch.equal(first.purified, second.purified) and torch.equal(first.score, second.score)
    cfg = defence.config
    refine = sum(int((first.refinement.of(kind).labels >= 0).sum()) for kind in first.refinement.kinds)
    k = len(cfg.thresholds)
    assert first.queries == len(x) * (1 + cfg.outer_rounds * cfg.inner_masks + 1) + refine
    assert first.restorations == len(x) * (cfg.outer_rounds * cfg.inner_masks + k) + refine
    assert defence.classifier.queries - queries_before == 2 * first.queries


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_variants_run_and_purify(variant: str) -> None:
    torch.manual_seed(0)
    defence = BDMAE(QueryModel(TriggerDetector(), "label"), OracleRestorer(MaskedAutoencoderViT(GRID14)),
                    VARIANTS[variant])
    result = defence.purify(TRIGGER(images(3)), seed=0)
    assert result.labels.tolist() == [1, 1, 1]
    if variant == "no_refinement":
        assert result.refinement.kinds == []
    if variant in ("base_i", "base_l"):
        assert result.refinement.kinds == (["image"] if variant == "base_i" else ["label"])


def test_adaptive_thresholds_follow_the_25_percent_rule(defence: BDMAE) -> None:
    score = torch.zeros(2, 196)
    score[0, :100] = 0.9  # 51 % above every threshold: thresholds must rise above 0.9
    score[1, :10] = 0.9
    _, taus, masks = defence.adaptive_restore(images(2), score)
    assert float(taus[0, -1]) > 0.9 and not bool(masks[0].any())
    assert torch.allclose(taus[1], torch.tensor(defence.config.thresholds))
    assert masks[1].sum(dim=1).tolist() == [10] * 5


def test_the_25_percent_boundary(defence: BDMAE) -> None:
    score = torch.zeros(2, 196)
    score[0, :49] = 0.9  # exactly 25 %: allowed
    score[1, :50] = 0.9  # one token more: the thresholds rise past 0.9
    _, taus, masks = defence.adaptive_restore(images(2), score)
    assert torch.allclose(taus[0], torch.tensor(defence.config.thresholds)) and int(masks[0, -1].sum()) == 49
    assert float(taus[1, -1]) > 0.9 and not bool(masks[1].any())


def test_refinement_masks_stay_inside_the_refine_region_under_ties(defence: BDMAE) -> None:
    """Typical S_l of a clean image: 2 of 25 restorations flipped, so ~100 tokens tie at 2/25 while L = 11."""
    x = images(3)
    score = torch.zeros(3, 196)
    score[:, :100] = 2 / 25
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    _, trace = defence.refine_scores(x, defence.classifier.labels(x), score, torch.full((3,), 11), gens)
    assert int(trace.masks.sum()) == 3 * defence.config.refine_steps * 5
    assert not bool((trace.masks & ~trace.regions).any())


class ZeroRestorer(MAERestorer):
    """Restores every masked token to black."""

    def predict(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        self.restorations += len(x)
        return torch.zeros_like(x)


class BlackPixelDetector(torch.nn.Module):
    """Class 1 as soon as any pixel is exactly black, else 0: every restoration changes the label."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        black = (x.flatten(1).amin(dim=1) == 0).float()
        return torch.stack([1 - black, black], dim=1)


def test_label_score_normalisation_and_refine_region_size() -> None:
    """If every restoration flips the label, S_l of a token is the fraction of the N_o N_i = 25 masks covering it:
    a multiple of 1/25, at least 5 x 2 / 25 (cut permutations cover each token twice per round), summing to
    the mean masked-token count (<= 147; slices across two permutations may repeat ids). Label refinement then works
    on L = floor(sum S_l) tokens with masks of L // 2."""
    defence = BDMAE(QueryModel(BlackPixelDetector(), "label"), ZeroRestorer(MaskedAutoencoderViT(GRID14)))
    result = defence.purify(images(3), seed=0)
    s_l = result.score_label_initial
    assert torch.allclose(s_l * 25, (s_l * 25).round(), atol=1e-4) and float(s_l.min()) >= 10 / 25
    totals = s_l.sum(dim=1)
    assert bool((totals <= 147 + 1e-4).all()) and bool((totals >= 0.9 * 147).all())
    trace = result.refinement.of("label")
    assert trace.top.tolist() == totals.floor().long().tolist()
    assert torch.equal(trace.masks.sum(dim=2), (trace.top // 2).view(-1, 1).expand(-1, 10))
    assert not bool((trace.masks & ~trace.regions).any())  # S_l ties everywhere: m_r stays inside m_rf


def test_batched_equals_looped_with_a_real_mae() -> None:
    """With a real (random) MAE, images of one batch are restored with different masked-token counts (padding in
    the encoder): each image's result must still equal its own one-image run."""
    torch.manual_seed(0)
    classifier = torch.nn.Sequential(torch.nn.AvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(48, 4))
    defence = BDMAE(QueryModel(classifier, "label"), MAERestorer(MaskedAutoencoderViT(GRID14)),
                    BDMAEConfig(outer_rounds=2, inner_masks=2, refine_steps=3))
    x = torch.rand(4, 3, 32, 32)
    batched = defence.purify(x, seed=2)
    assert len(set(batched.restoration_masks[:, -1].sum(dim=1).tolist())) > 1  # the batch really mixes sizes
    for i in range(len(x)):
        single = defence.purify(x[i:i + 1], seed=2, first_index=i)
        assert torch.equal(single.labels, batched.labels[i:i + 1])
        assert torch.allclose(single.score, batched.score[i:i + 1], atol=1e-5)
        assert torch.allclose(single.purified, batched.purified[i:i + 1], atol=1e-5)


def test_black_box_only() -> None:
    with pytest.raises(WorkbenchError, match="pass a QueryModel"):
        BDMAE(TriggerDetector(), OracleRestorer(MaskedAutoencoderViT(GRID14)))  # type: ignore[arg-type]


def test_cut_permutation_masks_cover_every_token_twice() -> None:
    for seed in range(20):
        masks = cut_permutation_masks(196, 147, 5, torch.Generator().manual_seed(seed))
        assert int(masks[0].sum()) == 147  # the first slice lies inside one permutation
        assert bool((masks.sum(dim=1) <= 147).all())  # slices across two permutations may repeat ids
        assert int(masks.sum(dim=0).min()) >= 2


def test_topology_mask_grows_a_connected_region_inside_the_refine_region() -> None:
    adjacency = neighbours4(14)
    gen = torch.Generator().manual_seed(0)
    rows, cols = torch.arange(196) // 14, torch.arange(196) % 14
    score = 1 / (1 + (rows - 6.0) ** 2 + (cols - 8.0) ** 2) + 0.01 * torch.rand(196, generator=gen)  # one blob
    priority = tie_priorities([gen], 196)
    region = top_tokens(score.view(1, -1), torch.tensor([60]), priority)[0]
    mask = topology_masks(score.view(1, -1), region.view(1, -1), torch.tensor([30]), adjacency, 100.0, [gen],
                          priority, random_seed_token=False)[0]
    assert int(mask.sum()) == 30 and bool((mask & ~region).sum() == 0)
    assert int(torch.argmax(score)) in mask.nonzero().flatten().tolist()
    reached = torch.zeros(196, dtype=torch.bool)  # flood fill from the first token
    reached[int(torch.argmax(score))] = True
    for _ in range(30):
        reached |= (adjacency[reached].any(dim=0) & mask)
    assert torch.equal(reached, mask)


def test_ties_are_broken_at_random_not_by_token_index() -> None:
    """S_l is a multiple of 1/25, so ties are common: neither the refine region nor the seed token may favour the
    top-left corner of the grid."""
    adjacency = neighbours4(14)
    rows = torch.arange(196) // 14
    flat = torch.zeros(1, 196)  # every token ties
    region_rows, seed_rows = [], []
    for seed in range(200):
        gen = torch.Generator().manual_seed(seed)
        priority = tie_priorities([gen], 196)
        region = top_tokens(flat, torch.tensor([20]), priority)
        assert int(region.sum()) == 20
        region_rows.append(rows[region[0]].float().mean())
        mask = topology_masks(flat, region, torch.tensor([5]), adjacency, 0.5, [gen], priority,
                              random_seed_token=False)
        assert not bool((mask & ~region).any())  # the seed lies in the region even when everything ties
        seed_rows.append(rows[mask[0]].float().mean())
    # index order would give mean rows 0.4 (region) and about 0.5 (mask); uniform choice gives 6.5 +- 0.3
    assert abs(float(torch.stack(region_rows).mean()) - 6.5) < 1.0
    assert abs(float(torch.stack(seed_rows).mean()) - 6.5) < 1.0
    # a strict order is still respected: the 20 largest of distinct scores
    distinct = torch.randperm(196, generator=torch.Generator().manual_seed(1)).float().view(1, -1)
    picked = top_tokens(distinct, torch.tensor([20]), tie_priorities([torch.Generator()], 196))
    assert torch.equal(picked[0], distinct[0] >= 176)


def test_ssim_known_answers() -> None:
    x = torch.rand(2, 3, 16, 16)
    assert torch.allclose(ssim_map(x, x), torch.ones(2, 16, 16), atol=1e-5)
    a, b = torch.full((1, 1, 16, 16), 0.2), torch.full((1, 1, 16, 16), 0.6)
    c1 = 0.01**2
    expected = (2 * 0.2 * 0.6 + c1) / (0.2**2 + 0.6**2 + c1)  # constant images: only the luminance term
    assert torch.allclose(ssim_map(a, b), torch.full((1, 16, 16), expected), atol=1e-3)
    assert float(ssim_map(x, 1 - x).mean()) < 0.5


@needs_real_data
def test_ssim_matches_scikit_image_on_natural_images() -> None:
    """Issue 25: Wang et al.'s SSIM as scikit-image computes it (Gaussian window, sigma 1.5, population covariance)
    on 50 CIFAR-10 test images against noisy copies, to 1e-6 away from the border (where our replicate padding,
    the authors' choice, differs from scikit-image's reflection)."""
    structural_similarity = pytest.importorskip("skimage.metrics").structural_similarity
    x = load_splits("cifar10").test.float_images()[:50]
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    reference = torch.stack([torch.from_numpy(structural_similarity(
        a.permute(1, 2, 0).double().numpy(), b.permute(1, 2, 0).double().numpy(), gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=1.0, channel_axis=2, full=True)[1].mean(axis=2))
        for a, b in zip(x, y, strict=True)])
    inner = (slice(None), slice(5, -5), slice(5, -5))
    assert (ssim_map(x, y).double() - reference)[inner].abs().max() < 1e-6


def test_config_validation() -> None:
    with pytest.raises(WorkbenchError, match="non-increasing"):
        BDMAEConfig(thresholds=(0.4, 0.6))
    with pytest.raises(WorkbenchError, match="alpha must be in"):
        BDMAEConfig(alpha=1.5)
