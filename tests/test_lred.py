"""L-RED pattern estimation (Alg. 1) and the order-statistic test (Sec. 3.2) on small known cases."""

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from workbench.core.models import build_model
from workbench.core.validation import WorkbenchError
from workbench.defenses.lred import (
    LREDConfig,
    detect,
    detection_images,
    estimate_patterns,
    estimation_problems,
    order_statistic_test,
)


def margin_model() -> nn.Module:
    """Linear 3-class model on 1x2x2 images: logit_c = 10 x_c (pixel 3 unused)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(10 * torch.eye(3, 4))
    return model


def margin_images(per_class: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0 lies close to class 2 (margin 0.1), class 1 far from it (margin 0.8): a small perturbation moves
    class 0 to class 2, as a backdoor's shortcut would, but not class 1."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.6, 0.2, 0.5, 0.5], [0.2, 0.9, 0.1, 0.5], [0.2, 0.2, 0.9, 0.5]])
    y = torch.arange(3).repeat_interleave(per_class)
    x = (centres[y] + 0.01 * torch.rand(len(y), 4, generator=gen)).clamp(0, 1)
    return x.view(-1, 1, 2, 2), y


CONFIG = LREDConfig(step=0.005, max_iterations=2000)


def test_annealing_moves_weight_to_the_shortcut_class_and_shrinks_the_pattern():
    x, y = margin_images()
    targets, sources = estimation_problems("RED-A", 3)
    annealed = estimate_patterns(margin_model(), x, y, targets, sources, CONFIG)
    uniform = estimate_patterns(margin_model(), x, y, targets, sources,
                                LREDConfig(step=0.005, max_iterations=2000, weighting="uniform"))
    assert annealed.reached[2] and uniform.reached[2]
    assert annealed.weights[2, 0] > 0.9 > annealed.weights[2, 1]  # Eq. 8 concentrates w on class 0
    assert annealed.weights[2, 2] == 0
    assert torch.allclose(uniform.weights[2], torch.tensor([0.5, 0.5, 0.0]))  # RED-U never moves w
    assert annealed.norms[2] < 0.5 * uniform.norms[2]  # only class 0 has to be flipped
    # the trace: the stopping value exceeds pi, earlier ones do not; the weight of class 0 only grows
    steps = int(annealed.iterations[2])
    q = annealed.trace_q[:steps, 2]
    assert q[-1] > CONFIG.pi and bool((q[:-1] <= CONFIG.pi).all())
    assert torch.isnan(annealed.trace_q[steps:, 2]).all()
    w0 = annealed.trace_weights[:steps, 2, 0]
    assert bool((w0[1:] >= w0[:-1] - 1e-6).all()) and w0[0] >= 0.5


def test_temperature_is_minus_log_q_and_weights_follow_eq_8():
    x, y = margin_images()
    targets, sources = estimation_problems("RED-A", 3)
    result = estimate_patterns(margin_model(), x, y, targets, sources, CONFIG)
    t = result.trace_temperature[:, 2]
    q = result.trace_q[:, 2]
    updated = ~torch.isnan(t)
    assert updated.any()
    assert torch.allclose(t[updated], -torch.log(q[updated]))


def test_steps_have_length_delta():
    x, y = margin_images()
    targets, sources = estimation_problems("RED-U", 3)
    result = estimate_patterns(margin_model(), x, y, targets, sources,
                               LREDConfig(step=0.005, max_iterations=2000, weighting="uniform"))
    norms = result.trace_norm[:, 0]
    increments = (norms[1:] - norms[:-1])[~torch.isnan(norms[1:])]
    assert bool((increments <= 0.005 + 1e-6).all())
    assert norms[0] == pytest.approx(0.005, rel=1e-5)


def test_batched_problems_equal_one_problem_at_a_time():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))
    x = torch.rand(12, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    y = torch.arange(4).repeat(3)
    config = LREDConfig(step=0.05, max_iterations=60, pi=0.6)
    targets, sources = estimation_problems("RED-P", 4)
    together = estimate_patterns(model, x, y, targets, sources, config)
    for p in (0, 5, 11):
        alone = estimate_patterns(model, x, y, targets[p:p + 1], sources[p:p + 1], config)
        assert torch.allclose(alone.patterns[0], together.patterns[p], atol=1e-5)
        assert alone.iterations[0] == together.iterations[p]


def test_estimation_bytes_do_not_depend_on_the_thread_count():
    # a problem that stops early leaves the others' (problem, image) pairs unevenly spread over the threads: with
    # v[p_idx]'s backward, 1 and 2 threads then summed them in different orders (last bits of the patterns differed
    # from the third step on, and with them the engines' artefacts)
    torch.manual_seed(0)
    model = build_model("resnet_small", in_channels=3, num_classes=10, image_size=32, widths=(16, 32, 32, 64))
    x = torch.rand(20, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(10).repeat_interleave(2)
    targets, sources = estimation_problems("RED-A", 10)
    config = LREDConfig(step=0.2, max_norm=3.0, max_iterations=10)
    threads = torch.get_num_threads()
    try:
        runs = []
        for count in (1, 2):
            torch.set_num_threads(count)
            runs.append(estimate_patterns(model, x, y, targets, sources, config))
    finally:
        torch.set_num_threads(threads)
    assert len(set(runs[0].iterations.tolist())) > 1  # some problems stopped before others
    assert torch.equal(runs[0].patterns, runs[1].patterns) and torch.equal(runs[0].weights, runs[1].weights)


def test_problems_of_each_method():
    targets, sources = estimation_problems("RED-P", 5)
    assert len(targets) == 20 and sources.shape == (20, 5)
    assert bool((sources.sum(1) == 1).all()) and not sources[torch.arange(20), targets].any()
    targets, sources = estimation_problems("RED-A", 5)
    assert targets.tolist() == list(range(5)) and sources.sum().item() == 20
    with pytest.raises(WorkbenchError, match="unknown L-RED method"):
        estimation_problems("RED-X", 5)


def test_order_statistic_p_value_known_answer_and_outlier():
    spread = stats.gamma.ppf(np.linspace(0.05, 0.95, 10), 5.0, scale=0.2)  # a Gamma sample without an outlier
    for free_location in (False, True):
        p_value, params = order_statistic_test(spread, free_location=free_location)
        fitted = stats.gamma.fit(spread[:-1]) if free_location else stats.gamma.fit(spread[:-1], floc=0)
        assert params == pytest.approx(fitted)
        assert p_value == pytest.approx(1 - stats.gamma.cdf(spread[-1], *fitted) ** 10, rel=1e-9)
    assert order_statistic_test(spread)[0] > 0.05
    outlier = spread.copy()
    outlier[-1] = 5.0
    assert order_statistic_test(outlier)[0] < 1e-6
    assert order_statistic_test(np.append(spread[:-1], 1e4))[0] == 0.0  # the tail underflows: the paper's "u.f."
    with pytest.raises(WorkbenchError, match="at least 4"):
        order_statistic_test([1.0, 2.0])


def test_detect_flags_the_shortcut_target_and_is_repeatable():
    # 5 classes; class 0 sits next to class 4 (the "target"), all others far from every class
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(10 * torch.eye(5, 6))
    centres = 0.1 + 0.8 * torch.eye(5, 6)
    centres[0, 4] = 0.85  # class 0 is 0.05 from class 4
    y = torch.arange(5).repeat_interleave(4)
    x = (centres[y] + 0.02 * torch.rand(len(y), 6, generator=torch.Generator().manual_seed(0))).view(-1, 1, 2, 3)
    config = LREDConfig(step=0.002, max_iterations=3000)
    first = detect(model, x.clamp(0, 1), y, 5, "RED-A", config)
    second = detect(model, x.clamp(0, 1), y, 5, "RED-A", config)
    assert first.inferred_target == 4 and first.inferred_source == 0
    assert torch.equal(first.statistics, second.statistics) and first.p_value == second.p_value
    assert first.summary()["inferred_target"] == 4
    assert detect(model, x.clamp(0, 1), y, 5, "RED-U", config).config.weighting == "uniform"


def test_bad_inputs_are_named():
    x, y = margin_images()
    targets, sources = estimation_problems("RED-A", 3)
    bad = sources.clone()
    bad[0, 0] = True
    with pytest.raises(WorkbenchError, match="own target"):
        estimate_patterns(margin_model(), x, y, targets, bad, CONFIG)
    with pytest.raises(WorkbenchError, match=r"\[0, 1\]"):
        estimate_patterns(margin_model(), x * 3, y, targets, sources, CONFIG)
    with pytest.raises(WorkbenchError, match="labels"):
        estimate_patterns(margin_model(), x, y[:-1], targets, sources, CONFIG)
    with pytest.raises(WorkbenchError, match="pi"):
        LREDConfig(pi=1.0)
    with pytest.raises(WorkbenchError, match="fewer than"):
        detection_images(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 1, 2]), 2, 3)


def test_detection_images_are_seeded_and_balanced():
    images = torch.randint(0, 256, (60, 1, 2, 2), dtype=torch.uint8)
    labels = torch.arange(3).repeat(20)
    x1, y1 = detection_images(images, labels, 2, 3, seed=4)
    x2, y2 = detection_images(images, labels, 2, 3, seed=4)
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and y1.tolist() == [0, 0, 1, 1, 2, 2]
    assert x1.dtype == torch.float32 and float(x1.max()) <= 1


def test_snapshots_and_pattern_at():
    x, y = margin_images()
    targets, sources = estimation_problems("RED-A", 3)
    result = estimate_patterns(margin_model(), x, y, targets, sources, CONFIG, snapshot_every=5)
    assert result.snapshot_iterations.tolist()[:2] == [5, 10]
    assert result.trace_patterns.shape[1:] == (3, 1, 2, 2)
    assert torch.equal(result.pattern_at(2, 0), torch.zeros(1, 2, 2))
    assert torch.equal(result.pattern_at(2, 7), result.trace_patterns[0, 2])
    assert result.trace_patterns[0, 2].norm() == pytest.approx(float(result.trace_norm[4, 2]), rel=1e-5)
    assert torch.equal(result.pattern_at(2, 10**6), result.patterns[2])
    with pytest.raises(WorkbenchError, match="snapshot_every"):
        estimate_patterns(margin_model(), x, y, targets, sources, CONFIG, snapshot_every=-1)


def test_figures_draw_the_results():  # the widgets: tests/test_widgets.py
    import matplotlib.pyplot as plt

    from workbench.viz.lred import annealing_figure, collateral_damage_figure, detection_figure, pattern_view

    x, y = margin_images(per_class=4)
    result = detect(margin_model(), x, y, 3, "RED-P", CONFIG)
    fig = detection_figure(result, ["a", "b", "c"], true_target=2, true_sources=[0])
    assert "RED-P" in fig.axes[0].get_title() and fig.axes[0].get_ylabel().startswith("r = 1")
    plt.close(fig)
    fig = annealing_figure(result.estimation, 0, 1, ["a", "b", "c"])
    assert fig.axes[1].get_xlabel() == "iteration"
    plt.close(fig)
    fig = collateral_damage_figure(np.array([0.9, 0.1, 0.0]), np.array([0.8, 0.2, 0.0]), 2, ["a", "b", "c"],
                                   clean_misclassification=np.array([0.05, 0.02, 0.0]))
    bars = fig.axes[0].patches
    assert len(bars) == 4 and bars[0].get_height() == pytest.approx(0.9) and bars[2].get_height() == pytest.approx(0.05)
    assert fig.axes[0].get_ylabel() == "fraction classified to the target"
    plt.close(fig)
    image, gain = pattern_view(torch.tensor([[[0.01, -0.02]]]))
    assert image.shape == (1, 2, 3) and gain == pytest.approx(25.0) and image[0, 1, 0] == pytest.approx(0.0, abs=1e-6)
