"""Post-training baselines of T&R's comparison (fine-tuning, NAD, ANP) on a toy backdoored model trained here.

The toy: four colour classes of noisy 32 px images, a white 5x5 patch relabelled to class 0 on 10 % of the training
images, a narrow `resnet_small` (ASR 1, CA 1 in a few seconds). Its clean holdout and test sets are drawn
independently. On it, plain fine-tuning keeps the backdoor (backdoors are hard to forget), while NAD and ANP remove it.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn as nn

from workbench.core.data import ImageDataset
from workbench.core.metrics import attack_success_rate, clean_accuracy
from workbench.core.models import StagedClassifier
from workbench.core.training import TrainConfig, new_model, train_classifier
from workbench.core.validation import WorkbenchError
from workbench.defenses.baselines.anp import (
    ANPConfig,
    NeuronPerturbation,
    anp,
    anp_masks,
    anp_with_masks,
    neuron_layers,
    prune_neurons,
)
from workbench.defenses.baselines.finetune import (
    FineTuneConfig,
    cutout,
    fine_tune,
    registered_model_name,
    train_in_phases,
)
from workbench.defenses.baselines.nad import (
    NADConfig,
    attention_loss,
    attention_map,
    check_stages,
    nad,
    nad_loss,
    stage_outputs,
)

NAMES = tuple(str(c) for c in range(10))
COLOURS = torch.tensor([[0.9, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.2, 0.9], [0.8, 0.8, 0.2]])
TOY = TrainConfig(dataset="cifar10", model="resnet_small", model_options={"widths": [16, 16, 32, 32]}, epochs=8,
                  batch_size=32, lr=0.05, label_smoothing=0.0, augment="none", seed=0)
STAGES = ("stage1", "stage2", "stage3")  # resnet_small's residual stages (spatial outputs 16, 8 and 4 px)


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    brightness = (torch.rand(n, 1, 1, 1, generator=gen) + 0.5).clamp(max=1)
    x = 0.5 * torch.rand(n, 3, 32, 32, generator=gen) + 0.5 * COLOURS[labels].view(n, 3, 1, 1) * brightness
    return x.clamp(0, 1), labels


def _stamp(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, :, -6:-1, -6:-1] = 1.0
    return x


def _dataset(x: torch.Tensor, y: torch.Tensor) -> ImageDataset:
    return ImageDataset("cifar10", (x * 255).round().to(torch.uint8), y, NAMES)


@dataclasses.dataclass
class Toy:
    model: StagedClassifier
    holdout: ImageDataset
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_triggered: torch.Tensor  # non-target test images with the trigger

    def ca(self, model: nn.Module) -> float:
        return clean_accuracy(model, self.x_test, self.y_test)

    def asr(self, model: nn.Module) -> float:
        return attack_success_rate(model, self.x_triggered, 0)


def make_toy(seed: int = 0) -> Toy:
    x, y = _images(400, 3 * seed)
    poisoned = torch.arange(400)[y != 0][:40]
    x[poisoned], y[poisoned] = _stamp(x[poisoned]), 0
    model = new_model(TOY)
    train_classifier(model, _dataset(x, y), TOY, device="cpu", progress=False)
    model.eval()
    holdout = _dataset(*_images(200, 3 * seed + 1))
    x_test, y_test = _images(200, 3 * seed + 2)
    x_test = _dataset(x_test, y_test).float_images()  # the same uint8 rounding as the holdout
    return Toy(model, holdout, x_test, y_test, _stamp(x_test[y_test != 0]))


@pytest.fixture(scope="module")
def toy() -> Toy:
    result = make_toy()
    assert result.ca(result.model) >= 0.95 and result.asr(result.model) >= 0.95  # a working backdoor to remove
    return result


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(a: nn.Module | dict[str, torch.Tensor], b: nn.Module | dict[str, torch.Tensor]) -> bool:
    sa = a if isinstance(a, dict) else a.state_dict()
    sb = b if isinstance(b, dict) else b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --- fine-tuning ------------------------------------------------------------------------------------------------------

def test_fine_tune_config_schedule_serialisation_and_errors() -> None:
    (e1, lr1), (e2, lr2) = FineTuneConfig().phases()
    assert (e1, e2) == (2, 8) and (lr1, lr2) == pytest.approx((0.1, 0.01))
    assert FineTuneConfig(epochs=2).phases() == [(2, 0.1)]  # a milestone at or past the end never applies
    phases = FineTuneConfig(epochs=6, lr_milestones=(1, 3), lr_decay=0.5).phases()
    assert [e for e, _ in phases] == [1, 2, 3] and [lr for _, lr in phases] == pytest.approx([0.1, 0.05, 0.025])
    assert FineTuneConfig(lr_milestones=()).phases() == [(10, 0.1)]
    config = FineTuneConfig(lr_milestones=[2, 4])  # a JSON round trip gives lists back
    assert config.lr_milestones == (2, 4) and FineTuneConfig.from_dict(config.to_dict()) == config
    with pytest.raises(WorkbenchError, match="lr_milestones must be strictly increasing"):
        FineTuneConfig(lr_milestones=(4, 2))
    with pytest.raises(WorkbenchError, match=r"FineTuneConfig.epochs must be a positive integer"):
        FineTuneConfig(epochs=0)
    with pytest.raises(WorkbenchError, match="unknown optimizer 'lion'"):
        FineTuneConfig(optimizer="lion")
    with pytest.raises(WorkbenchError, match=r"cutout \(pixels\) must be an integer >= 0"):
        FineTuneConfig(cutout=-1)


def test_cutout_zeroes_one_clipped_square_per_image() -> None:
    x = torch.rand(64, 3, 8, 8) + 1.0  # no zeros of its own
    out = cutout(x, 3, torch.Generator().manual_seed(0))
    holes = out == 0
    assert torch.equal(holes.all(dim=1), holes.any(dim=1))  # all channels of a pixel, or none
    holes = holes[:, 0]
    assert torch.equal(out[~holes.unsqueeze(1).expand_as(x)], x[~holes.unsqueeze(1).expand_as(x)])
    for hole in holes:
        rows, cols = hole.any(dim=1).nonzero().flatten(), hole.any(dim=0).nonzero().flatten()
        assert 1 <= len(rows) <= 3 and 1 <= len(cols) <= 3
        assert int(hole.sum()) == len(rows) * len(cols)  # one axis-aligned rectangle
        assert rows.diff().eq(1).all() and cols.diff().eq(1).all()
    sizes = holes.sum(dim=(1, 2))
    assert int(sizes.max()) == 9 and int(sizes.eq(9).sum()) >= 16  # interior centres give full 3 x 3 holes
    assert torch.equal(cutout(x, 0, torch.Generator()), x)


def test_train_in_phases_steps_the_learning_rate(toy: Toy) -> None:
    model = copy.deepcopy(toy.model)
    config = FineTuneConfig(epochs=3, batch_size=64, lr=0.02, lr_milestones=(2,), lr_decay=0.1)
    history = train_in_phases(model, toy.holdout, config, device="cpu", progress=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert [h["lr"] for h in history] == pytest.approx([0.02, 0.02, 0.002])
    assert registered_model_name(toy.model) == "resnet_small"
    assert registered_model_name(new_model(TrainConfig(dataset="cifar10", model="wrn16_1"))) == "wrn16_1"


def test_fine_tune_trains_every_layer_on_the_holdout_and_repeats(toy: Toy) -> None:
    before = _state(toy.model)
    config = FineTuneConfig(epochs=4, batch_size=32)
    tuned = fine_tune(toy.model, toy.holdout, config, device="cpu", progress=False)
    assert isinstance(tuned, StagedClassifier) and tuned is not toy.model and not tuned.training
    assert _same_weights(toy.model, before) and not toy.model.training  # the input is untouched
    assert toy.ca(tuned) >= 0.9 and all(p.grad is None for p in tuned.parameters())
    changed = {k for k, v in tuned.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])}
    assert changed == {k for k, v in before.items() if v.is_floating_point() and not k.startswith("normalize")}
    again = fine_tune(toy.model, toy.holdout, config, device="cpu", progress=False)
    assert _same_weights(tuned, again)
    other = fine_tune(toy.model, toy.holdout, dataclasses.replace(config, seed=1), device="cpu", progress=False)
    assert not _same_weights(tuned, other)
    new_model(TOY).load_state_dict(tuned.state_dict(), strict=True)
    # what it learns comes from the holdout: fine-tuned on shifted labels, the model predicts the shifted labels
    shifted = toy.holdout.replace(labels=(toy.holdout.labels + 1) % 4)
    relabelled = fine_tune(toy.model, shifted, config, device="cpu", progress=False)
    assert clean_accuracy(relabelled, toy.x_test, (toy.y_test + 1) % 4) >= 0.9


def test_inputs_are_checked(toy: Toy) -> None:
    small = ImageDataset("mnist", torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, dtype=torch.long),
                         NAMES)
    with pytest.raises(WorkbenchError, match=r"holdout images are \(1, 28, 28\) but the model takes \(3, 32, 32\)"):
        fine_tune(toy.model, small, progress=False)
    with pytest.raises(WorkbenchError, match="model must be a workbench classifier"):
        nad(nn.Linear(3, 3), toy.holdout, progress=False)  # type: ignore[arg-type]
    with pytest.raises(WorkbenchError, match="holdout must be an ImageDataset"):
        anp(toy.model, toy.x_test, progress=False)  # type: ignore[arg-type]


# --- NAD --------------------------------------------------------------------------------------------------------------

def test_attention_map_and_loss_on_known_answers() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 6, 5, 5, generator=gen)
    maps = attention_map(a)
    assert maps.shape == (4, 25)
    assert torch.allclose(maps.norm(dim=1), torch.ones(4))
    assert torch.allclose(attention_map(3.7 * a), maps, atol=1e-6)  # positive scaling does not change attention
    assert torch.allclose(attention_map(-a), maps)  # |a|^p
    # sum or mean over channels: the same map once normalised
    assert torch.allclose(maps, torch.nn.functional.normalize(a.pow(2).mean(dim=1).flatten(1), dim=1), atol=1e-6)
    for distance in ("mse", "l2"):
        assert attention_loss(a, a, distance=distance).item() == 0
        assert attention_loss(a, 2.5 * a, distance=distance).item() == pytest.approx(0, abs=1e-6)
        assert attention_loss(a, torch.randn(4, 3, 5, 5, generator=gen), distance=distance).item() > 0
    one, other = torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 2, 2)
    one[0, :, 0, 0], other[0, :, 1, 1] = 1.0, 5.0  # maps e_0 and e_3: difference of norm sqrt(2)
    assert attention_loss(one, other, distance="l2").item() == pytest.approx(2**0.5)
    assert attention_loss(one, other, distance="mse").item() == pytest.approx(2 / 4)
    assert attention_loss(one, other, p=1.0).item() == pytest.approx(2 / 4)
    with pytest.raises(WorkbenchError, match="must share N, H and W"):
        attention_loss(a, torch.randn(4, 6, 4, 4))
    with pytest.raises(WorkbenchError, match=r"activation must be a float tensor \(rank 4\)"):
        attention_map(torch.randn(4, 6))


def test_nad_stages_and_config_are_checked(toy: Toy) -> None:
    wrn = new_model(TrainConfig(dataset="cifar10", model="wrn16_1")).eval()
    check_stages(wrn, NADConfig().stages)  # the default: WRN-16-1's three residual groups
    with torch.no_grad():
        _, outputs = stage_outputs(wrn, torch.rand(2, 3, 32, 32), NADConfig().stages)
    assert [tuple(o.shape[1:]) for o in outputs] == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    with pytest.raises(WorkbenchError, match=r"no module named 'block1_1'.*stem, stage1, stage2, stage3, pool, fc"):
        nad(toy.model, toy.holdout, progress=False)  # WRN names on a resnet_small: fails before any training
    with pytest.raises(WorkbenchError, match=r"stage 'pool' outputs shape.*choose among stem, stage1, stage2, stage3"):
        nad(toy.model, toy.holdout, NADConfig(stages=("stage3", "pool"), betas=(1, 1)), progress=False)
    with pytest.raises(WorkbenchError, match="one beta per stage"):
        NADConfig(stages=STAGES, betas=(1.0,))
    with pytest.raises(WorkbenchError, match=r"betas .each. must be a finite number >= 0"):
        NADConfig(betas=(1.0, -1.0, 1.0))
    with pytest.raises(WorkbenchError, match="distance must be 'mse'"):
        NADConfig(distance="cosine")
    with pytest.raises(WorkbenchError, match=r"FineTuneConfig.batch_size"):
        NADConfig(batch_size=0)
    config = NADConfig(stages=list(STAGES), betas=[1, 2, 3])
    assert NADConfig.from_dict(config.to_dict()) == config and config.stages == STAGES


def test_nad_loss_is_cross_entropy_plus_weighted_attention_distances(toy: Toy) -> None:
    teacher = fine_tune(toy.model, toy.holdout, FineTuneConfig(epochs=1, batch_size=64), device="cpu", progress=False)
    x, y = toy.x_test[:8], toy.y_test[:8]
    config = NADConfig(stages=STAGES, betas=(0.0, 10.0, 1000.0), distance="l2", p=1.5)
    student = copy.deepcopy(toy.model)
    with torch.no_grad():
        expected = nn.functional.cross_entropy(student(x), y)
        for beta, a_s, a_t in zip(config.betas, stage_outputs(student, x, STAGES)[1], stage_outputs(teacher, x,
                                                                                                    STAGES)[1],
                                  strict=True):
            expected += beta * (attention_map(a_s, 1.5) - attention_map(a_t, 1.5)).norm(dim=1).mean()
    loss = nad_loss(student, teacher, x, y, config)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is a fixed target
    assert student.stages.stage1.down[0].weight.grad is not None
    same = nad_loss(student, copy.deepcopy(student), x, y, config)  # a teacher equal to the student: CE alone
    assert same.item() == pytest.approx(nn.functional.cross_entropy(student(x), y).item(), rel=1e-5)


def test_nad_removes_the_backdoor_that_fine_tuning_keeps(toy: Toy) -> None:
    before = _state(toy.model)
    config = NADConfig(teacher_epochs=3, epochs=3, batch_size=32, stages=STAGES, betas=(50, 100, 100))
    student = nad(toy.model, toy.holdout, config, device="cpu", progress=False)
    plain = nad(toy.model, toy.holdout, dataclasses.replace(config, betas=(0, 0, 0)), device="cpu", progress=False)
    # without distillation NAD is fine-tuning with the student's recipe (the teacher only enters through the betas)
    assert _same_weights(plain, fine_tune(toy.model, toy.holdout, config.student_recipe(), device="cpu",
                                          progress=False))
    assert toy.asr(student) < 0.5 and toy.asr(student) <= toy.asr(plain)
    assert toy.ca(student) >= 0.9 and not student.training
    assert _same_weights(toy.model, before)
    quick = dataclasses.replace(config, teacher_epochs=1, epochs=1)
    assert _same_weights(nad(toy.model, toy.holdout, quick, device="cpu", progress=False),
                         nad(toy.model, toy.holdout, quick, device="cpu", progress=False))


# --- ANP --------------------------------------------------------------------------------------------------------------

def test_neuron_perturbation_hooks_implement_the_masked_perturbed_batchnorm(toy: Toy) -> None:
    model = copy.deepcopy(toy.model).eval()
    x = toy.x_test[:16]
    with torch.no_grad():
        reference = model(x)
        with NeuronPerturbation(model) as neurons:
            assert torch.allclose(model(x), reference, atol=1e-5)  # m = 1, no perturbation: the model itself
            layer_name = "stages.stage2.down.2"
            assert set(neurons.masks) == set(neuron_layers(model)) and layer_name in neurons.masks
            neurons.masks[layer_name][[1, 5]] = 0.0
            masked = model(x)
            neurons.masks[layer_name].fill_(1.0)
            for name in neurons.masks:  # delta, xi: every weight scaled by 1.3, every bias by 0.8
                neurons.delta[name].fill_(0.3)
                neurons.xi[name].fill_(-0.2)
            neurons.perturbed = True
            perturbed = model(x)
        assert all(not layer._forward_hooks for layer in neuron_layers(model).values())  # hooks removed
        assert torch.allclose(model(x), reference)
        # masking = zeroing the BatchNorm weight only (the bias stays), as the public code's NoisyBatchNorm2d
        masks = {name: torch.ones(layer.num_features) for name, layer in neuron_layers(model).items()}
        masks[layer_name][[1, 5]] = 0.0
        assert torch.allclose(masked, prune_neurons(model, masks, 0.5, zero_bias=False)(x), atol=1e-5)
        assert not torch.allclose(masked, prune_neurons(model, masks, 0.5)(x), atol=1e-3)
        scaled = copy.deepcopy(model)
        for layer in neuron_layers(scaled).values():
            layer.weight.mul_(1.3)
            layer.bias.mul_(0.8)
        assert torch.allclose(perturbed, scaled(x), atol=1e-4)


def test_anp_prunes_the_backdoor_neurons_only(toy: Toy) -> None:
    before = _state(toy.model)
    # 150 mask updates: at 60 the outcome still depended on the thread count (float summation order)
    config = ANPConfig(iterations=150, batch_size=32)
    result = anp_with_masks(toy.model, toy.holdout, config, device="cpu", progress=False)
    layers = neuron_layers(toy.model)
    assert list(result.masks) == list(layers)
    assert all(result.masks[n].shape == (layer.num_features,) for n, layer in layers.items())
    values = torch.cat(list(result.masks.values()))
    assert values.min() >= 0 and values.max() <= 1
    assert 0 < result.pruned_count < 0.25 * result.neuron_count
    assert result.to_dict()["pruned"] == result.pruned_count == int((values < config.threshold).sum())
    # exactly the channels below the threshold have weight and bias zeroed; all else is the input's
    pruned_state = result.model.state_dict()
    for key, value in before.items():
        layer_name, _, kind = key.rpartition(".")
        if layer_name in result.masks and kind in ("weight", "bias"):
            low = result.masks[layer_name] < config.threshold
            assert torch.equal(pruned_state[key][low], torch.zeros(int(low.sum())))
            assert torch.equal(pruned_state[key][~low], value[~low])
        else:
            assert torch.equal(pruned_state[key], value), key  # running statistics and convolutions untouched
    new_model(TOY).load_state_dict(pruned_state, strict=True)
    assert isinstance(result.model, StagedClassifier) and not result.model.training
    assert _same_weights(toy.model, before)
    assert all(not layer._forward_hooks for layer in layers.values())
    # the backdoor goes, the clean task stays; without perturbations (eps = 0) nothing is pruned and the backdoor stays
    assert toy.asr(result.model) <= 0.1 and toy.ca(result.model) >= 0.9
    control = anp_with_masks(toy.model, toy.holdout, dataclasses.replace(config, eps=0.0, iterations=30),
                             device="cpu", progress=False)
    assert control.pruned_count == 0 and toy.asr(control.model) >= 0.95


def test_anp_repeats_and_validates(toy: Toy) -> None:
    config = ANPConfig(iterations=8, batch_size=16)
    first = anp_masks(toy.model, toy.holdout, config, device="cpu", progress=False)
    second = anp_masks(toy.model, toy.holdout, config, device="cpu", progress=False)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    other = anp_masks(toy.model, toy.holdout, dataclasses.replace(config, seed=1), device="cpu", progress=False)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    assert _same_weights(anp(toy.model, toy.holdout, config, device="cpu", progress=False),
                         prune_neurons(toy.model, first, config.threshold))
    lenet = new_model(TrainConfig(dataset="cifar10", model="lenet5"))
    with pytest.raises(WorkbenchError, match=r"has none.*resnet_small, resnet18 or wrn16_1"):
        anp_masks(lenet, toy.holdout, config, device="cpu", progress=False)
    with pytest.raises(WorkbenchError, match=r"alpha must be in \[0, 1\]"):
        ANPConfig(alpha=1.5)
    with pytest.raises(WorkbenchError, match="eps must be a finite number >= 0"):
        ANPConfig(eps=-0.1)
    with pytest.raises(WorkbenchError, match="iterations must be a positive integer"):
        ANPConfig(iterations=0)
    with pytest.raises(WorkbenchError, match="unknown augmentation"):
        ANPConfig(augment="cutmix")
    with pytest.raises(WorkbenchError, match="not a BatchNorm2d layer"):
        prune_neurons(toy.model, {"stages.fc": torch.zeros(10)})
    with pytest.raises(WorkbenchError, match="has shape"):
        prune_neurons(toy.model, {"stages.stem.1": torch.zeros(3)})
    assert ANPConfig.from_dict(ANPConfig(alpha=0.1).to_dict()) == ANPConfig(alpha=0.1)
