"""ABL, I-BAU and DP-SGD on known cases and a tiny poisoned toy set (bright quadrant = class, bright centre patch =
trigger relabelled to class 0), with tiny models so each test runs in seconds on one CPU thread."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.core import training
from workbench.core.data import ImageDataset
from workbench.core.metrics import attack_success_rate, clean_accuracy
from workbench.core.training import TrainConfig, new_model, train_classifier
from workbench.core.validation import WorkbenchError
from workbench.defenses.baselines.abl import (
    ABLConfig,
    ABLResult,
    isolate_lowest,
    isolation_precision,
    lga_loss,
    train_abl,
)
from workbench.defenses.baselines.dp import (
    DPConfig,
    clip_per_sample,
    dp_model,
    per_sample_gradients,
    private_gradient,
    replace_batchnorm,
    train_dp,
)
from workbench.defenses.baselines.ibau import (
    IBAUConfig,
    ibau,
    implicit_hypergradient,
    project_l2,
    universal_perturbation,
)

NAMES = tuple(str(c) for c in range(10))
TARGET = 0
RECIPE = TrainConfig(dataset="cifar10", model="resnet_small", model_options={"widths": [8, 8, 16, 16]},
                     batch_size=32, optimizer="adam", lr=1e-2, schedule="constant", augment="none",
                     label_smoothing=0.0, weight_decay=0.0, epochs=4)
LENET = TrainConfig(dataset="cifar10", model="lenet5", batch_size=32, optimizer="adam", lr=1e-2, schedule="constant",
                    augment="none", label_smoothing=0.0, weight_decay=0.0, epochs=1)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # leave the machine's other cores to whatever else runs; also makes the timings stable
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_set(n: int = 400, rate: float = 0.1, seed: int = 0, classes: int = 4) -> tuple[ImageDataset, torch.Tensor]:
    """n 32x32 images of `classes` classes (class k: a bright 12x12 block in quadrant k over dim noise); a fraction
    `rate` of the images, drawn from the non-target classes, gets a bright 6x6 centre patch and label TARGET.
    Returns the dataset and its (n,) poisoned mask."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    x = torch.rand(n, 3, 32, 32, generator=gen) * 0.4
    for k in range(classes):
        r, c = divmod(k, 2)
        x[labels == k, :, 2 + 16 * r:14 + 16 * r, 2 + 16 * c:14 + 16 * c] += 0.5
    candidates = (labels != TARGET).nonzero().squeeze(1)
    poisoned = candidates[torch.randperm(len(candidates), generator=gen)[:int(rate * n)]]
    x[poisoned, :, 13:19, 13:19] = 1.0
    labels[poisoned] = TARGET
    mask = torch.zeros(n, dtype=torch.bool)
    mask[poisoned] = True
    return ImageDataset("cifar10", (x.clamp(0, 1) * 255).round().to(torch.uint8), labels, NAMES), mask


def triggered(clean: ImageDataset) -> torch.Tensor:
    """The non-target images of `clean` with the trigger."""
    x = clean.float_images()[clean.labels != TARGET].clone()
    x[:, :, 13:19, 13:19] = 1.0
    return x


@pytest.fixture(scope="module")
def toy() -> dict[str, object]:
    train, mask = toy_set()
    test, _ = toy_set(200, rate=0.0, seed=1)
    holdout, _ = toy_set(100, rate=0.0, seed=5)
    return {"train": train, "mask": mask, "test": test, "x_bd": triggered(test), "holdout": holdout}


@pytest.fixture(scope="module")
def backdoored(toy: dict) -> nn.Module:
    """resnet_small trained on the poisoned toy set: CA and ASR both 1 (checked in the I-BAU test)."""
    model = new_model(RECIPE)
    train_classifier(model, toy["train"], RECIPE, device="cpu", progress=False)
    return model.eval()


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- ABL ------------------------------------------------------------------------------------------------------------

def _logits_with_ce(ce: float) -> torch.Tensor:
    """Two-class logits [a, 0] whose CE against class 0 is `ce`: log(1 + e^-a) = ce."""
    a = -torch.log(torch.expm1(torch.tensor(ce, dtype=torch.float64)))
    return torch.stack([a, torch.zeros((), dtype=torch.float64)]).view(1, 2)


@pytest.mark.parametrize("level", ["batch", "sample"])
def test_lga_loss_flips_sign_at_gamma(level: str) -> None:
    y = torch.zeros(1, dtype=torch.long)
    for ce, sign in ((0.3, -1), (0.8, 1)):
        logits = _logits_with_ce(ce).requires_grad_(True)
        loss = lga_loss(logits, y, 0.5, level)
        assert loss.item() == pytest.approx(sign * ce)
        loss.backward()
        plain = torch.autograd.grad(F.cross_entropy(logits, y), logits)[0]
        # below gamma the step ascends on CE (gradient of opposite sign), above it descends
        assert torch.allclose(logits.grad, sign * plain)
    both = torch.cat([_logits_with_ce(0.3), _logits_with_ce(0.8)])
    yy = torch.zeros(2, dtype=torch.long)
    expected = {"sample": (-0.3 + 0.8) / 2, "batch": 0.55}[level]  # batch: mean CE 0.55 > gamma, no flip
    assert lga_loss(both, yy, 0.5, level).item() == pytest.approx(expected)


def test_isolation_takes_the_lowest_losses_and_scores_them() -> None:
    losses = torch.tensor([0.9, 0.01, 0.5, 0.02, 2.0, 0.03, 0.7, 0.8, 0.6, 0.4])
    isolated = isolate_lowest(losses, 0.3)
    assert isolated.tolist() == [1, 3, 5]
    assert isolate_lowest(losses, 0.01).tolist() == [1]  # at least one example
    poisoned = torch.zeros(10, dtype=torch.bool)
    poisoned[[1, 5, 8]] = True
    assert isolation_precision(isolated, poisoned) == pytest.approx(2 / 3)


def test_abl_isolates_poisoned_examples_and_unlearning_removes_the_backdoor(toy: dict) -> None:
    config = ABLConfig(isolation_ratio=0.05, isolate_epochs=4, finetune_epochs=2, unlearn_epochs=8, unlearn_lr=1e-3,
                       unlearn_batch_size=20)
    test, x_bd = toy["test"], toy["x_bd"]
    result = train_abl(toy["train"], RECIPE, config, poisoned=toy["mask"], monitor=(test.float_images(), test.labels),
                       monitor_backdoor=(x_bd, TARGET), device="cpu", progress=False)
    assert len(result.isolated) == 20 and result.losses.shape == (400,)
    # 10 % of the set is poisoned: a random pick would score ~0.1
    assert result.isolation_precision >= 0.8
    assert [h["phase"] for h in result.history] == ["isolate"] * 4 + ["finetune"] * 2 + ["unlearn"] * 8
    before = [h for h in result.history if h["phase"] == "finetune"][-1]
    assert before["asr"] > 0.5  # the isolated examples are not all the poisoned ones: fine-tuning keeps the backdoor
    assert attack_success_rate(result.model, x_bd, TARGET) <= 0.1
    assert clean_accuracy(result.model, test.float_images(), test.labels) >= 0.7
    assert all(h["loss"] < 0 for h in result.history if h["phase"] == "unlearn")  # -CE: ascent
    assert not result.model.training


def test_abl_is_repeatable_and_seeded(toy: dict) -> None:
    small = toy["train"].subset(torch.arange(128))
    config = ABLConfig(isolation_ratio=0.1, isolate_epochs=1, finetune_epochs=1, unlearn_epochs=1,
                       unlearn_batch_size=8, unlearn_objective="joint")
    a, b = (train_abl(small, LENET, config, device="cpu", progress=False) for _ in range(2))
    assert same_weights(a.model, b.model) and torch.equal(a.isolated, b.isolated)
    assert a.isolation_precision is None
    c = train_abl(small, LENET, ABLConfig(**{**config.to_dict(), "seed": 1}), device="cpu", progress=False)
    assert not same_weights(a.model, c.model)
    skip = train_abl(small, LENET, ABLConfig(isolation_ratio=0.1, isolate_epochs=1, finetune_epochs=0,
                                             unlearn_epochs=0), device="cpu", progress=False)
    assert [h["phase"] for h in skip.history] == ["isolate"]


def _killed_after(saves: int | None, monkeypatch: pytest.MonkeyPatch, train: Callable[[], object]) -> list[str]:
    """Run `train` as a process that dies (KeyboardInterrupt) right after its `saves`-th epoch checkpoint is written
    (None: never); the names of the checkpoint files written, in order."""
    save_epoch, written = training._save_epoch, []

    def save_then_die(*args, **kwargs):
        save_epoch(*args, **kwargs)
        written.append(args[0].name)
        if len(written) == saves:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(training, "_save_epoch", save_then_die)
        if saves is None:
            train()
        else:
            with pytest.raises(KeyboardInterrupt):
                train()
    return written


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


@pytest.mark.parametrize("saves_before_death", [1, 3, 4])  # in isolation, in fine-tuning, before unlearning
def test_a_killed_abl_resumes_in_its_phase_with_the_weights_of_an_uninterrupted_run(
        toy: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saves_before_death: int) -> None:
    small = toy["train"].subset(torch.arange(128))
    config = ABLConfig(isolation_ratio=0.1, isolate_epochs=2, finetune_epochs=2, unlearn_epochs=1,
                       unlearn_batch_size=8, unlearn_objective="joint")
    whole = train_abl(small, LENET, config, device="cpu", progress=False)
    checkpoint = tmp_path / "abl.pt"
    saves = _killed_after(saves_before_death, monkeypatch,
                          lambda: train_abl(small, LENET, config, device="cpu", progress=False, checkpoint=checkpoint))
    assert saves == ["abl.isolate.pt"] * min(saves_before_death, 2) + ["abl.finetune.pt"] * (saves_before_death - 2)
    runs: dict[str, ABLResult] = {}
    resumed_saves = _killed_after(None, monkeypatch, lambda: runs.update(resumed=train_abl(
        small, LENET, config, device="cpu", progress=False, checkpoint=checkpoint)))
    assert len(saves) + len(resumed_saves) == 5  # the resumed run trains only the epochs not saved (2 + 2 + 1)
    resumed = runs["resumed"]
    assert same_weights(whole.model, resumed.model) and torch.equal(whole.isolated, resumed.isolated)
    assert _without_seconds(resumed.history) == _without_seconds(whole.history)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["abl.finetune.pt", "abl.isolate.pt", "abl.unlearn.pt"]


def test_abl_rejects_bad_configs_and_inputs(toy: dict) -> None:
    with pytest.raises(WorkbenchError, match="isolation_ratio must be in"):
        ABLConfig(isolation_ratio=1.0)
    with pytest.raises(WorkbenchError, match="gamma must be a finite number > 0"):
        ABLConfig(gamma=0)
    with pytest.raises(WorkbenchError, match="finetune_epochs must be an integer >= 0"):
        ABLConfig(finetune_epochs=-1)
    with pytest.raises(WorkbenchError, match="isolate_epochs must be a positive integer"):
        ABLConfig(isolate_epochs=0)
    with pytest.raises(WorkbenchError, match="unknown LGA level 'mean'; choose one of: batch, sample"):
        ABLConfig(lga_level="mean")
    with pytest.raises(WorkbenchError, match="unknown unlearning objective"):
        ABLConfig(unlearn_objective="descent")
    assert ABLConfig().to_dict()["isolation_ratio"] == 0.01
    with pytest.raises(WorkbenchError, match="poisoned mask has 3 entries for 400"):
        train_abl(toy["train"], RECIPE, poisoned=torch.zeros(3, dtype=torch.bool), device="cpu", progress=False)
    mnist = TrainConfig(dataset="mnist", model="lenet5")
    with pytest.raises(WorkbenchError, match="but the model takes"):
        train_abl(toy["train"], mnist, device="cpu", progress=False)


# --- I-BAU ----------------------------------------------------------------------------------------------------------

def test_hypergradient_matches_the_implicit_function_theorem_on_a_quadratic() -> None:
    gen = torch.Generator().manual_seed(0)
    q = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))[0]
    a = q @ torch.diag(torch.tensor([1.0, 1.5, 2.0, 3.0], dtype=torch.float64)) @ q.T  # SPD inner Hessian
    b = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    c = torch.randn(4, generator=gen, dtype=torch.float64)
    theta = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    unused = torch.ones(2, dtype=torch.float64, requires_grad=True)

    def inner(d: torch.Tensor) -> torch.Tensor:  # minimised at delta* = A^-1 B theta
        return 0.5 * d @ a @ d - d @ (b @ theta)

    def outer(d: torch.Tensor) -> torch.Tensor:
        return 0.5 * (d - c).pow(2).sum() + 0.5 * theta.pow(2).sum()

    def psi(t: torch.Tensor) -> torch.Tensor:
        d = torch.linalg.solve(a, b @ t)
        return 0.5 * (d - c).pow(2).sum() + 0.5 * t.pow(2).sum()

    star = torch.linalg.solve(a, b @ theta.detach())
    exact = b.T @ torch.linalg.solve(a, star - c) + theta.detach()  # d psi / d theta by the IFT
    alpha = 0.2  # spectral radius of I - alpha A is 0.8: the fixed-point iteration converges
    hyper, zero = implicit_hypergradient(inner, outer, star, [theta, unused], steps=300, step_size=alpha)
    assert torch.allclose(hyper, exact, atol=1e-10) and torch.equal(zero, torch.zeros(2, dtype=torch.float64))
    fd = torch.stack([(psi(theta.detach() + e) - psi(theta.detach() - e)) / 2e-6
                      for e in torch.eye(3, dtype=torch.float64) * 1e-6])
    assert torch.allclose(hyper, fd, atol=1e-6)
    # K steps are the truncated Neumann series: v_K = sum_{k<K} (I - alpha A)^k grad_delta L_out
    g_delta = star - c
    v, term = torch.zeros(4, dtype=torch.float64), g_delta.clone()
    for _ in range(3):
        v, term = v + term, (torch.eye(4, dtype=torch.float64) - alpha * a) @ term
    three = implicit_hypergradient(inner, outer, star, [theta], steps=3, step_size=alpha)[0]
    assert torch.allclose(three, theta.detach() + alpha * b.T @ v, atol=1e-12)
    partial = implicit_hypergradient(inner, outer, star, [theta], steps=0, step_size=alpha)[0]
    assert torch.allclose(partial, theta.detach())  # K = 0: no implicit term


def test_universal_perturbation_stays_in_its_ball_and_raises_the_loss(backdoored: nn.Module, toy: dict) -> None:
    delta = torch.randn(1, 3, 8, 8) * 10
    assert project_l2(delta, 2.0).norm().item() == pytest.approx(2.0, rel=1e-5)
    small = torch.full((1, 3, 8, 8), 1e-3)
    assert torch.equal(project_l2(small, 2.0), small)
    x, y = toy["holdout"].float_images(), toy["holdout"].labels
    batches = [(x[i:i + 20], y[i:i + 20]) for i in range(0, 100, 20)]
    for bound in (1.0, 10.0):
        delta = universal_perturbation(backdoored, batches, IBAUConfig(inner_lr=1000.0, bound=bound))
        assert delta.shape == (1, 3, 32, 32)
        assert delta.norm().item() <= bound * (1 + 1e-5)
        assert delta.norm().item() >= 0.99 * bound  # the huge step makes the constraint active
    with torch.no_grad():
        assert F.cross_entropy(backdoored(x + delta), y) > F.cross_entropy(backdoored(x), y) + 1


def test_ibau_unlearns_the_toy_backdoor_on_a_copy(backdoored: nn.Module, toy: dict) -> None:
    test, x_bd = toy["test"], toy["x_bd"]
    assert attack_success_rate(backdoored, x_bd, TARGET) == 1.0
    before = {k: v.clone() for k, v in backdoored.state_dict().items()}
    # the toy model is saturated (clean CE ~1e-3): its input gradients are tiny, hence the large inner step
    config = IBAUConfig(rounds=3, inner_lr=1000.0, outer_lr=1e-3, batch_size=50)
    out = ibau(backdoored, toy["holdout"], config, device="cpu", progress=False)
    assert out is not backdoored and not out.training
    assert all(torch.equal(before[k], v) for k, v in backdoored.state_dict().items())  # the input is untouched
    assert attack_success_rate(out, x_bd, TARGET) <= 0.2
    assert clean_accuracy(out, test.float_images(), test.labels) >= 0.7
    again = ibau(backdoored, toy["holdout"], config, device="cpu", progress=False)
    assert same_weights(out, again)
    # control: the same updates with a negligible perturbation (clean fine-tuning, in effect) keep the backdoor
    tiny = ibau(backdoored, toy["holdout"], IBAUConfig(**{**config.to_dict(), "bound": 1e-3}), device="cpu",
                progress=False)
    assert attack_success_rate(tiny, x_bd, TARGET) >= 0.9


def test_ibau_rejects_bad_configs_and_inputs(backdoored: nn.Module) -> None:
    with pytest.raises(WorkbenchError, match="bound must be a finite number > 0"):
        IBAUConfig(bound=0)
    with pytest.raises(WorkbenchError, match="fixed_point_steps must be an integer >= 0"):
        IBAUConfig(fixed_point_steps=-1)
    with pytest.raises(WorkbenchError, match="perturbed_fraction must be in"):
        IBAUConfig(perturbed_fraction=0)
    assert IBAUConfig().to_dict()["inner_lr"] == 1.0 and IBAUConfig().outer_lr == 1e-4
    grey = ImageDataset("mnist", torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                        NAMES)
    with pytest.raises(WorkbenchError, match="model expects"):
        ibau(backdoored, grey, device="cpu", progress=False)


# --- DP-SGD ---------------------------------------------------------------------------------------------------------

def test_dp_model_swaps_batchnorm_for_groupnorm() -> None:
    model = dp_model(RECIPE)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 7 and all(m.num_groups == m.num_channels in (8, 16) for m in norms)  # gcd(32, c) = c
    assert same_weights(dp_model(RECIPE), model)  # seeded by the recipe
    wide = replace_batchnorm(nn.Sequential(nn.BatchNorm2d(48)))
    assert wide[0].num_groups == 16  # gcd(32, 48): the groups must divide the channels
    with pytest.raises(WorkbenchError, match="build the model with dp_model"):
        per_sample_gradients(new_model(RECIPE), torch.rand(2, 3, 32, 32), torch.zeros(2, dtype=torch.long))


def test_per_sample_gradients_match_a_loop_and_clipping_bounds_them() -> None:
    model = dp_model(RECIPE).train()
    x, y = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2])
    grads, losses = per_sample_gradients(model, x, y)
    params = dict(model.named_parameters())
    loop = []
    for i in range(3):
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        loop.append(dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True)))
        assert losses[i].item() == pytest.approx(loss.item(), rel=1e-5)
    for k in params:
        assert torch.allclose(grads[k], torch.stack([g[k] for g in loop]), rtol=1e-4, atol=1e-5)
    # sigma = 0 and a huge C: the DP gradient is the ordinary mean gradient of the batch
    mean, _ = private_gradient(model, x, y, max_grad_norm=1e6, noise_multiplier=0.0,
                               generator=torch.Generator().manual_seed(0))
    batch = dict(zip(params, torch.autograd.grad(F.cross_entropy(model(x), y), list(params.values())), strict=True))
    for k in params:
        assert torch.allclose(mean[k], sum(g[k] for g in loop) / 3, rtol=1e-4, atol=1e-5)
        assert torch.allclose(mean[k], batch[k], rtol=1e-4, atol=1e-5)
    # clipping: every example's whole-model norm ends at most C; short gradients are left alone
    clipped, norms = clip_per_sample(grads, 0.05)
    after = torch.stack([g.flatten(1).pow(2).sum(1) for g in clipped.values()]).sum(0).sqrt()
    assert bool((norms > 0.05).all()) and torch.allclose(after, torch.full((3,), 0.05), rtol=1e-4)
    unchanged, _ = clip_per_sample(grads, 1e6)
    assert all(torch.equal(unchanged[k], grads[k]) for k in grads)


def test_private_gradient_noise_has_std_sigma_c_over_b() -> None:
    model = dp_model(LENET).train()
    x, y = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1, 2, 3])
    clean, _ = private_gradient(model, x, y, max_grad_norm=0.5, noise_multiplier=0.0,
                                generator=torch.Generator().manual_seed(0))
    noisy, _ = private_gradient(model, x, y, max_grad_norm=0.5, noise_multiplier=2.0,
                                generator=torch.Generator().manual_seed(0))
    diff = torch.cat([(noisy[k] - clean[k]).flatten() for k in clean])  # ~62k noise draws
    assert diff.std().item() == pytest.approx(2.0 * 0.5 / 4, rel=0.02)
    assert abs(diff.mean().item()) < 0.01


def test_train_dp_is_repeatable_and_seeded(toy: dict) -> None:
    small = toy["train"].subset(torch.arange(128))
    a, b = (train_dp(small, LENET, DPConfig(noise_multiplier=1.0), device="cpu", progress=False) for _ in range(2))
    assert same_weights(a, b) and not a.training
    c = train_dp(small, LENET, DPConfig(noise_multiplier=1.0, seed=1), device="cpu", progress=False)
    assert not same_weights(a, c)
    reloaded = dp_model(LENET)
    reloaded.load_state_dict(a.state_dict())  # the documented way to rebuild a saved DP model
    assert same_weights(reloaded, a)


def test_a_killed_dp_training_resumes_with_its_noise_where_it_stopped(toy: dict, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    small, recipe = toy["train"].subset(torch.arange(128)), dataclasses.replace(LENET, epochs=2)
    config = DPConfig(noise_multiplier=1.0)
    whole = train_dp(small, recipe, config, device="cpu", progress=False)
    checkpoint = tmp_path / "dp.pt"
    _killed_after(1, monkeypatch, lambda: train_dp(small, recipe, config, device="cpu", progress=False,
                                                   checkpoint=checkpoint))
    resumed = train_dp(small, recipe, config, device="cpu", progress=False, checkpoint=checkpoint)
    assert same_weights(whole, resumed)  # the noise of epoch 2 continued the saved stream, not a fresh one
    with pytest.raises(WorkbenchError, match="extra random streams"):  # a checkpoint without the noise's stream
        train_classifier(dp_model(recipe), small, recipe, device="cpu", progress=False, checkpoint=checkpoint)


def test_dp_config_validates() -> None:
    with pytest.raises(WorkbenchError, match="noise_multiplier must be a finite number >= 0"):
        DPConfig(noise_multiplier=-1)
    with pytest.raises(WorkbenchError, match="max_grad_norm must be a finite number > 0"):
        DPConfig(max_grad_norm=0)
    assert DPConfig().to_dict() == {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "max_groups": 32, "seed": 0}
