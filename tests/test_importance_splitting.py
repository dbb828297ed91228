"""Importance splitting (REStore App. E-G) against rare events whose probability is known in closed form."""

import json
import math

import pytest
import torch
from scipy import stats

from workbench.core.validation import WorkbenchError
from workbench.defenses.importance_splitting import (
    GaussianPrior,
    SparseIIDPrior,
    SplittingConfig,
    decay_to_one_component,
    importance_splitting,
)

LOG10 = math.log(10)


def gaussian_mean_score(x: torch.Tensor, problems: torch.Tensor) -> torch.Tensor:
    """sum(x) / sqrt(d): N(0, 1) under N(0, I_d), so P(score > tau) = 1 - Phi(tau)."""
    return x.flatten(2).sum(-1) / math.sqrt(x[0, 0].numel())


def replaced_count(x: torch.Tensor, problems: torch.Tensor) -> torch.Tensor:
    """Number of replaced components: Binomial(d, alpha) under the sparse IID prior, with heavy ties."""
    return (~torch.isnan(x)).flatten(2).sum(-1).float()


def uniform_values(shape, generator):
    return torch.rand(shape, generator=generator)


def test_gaussian_tail_down_to_1e_minus_10():
    """16 independent replicates as 16 problems of one run: the estimates of 1 - Phi(tau) at every level and at
    the target 1e-10 land within a factor 3 of the truth on average (geometric mean) and within 10x each."""
    target = stats.norm.isf(1e-10)
    prior = GaussianPrior((4, 4))
    config = SplittingConfig(particles=200, survivors=100, passes=20, max_levels=60, target_level=target)
    result = importance_splitting(prior.generate, prior.kernel, gaussian_mean_score, num_problems=16, config=config,
                                  seed=1)
    assert result.stop_reason == ["target"] * 16
    estimate = result.target_log_rho / LOG10
    assert abs(estimate.mean().item() + 10) < math.log10(3)
    assert ((estimate + 10).abs() < 1).all()
    for level in range(int(result.levels_run.min())):
        truth = stats.norm.logsf(result.levels[level].numpy()) / LOG10
        error = result.log_rho[level].double() / LOG10 - torch.from_numpy(truth)
        assert abs(error.mean().item()) < math.log10(3), level
    # without ties every level keeps exactly k particles: rho_j = (k / n)^j
    for b in range(16):
        assert (result.survivor_counts[: int(result.levels_run[b]), b] == 100).all()
    levels, log10_rho = result.curve(0)
    assert torch.allclose(log10_rho, torch.arange(1, len(levels) + 1) * math.log10(0.5))
    assert (levels.diff() > 0).all()


def test_binomial_tail_with_tied_scores():
    """Integer scores tie at almost every level: the K_j / n estimator still finds P(Binomial(100, 0.1) > 35)
    (about 2.9e-12) within a factor 3 on average."""
    d, alpha, target = 100, 0.1, 35
    truth = stats.binom.logsf(target, d, alpha) / LOG10
    prior = SparseIIDPrior(torch.full((d,), alpha), uniform_values)
    config = SplittingConfig(particles=200, survivors=100, passes=20, max_levels=80, max_strength=1.0,
                             target_level=target)
    result = importance_splitting(prior.generate, prior.kernel, replaced_count, num_problems=16, config=config)
    estimate = result.target_log_rho / LOG10
    assert abs(estimate.mean().item() - truth) < math.log10(3)
    assert (result.survivor_counts[: int(result.levels_run.min()) - 1] < 100).any()  # ties did happen
    realised = [result.scores[b][result.survivors[b]] for b in range(16)]
    assert all((scores > target).all() and len(scores) > 0 for scores in realised)


def test_realisations_lie_above_the_last_level_and_counts_add_up():
    prior = GaussianPrior((8,))
    config = SplittingConfig(particles=40, survivors=20, passes=3, max_levels=5)
    result = importance_splitting(prior.generate, prior.kernel, gaussian_mean_score, num_problems=3, config=config,
                                  seed=4)
    assert result.stop_reason == ["max_levels"] * 3 and result.levels_run.tolist() == [5, 5, 5]
    # n to start, then (n - k) clones x T passes at each of the 4 refreshes before the last level
    assert result.evaluations.tolist() == [40 + 4 * 20 * 3] * 3
    for b in range(3):
        assert result.realisations(b).shape == (20, 8)
        assert (result.scores[b][result.survivors[b]] > result.levels[-1, b]).all()
        assert torch.allclose(gaussian_mean_score(result.particles[b:b + 1], None)[0], result.scores[b])
    assert result.particles.shape == (3, 40, 8)
    summary = result.summary()
    json.dumps(summary, allow_nan=False)
    assert len(summary["levels"]) == 3 and len(summary["levels"][0]) == 5


def test_a_saturated_problem_stops_while_the_others_run():
    """Problem 0 scores every particle alike (nothing can be split); problem 1 keeps running, and later score
    calls only see the problems still running."""
    seen = []

    def score(x, problems):
        seen.append(problems.tolist())
        values = gaussian_mean_score(x, problems)
        return torch.where((problems == 0)[:, None], torch.zeros_like(values), values)

    prior = GaussianPrior((6,))
    config = SplittingConfig(particles=30, survivors=15, passes=2, max_levels=4)
    result = importance_splitting(prior.generate, prior.kernel, score, num_problems=2, config=config)
    assert result.stop_reason == ["saturated", "max_levels"]
    assert result.levels_run.tolist() == [1, 4]
    assert result.log_rho[0, 0] == -math.inf  # P(score > 0) = 0 when the score is always 0
    assert result.survivors[0].all()  # every particle realises the top score
    assert seen[0] == [0, 1] and all(problems == [1] for problems in seen[1:])


def test_same_seed_same_run():
    prior = SparseIIDPrior(torch.full((3, 5, 5), 0.2), uniform_values)
    config = SplittingConfig(particles=20, survivors=10, passes=2, max_levels=6, max_strength=1.0)

    def run(seed):
        return importance_splitting(prior.generate, prior.kernel, replaced_count, num_problems=2, config=config,
                                    seed=seed)

    first, second, other = run(0), run(0), run(1)
    assert torch.equal(first.particles.nan_to_num(-1), second.particles.nan_to_num(-1))
    torch.testing.assert_close(first.levels, second.levels, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(first.log_rho, second.log_rho, rtol=0, atol=0, equal_nan=True)
    assert not torch.equal(first.particles.nan_to_num(-1), other.particles.nan_to_num(-1))


def test_kernels_leave_their_distribution_invariant():
    gen = torch.Generator().manual_seed(0)
    gaussian = GaussianPrior((50,))
    x = gaussian.generate(2, 2000, gen)
    for _ in range(10):
        x = gaussian.kernel(x, torch.tensor([0.3, 3.0]), gen)
    assert abs(x.mean().item()) < 0.01 and abs(x.var().item() - 1) < 0.02

    sparse = SparseIIDPrior(torch.tensor([0.05, 0.3, 0.0]).repeat(100), uniform_values)
    y = sparse.generate(2, 2000, gen)
    for _ in range(10):
        y = sparse.kernel(y, torch.tensor([0.5, 1.0]), gen)
    replaced = (~torch.isnan(y)).float().mean(dim=(0, 1)).reshape(100, 3).mean(0)
    assert torch.allclose(replaced, torch.tensor([0.05, 0.3, 0.0]), atol=0.01)  # frozen components stay frozen
    values = y[~torch.isnan(y)]
    assert abs(values.mean().item() - 0.5) < 0.01


def test_decay_to_one_component():
    decay = decay_to_one_component(30, 1.0, 3072 * 0.07)
    assert math.isclose(decay ** 30 * 3072 * 0.07, 1.0)
    with pytest.raises(WorkbenchError, match="nothing to decay"):
        decay_to_one_component(30, 1.0, 0.5)


def test_bad_settings_and_bad_scores_are_named():
    with pytest.raises(WorkbenchError, match="survivors"):
        SplittingConfig(particles=10, survivors=10)
    with pytest.raises(WorkbenchError, match="accept_low"):
        SplittingConfig(accept_low=0.6, accept_high=0.5)
    with pytest.raises(WorkbenchError, match="max_strength"):
        SplittingConfig(strength=2.0, max_strength=1.0)
    with pytest.raises(WorkbenchError, match="empty"):
        SparseIIDPrior(torch.zeros(4), uniform_values)
    prior = GaussianPrior((4,))
    config = SplittingConfig(particles=10, survivors=5, passes=1, max_levels=2)
    with pytest.raises(WorkbenchError, match="one score per particle"):
        importance_splitting(prior.generate, prior.kernel, lambda x, p: x.sum(-1)[:, :3], num_problems=2,
                             config=config)
    with pytest.raises(WorkbenchError, match="finite"):
        importance_splitting(prior.generate, prior.kernel, lambda x, p: x.sum(-1) / 0, num_problems=2,
                             config=config)
