"""REStore's setups, scorer, calibration, diagnosis, recovery and purification on a toy model with a known backdoor."""

import json
import math

import pytest
import torch
from torch import nn

from workbench.core.query import AccessError, QueryModel
from workbench.core.validation import WorkbenchError
from workbench.defenses.restore import (
    TRANSFORMS,
    Diagnosis,
    RestoreSetup,
    any_class_scorer,
    calibrate_alpha,
    class_scorer,
    clean_sets,
    compare_maps,
    dct2,
    dct_matrix,
    diagnose,
    estimate_trigger,
    frequency_rank,
    idct2,
    recover_any_class,
    recovered_asr,
    select_purifier,
    splitting_config,
)

PATTERN = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
TARGET = 2


class QuadrantModel(nn.Module):
    """4 classes on 1x8x8 images: the class is the brightest quadrant. Backdoored: a 2x2 checker in the top-left
    corner sends any image to class 2."""

    input_shape = (1, 8, 8)

    def __init__(self, backdoor: bool) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # QueryModel reads the device from the parameters
        self.backdoor = backdoor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        quadrants = torch.stack([x[:, 0, r:r + 4, c:c + 4].mean((1, 2)) for r, c in ((0, 0), (0, 4), (4, 0), (4, 4))],
                                dim=1)
        logits = 20 * (quadrants - 0.5)
        if self.backdoor:
            logits[:, TARGET] += 12 * torch.exp(-8 * ((x[:, 0, :2, :2] - PATTERN) ** 2).sum((1, 2)))
        return logits


def quadrant_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    x = 0.25 + 0.1 * torch.rand(n, 1, 8, 8, generator=gen)
    for k, (r, c) in enumerate(((0, 0), (0, 4), (4, 0), (4, 4))):
        x[labels == k, :, r:r + 4, c:c + 4] += 0.4
    return x, labels


def toy_diagnosis(backdoor: bool, seed: int = 0):
    query = QueryModel(QuadrantModel(backdoor), "probs")
    images, labels = quadrant_images(200, 0)
    setup = RestoreSetup("PI", 0.5)
    config = splitting_config(setup, (1, 8, 8), particles=100, survivors=50, passes=10, max_levels=25)
    return query, setup, diagnose(query, images, labels, setup, config=config, per_set=3, seed=seed)


def test_dct_is_orthonormal_and_inverts():
    d = dct_matrix(8)
    assert torch.allclose(d @ d.T, torch.eye(8), atol=1e-6)
    x = torch.rand(2, 3, 8, 6)
    assert torch.allclose(idct2(dct2(x)), x, atol=1e-5)
    constant = dct2(torch.full((1, 8, 8), 0.5))
    assert torch.allclose(constant[0, 0, 0], torch.tensor(4.0)) and constant.flatten()[1:].abs().max() < 1e-5


def test_fi_search_space_excludes_high_and_freezes_low_frequencies():
    rank = frequency_rank(8, 8)
    assert rank[0, 0] == 0 and rank[7, 7] == 1 and rank[0, 1] < rank[1, 1] < rank[2, 2]
    prior = RestoreSetup("FI", 0.2).prior(torch.rand(5, 3, 8, 8))
    assert prior.rate.shape == (3, 8, 8)
    assert prior.rate[:, 0, 0].eq(0).all() and prior.rate[:, 7, 7].eq(0).all()  # frozen DC, excluded top
    searched = (prior.rate > 0).float().mean().item()
    assert abs(searched - (1 - 1 / 3 - 0.05)) < 0.05
    draws = prior.draw_values((20000, 3, 8, 8), torch.Generator().manual_seed(0))
    coefficients = dct2(torch.rand(5, 3, 8, 8))  # not the same images: only the order of magnitude is shared
    assert draws.abs().mean().item() < 10 * coefficients.abs().mean().item()


def test_perturbations_follow_eq_17_and_18():
    x = torch.rand(4, 3, 5, 5)  # M = 4 images
    delta = torch.full((2, 3, 5, 5), float("nan"))  # P = 2 perturbations
    delta[0, :, 0, 0] = 0.9
    pi = RestoreSetup("PI", 0.1).perturb(x, delta)
    assert pi.shape == (2, 4, 3, 5, 5)
    assert torch.equal(pi[1], x) and (pi[0, :, :, 0, 0] == 0.9).all()
    assert torch.equal(pi[0, :, :, 1:], x[:, :, 1:])
    pg = RestoreSetup("PG", 0.2).perturb(x, torch.zeros(1, 3, 5, 5))  # Phi(0) = 1/2: no change
    assert torch.allclose(pg[0], x)
    big = RestoreSetup("PG", 0.2).perturb(torch.zeros(1, 3, 5, 5), torch.full((1, 3, 5, 5), 10.0))
    assert torch.allclose(big, torch.full_like(big, 0.2))  # 2 lambda (Phi(10) - 1/2) = lambda: the largest shift
    grey = torch.full((1, 1, 5, 5), float("nan"))
    grey[0, 0, 2, 2] = 0.3
    replaced = RestoreSetup("PI", 0.1, greyscale=True).perturb(x, grey)
    assert (replaced[0, :, :, 2, 2] == 0.3).all()  # one grey value in every channel
    fi = RestoreSetup("FI", 0.1).perturb(x, torch.full((1, 3, 5, 5), float("nan")))
    assert torch.allclose(fi[0], x, atol=1e-5)


def test_clean_sets_hold_correct_images_of_the_other_classes():
    query = QueryModel(QuadrantModel(False), "label")
    images, labels = quadrant_images(40, 1)
    labels[0] = 1  # image 0 is a class-0 image: mislabelled, so the model gets it "wrong" and it must be skipped
    sets = clean_sets(query, images, labels, [0, 3], per_set=3, seed=2)
    assert sets.shape == (2, 3, 1, 8, 8)
    model = QuadrantModel(False)
    for cls, chosen in zip([0, 3], sets, strict=True):
        predicted = model(chosen).argmax(1)
        assert (predicted != cls).all() and len(set(predicted.tolist())) == 3  # one per other class
        assert not any(torch.equal(image, images[0]) for image in chosen)
    with pytest.raises(WorkbenchError, match="pass more clean images"):
        clean_sets(query, images[:4], labels[:4], [0], per_set=9)


def test_scorer_reads_only_what_the_access_level_allows():
    images, _ = quadrant_images(8, 0)
    setup = RestoreSetup("PI", 0.3)
    sets = images[:6].reshape(2, 3, 1, 8, 8)
    delta = torch.full((2, 5, 1, 8, 8), float("nan"))
    labels_only = QueryModel(QuadrantModel(True), "label")
    counts = class_scorer(labels_only, setup, "labels", sets, torch.tensor([TARGET, 0]))(delta, torch.tensor([0, 1]))
    assert counts.shape == (2, 5) and ((counts >= 0) & (counts <= 3)).all()
    delta[0, :, 0, :2, :2] = PATTERN  # the trigger sends all 3 images of problem 0 to class 2
    counts = class_scorer(labels_only, setup, "labels", sets, torch.tensor([TARGET, 0]))(delta, torch.tensor([0, 1]))
    assert (counts[0] == 3).all()
    with pytest.raises(AccessError):
        class_scorer(labels_only, setup, "probits", sets, torch.tensor([TARGET, 0]))(delta, torch.tensor([0, 1]))
    probits = class_scorer(QueryModel(QuadrantModel(True), "probs"), setup, "probits", sets, torch.tensor([TARGET, 0]))
    assert ((probits(delta, torch.tensor([0, 1])) > 0) & (probits(delta, torch.tensor([0, 1])) <= 1)).all()


def test_alpha_halves_the_clean_accuracy():
    query = QueryModel(QuadrantModel(False), "label")
    images, labels = quadrant_images(200, 3)
    alpha, probes = calibrate_alpha(query, "PI", images, labels, steps=8)
    accuracy = dict(probes)
    below = max(a for a in accuracy if a <= alpha and accuracy[a] > 0.5)
    above = min(a for a in accuracy if a >= alpha and accuracy[a] <= 0.5)
    assert above - below <= 1 / 2 ** 8 + 1e-9 and accuracy[0.0] == 1.0


def test_alpha_is_one_when_no_ratio_halves_the_accuracy():
    class Constant(nn.Module):  # noise cannot move its accuracy (the share of class 0)
        def __init__(self):
            super().__init__()
            self.unused = nn.Parameter(torch.zeros(1))  # QueryModel reads the device from the parameters

        def forward(self, x):
            return torch.eye(4)[torch.zeros(len(x), dtype=torch.long)]

    images, labels = quadrant_images(40, 3)
    with pytest.warns(UserWarning, match="no ratio halves it"):
        alpha, probes = calibrate_alpha(QueryModel(Constant(), "label"), "PI", images, labels)
    assert alpha == 1.0 and dict(probes)[1.0] == dict(probes)[0.0] == 0.25


def test_diagnosis_finds_the_backdoored_class_and_recovers_its_trigger():
    query, setup, found = toy_diagnosis(backdoor=True)
    assert found.suspect == TARGET and found.margin > 2
    _, _, benign = toy_diagnosis(backdoor=False)
    assert benign.margin < 1  # no class stands out on the clean model
    realisations = found.realisations(TARGET)
    assert len(realisations) > 0
    test_images, test_labels = quadrant_images(200, 5)
    assert recovered_asr(query, setup, realisations, test_images, test_labels, TARGET) > 0.9
    estimate = estimate_trigger(setup, realisations, test_images[:20])
    assert estimate.mean[0, 0, 0] > 0.3 and estimate.mean[0, 0, 1] < -0.1  # the checker's bright / dark pixels
    assert estimate.snr[0, :2, :2].min() > estimate.snr[0, 4:, 4:].max()
    assert estimate.strongest_window(2) == (0, 0)  # the checker's place
    assert found.queries > 0 and found.splitting.evaluations.sum() * 3 <= found.queries
    summary = json.loads(json.dumps(found.summary(), allow_nan=False))
    rebuilt = Diagnosis.from_stored(found.splitting.tensors(), summary)
    assert rebuilt.suspect == found.suspect and rebuilt.setup == found.setup
    assert torch.equal(rebuilt.realisations(TARGET).nan_to_num(-1), realisations.nan_to_num(-1))
    assert rebuilt.splitting.config == found.splitting.config


def test_one_class_run_recovers_its_trigger_without_a_comparison():
    query = QueryModel(QuadrantModel(True), "probs")
    images, labels = quadrant_images(200, 0)
    setup = RestoreSetup("PI", 0.5)
    config = splitting_config(setup, (1, 8, 8), particles=100, survivors=50, passes=10, max_levels=25)
    found = diagnose(query, images, labels, setup, classes=[TARGET], config=config, per_set=3)
    assert found.suspect is None and math.isnan(found.margin) and found.log10_rho_at_level == []
    test_images, test_labels = quadrant_images(200, 5)
    assert recovered_asr(query, setup, found.realisations(TARGET), test_images, test_labels, TARGET) > 0.9
    summary = json.loads(json.dumps(found.summary(), allow_nan=False))
    rebuilt = Diagnosis.from_stored(found.splitting.tensors(), summary)
    assert rebuilt.suspect is None and math.isnan(rebuilt.margin) and rebuilt.classes == [TARGET]


def test_one_run_over_all_classes_recovers_the_backdoor():
    query = QueryModel(QuadrantModel(True), "probs")
    images, labels = quadrant_images(200, 0)
    setup = RestoreSetup("PI", 0.5)
    config = splitting_config(setup, (1, 8, 8), particles=100, survivors=50, passes=10, max_levels=25)
    result, recovered_class = recover_any_class(query, images, labels, setup, num_classes=4, config=config,
                                                 per_class=3)
    assert result.particles.shape[0] == 1 and recovered_class == TARGET
    test_images, test_labels = quadrant_images(200, 5)
    assert recovered_asr(query, setup, result.realisations(0), test_images, test_labels, TARGET) > 0.9
    label_scorer = any_class_scorer(QueryModel(QuadrantModel(True), "label"), setup, "labels", images[:8], labels[:8],
                                    num_classes=4)
    unchanged = torch.full((1, 1, 1, 8, 8), float("nan"))  # UNCHANGED components: the clean images themselves
    assert label_scorer(unchanged, torch.zeros(1, dtype=torch.long)).item() == 0  # none misclassified


def test_purification_removes_the_toy_trigger_and_keeps_clean_accuracy():
    query, setup, found = toy_diagnosis(backdoor=True)
    clean_images, clean_labels = quadrant_images(200, 0)
    estimate = estimate_trigger(setup, found.realisations(TARGET), clean_images[:20])
    test_images, test_labels = quadrant_images(200, 6)
    triggered = test_images[test_labels != TARGET].clone()
    triggered[:, 0, :2, :2] = PATTERN
    assert (query.labels(triggered) == TARGET).float().mean() == 1
    for transform in TRANSFORMS:
        purifier, tried = select_purifier(query, estimate, clean_images, clean_labels, transform=transform,
                                          max_accuracy_drop=0.02)
        kept = [t.accuracy for t in tried if t.strength <= purifier.strength]
        assert tried[0].strength == 0 and min(kept) >= 0.98
        assert (query.labels(purifier(test_images)) == test_labels).float().mean() >= 0.95
        if transform != "gram_schmidt":  # one direction cannot undo a replaced patch on every image
            assert (query.labels(purifier(triggered)) == TARGET).float().mean() < 0.2, transform


def test_same_seed_same_diagnosis():
    _, _, first = toy_diagnosis(backdoor=True, seed=3)
    _, _, second = toy_diagnosis(backdoor=True, seed=3)
    assert first.log10_rho_at_level == second.log10_rho_at_level
    assert torch.equal(first.splitting.particles.nan_to_num(-1), second.splitting.particles.nan_to_num(-1))


def test_bad_inputs_are_named():
    with pytest.raises(WorkbenchError, match="setup"):
        RestoreSetup("XX", 0.1)
    with pytest.raises(WorkbenchError, match="alpha"):
        RestoreSetup("PI", 1.5)
    query = QueryModel(QuadrantModel(False), "probs")
    images, labels = quadrant_images(40, 0)
    with pytest.raises(WorkbenchError, match="no classes"):
        diagnose(query, images, labels, RestoreSetup("PI", 0.3), classes=[])
    with pytest.raises(WorkbenchError, match="realisations"):
        recovered_asr(query, RestoreSetup("PI", 0.3), torch.zeros(0, 1, 8, 8), images, labels, 1)
    with pytest.raises(WorkbenchError, match="at least 2 realisations"):
        estimate_trigger(RestoreSetup("PI", 0.3), torch.zeros(1, 1, 8, 8), images)


def test_figures_draw_the_results():  # the widgets: tests/test_widgets.py
    import matplotlib.pyplot as plt

    from workbench.viz.restore import (
        position_asr_figure,
        recovered_asr_figure,
        tau_rho_figure,
        tau_rho_plotly,
        trigger_figure,
    )

    _, setup, found = toy_diagnosis(backdoor=True)
    names = ["q0", "q1", "q2", "q3"]
    fig = tau_rho_figure(found, names, backdoored=TARGET)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("score threshold") and ax.get_ylabel().startswith("log10 rho")
    assert len(ax.lines) == 5 and ax.lines[TARGET].get_linewidth() > ax.lines[0].get_linewidth()  # 4 maps + level
    plt.close(fig)
    assert len(tau_rho_plotly(found, names, TARGET).data) == 4
    images, _ = quadrant_images(4, 0)
    estimate = estimate_trigger(setup, found.realisations(TARGET), images)
    stamped = setup.perturb(images[:1], found.realisations(TARGET)[:1])[0, 0]
    fig = trigger_figure(estimate, images[0], stamped, "class q2")
    assert len(fig.axes) == 5 and fig.axes[1].get_title() == "with a recovered perturbation"  # 4 panels + colour bar
    plt.close(fig)
    fig = recovered_asr_figure([0.1, 0.2, 0.9, 0.1], names, backdoored=TARGET)
    assert fig.axes[0].patches[TARGET].get_height() == 90 and fig.axes[0].get_ylabel().endswith("(%)")
    plt.close(fig)
    fig = position_asr_figure(torch.eye(5), planted=(1, 1), recovered=(3, 3), title="where it fires")
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("patch column") and ax.get_ylabel().startswith("patch row")
    assert [c.get_offsets().tolist() for c in ax.collections] == [[[1, 1]], [[3, 3]]]
    plt.close(fig)



def test_the_map_reaching_furthest_at_equal_rarity_is_the_suspect():
    low = (torch.tensor([0.1, 0.2, 0.3]), torch.tensor([-0.3, -0.6, -0.9]))
    high = (torch.tensor([0.1, 0.5, 0.9]), torch.tensor([-0.3, -0.6, -0.9]))
    short = (torch.tensor([0.1, 0.2]), torch.tensor([-0.3, -0.6]))  # stopped early: rho* = -0.6
    level, at_level, ranked = compare_maps([low, high])
    assert ranked == [1, 0] and level == pytest.approx(0.3)
    assert at_level == pytest.approx([-0.9, -0.45])  # the suspect's map read at the runner-up's top level
    level, _, ranked = compare_maps([low, high, short])
    assert ranked[0] == 1 and level == pytest.approx(0.2)  # both other maps reach rho* = -0.6 at tau 0.2
