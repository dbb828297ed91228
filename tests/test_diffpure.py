"""DiffPure (BDMAE's diffusion baseline) on diffusers' UNet and DDPM schedule: known answers with an oracle noise
predictor, per-image seeding, resizing, the safe loader of diffusers folders, and the tiny model's training."""

from __future__ import annotations

import pickle
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from diffusers import DDPMScheduler, UNet2DModel

from tests.conftest import needs_real_data
from workbench.core.artefacts import ArtefactStore
from workbench.core.diffusion import Diffusion, load_diffusion
from workbench.core.diffusion_training import (
    DDPM_SCHEDULE,
    DiffusionTrainConfig,
    held_out_denoising_error,
    load_workbench_diffusion,
    save_workbench_diffusion,
    train_diffusion,
)
from workbench.core.validation import WorkbenchError
from workbench.defenses.baselines.diffpure import DiffPure, vp_alpha_bar

MICRO_UNET = (("sample_size", 16), ("in_channels", 3), ("out_channels", 3), ("layers_per_block", 1),
              ("block_out_channels", (8, 16)), ("norm_num_groups", 4),
              ("down_block_types", ("DownBlock2D", "DownBlock2D")), ("up_block_types", ("UpBlock2D", "UpBlock2D")))


def scheduler() -> DDPMScheduler:
    return DDPMScheduler(**dict(DDPM_SCHEDULE))


def micro_diffusion(max_time: float = 1.0) -> Diffusion:
    torch.manual_seed(0)
    return Diffusion(UNet2DModel(**dict(MICRO_UNET)).eval(), scheduler(), max_time)


class OracleNoise(nn.Module):
    """The exact noise predictor of a one-point data distribution x*: eps(x_t) = (x_t - sqrt(abar) x*) /
    sqrt(1 - abar), abar from the discrete schedule (DDPM) or its continuous limit (the VP-SDE's time t (N - 1))."""

    def __init__(self, point: torch.Tensor, schedule: DDPMScheduler, continuous: bool) -> None:
        super().__init__()
        self.point, self.schedule, self.continuous = point, schedule, continuous
        self.config = SimpleNamespace(sample_size=point.shape[-1], in_channels=point.shape[0])
        self.anchor = nn.Parameter(torch.zeros(1))  # Diffusion.device reads a parameter's device

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> SimpleNamespace:
        n = self.schedule.config.num_train_timesteps
        if self.continuous:
            abar = vp_alpha_bar(t / (n - 1), self.schedule.config.beta_start * n, self.schedule.config.beta_end * n)
        else:
            abar = self.schedule.alphas_cumprod[t.long()]
        abar = abar.float().view(-1, 1, 1, 1)
        return SimpleNamespace(sample=(x - abar.sqrt() * self.point) / (1 - abar).sqrt())


@pytest.mark.parametrize(("sampler", "tolerance"), [("ddpm", 1e-4), ("sde", 0.02)])
def test_an_exact_denoiser_of_one_image_purifies_anything_into_that_image(sampler: str, tolerance: float) -> None:
    """With the exact score of a point mass, DDPM's last step (abar_prev = 1, no noise) lands exactly on the point;
    Euler-Maruyama contracts onto it and leaves only its last step's noise, sqrt(beta(dt) dt) ~ 0.01."""
    point = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    diffusion = Diffusion(OracleNoise(point, scheduler(), continuous=sampler == "sde"), scheduler())
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    purified = DiffPure(diffusion, sampler=sampler).purify(x, seed=3)
    assert (purified - (point + 1) / 2).abs().mean() < tolerance


def test_each_image_draws_its_own_noise_and_sizes_and_channels_round_trip() -> None:
    diffusion = micro_diffusion()
    grey = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))  # MNIST-like, the model is 16 px RGB
    for sampler in ("ddpm", "sde"):
        settings = {"sampler": sampler, "t_star": 0.01, "sde_steps": 5}  # 10 DDPM steps: the plumbing, quickly
        whole = DiffPure(diffusion, **settings, batch_size=5).purify(grey, seed=7)
        split = DiffPure(diffusion, **settings, batch_size=2).purify(grey, seed=7)
        assert whole.shape == grey.shape and float(whole.min()) >= 0 and float(whole.max()) <= 1
        assert torch.allclose(whole, split, atol=1e-5)  # batching does not change any image's draws
        calls = torch.cat([DiffPure(diffusion, **settings).purify(grey[:2], seed=7),
                           DiffPure(diffusion, **settings).purify(grey[2:], seed=7, first_index=2)])
        assert torch.allclose(whole, calls, atol=1e-5)  # nor does splitting the set into calls, given first_index
        assert not torch.allclose(whole, DiffPure(diffusion, **settings).purify(grey, seed=8))


def test_settings_are_checked() -> None:
    diffusion = micro_diffusion(max_time=0.2)
    with pytest.raises(WorkbenchError, match="unknown DiffPure sampler 'ode'"):
        DiffPure(diffusion, sampler="ode")
    with pytest.raises(WorkbenchError, match=r"t_star must be in \(0, 1\]"):
        DiffPure(diffusion, t_star=1.5)
    with pytest.raises(WorkbenchError, match=r"exceeds the 0\.2 the diffusion model was trained up to"):
        DiffPure(diffusion, t_star=0.3)
    with pytest.raises(WorkbenchError, match="less than one of the model's 1000 steps"):
        DiffPure(diffusion, t_star=1e-4)


class Payload:
    """Unpickling this writes a file: the proof that a loader executed it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "executed"))


def test_diffusers_folders_load_from_safetensors_only(tmp_path: Path) -> None:
    model = micro_diffusion()
    folder = tmp_path / "ddpm"
    model.unet.save_pretrained(folder / "unet", safe_serialization=True)
    model.scheduler.save_pretrained(folder / "scheduler")
    loaded = load_diffusion(folder)
    for (name, a), (_, b) in zip(model.unet.state_dict().items(), loaded.unet.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert loaded.steps == 1000 and loaded.sample_size == 16 and loaded.vp_betas() == pytest.approx((0.1, 20.0))

    marker = tmp_path / "pwned"
    pickled = tmp_path / "pickled"
    model.unet.save_pretrained(pickled / "unet", safe_serialization=True)
    model.scheduler.save_pretrained(pickled / "scheduler")
    for weights in (pickled / "unet").glob("*.safetensors"):
        weights.unlink()
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(WorkbenchError, match="pickled weights are never loaded"):
        load_diffusion(pickled)
    assert not marker.exists()
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(WorkbenchError, match=r"scheduler_config\.json: missing"):
        load_diffusion(folder)


def test_the_tiny_model_trains_stores_and_loads(tiny_mirror: Path, tmp_path: Path) -> None:
    config = DiffusionTrainConfig(unet=MICRO_UNET, steps=4, batch_size=4, warmup_steps=2)
    diffusion, metrics = train_diffusion(config, checkpoint_dir=tmp_path / "run", progress=False)
    assert metrics["train_images"] == 190 and len(metrics["loss_curve"]) == 1 and metrics["final_loss"] > 0
    save_workbench_diffusion(diffusion, config, metrics, ArtefactStore())  # this test's isolated cache
    loaded = load_workbench_diffusion(config, device="cpu")
    for (name, a), (_, b) in zip(diffusion.unet.state_dict().items(), loaded.unet.state_dict().items(), strict=True):
        assert torch.equal(a.cpu(), b), name
    assert loaded.max_time == 0.2
    assert 0 < held_out_denoising_error(loaded, images=8) < 10
    with pytest.raises(WorkbenchError, match="python -m workbench diffusion"):
        load_workbench_diffusion(DiffusionTrainConfig(unet=MICRO_UNET, steps=5))


@needs_real_data
def test_the_committed_model_reproduces_its_recorded_held_out_error() -> None:
    from workbench.core.artefacts import config_key
    from workbench.core.diffusion_training import DEFAULT_DIFFUSION

    recorded = ArtefactStore().load("diffusion", config_key(DEFAULT_DIFFUSION.to_dict()), DEFAULT_DIFFUSION.to_dict())
    assets = Path(__file__).resolve().parent.parent / "data" / "assets"
    assert recorded is not None and recorded.path.is_relative_to(assets)  # the committed copy, not a cache
    error = held_out_denoising_error(load_workbench_diffusion(device="cpu"), DEFAULT_DIFFUSION.datasets[0])
    assert error == pytest.approx(recorded.metrics["held_out_noise_mse_at_t_star"], abs=1e-5)


@pytest.mark.parametrize(("channels", "size", "classes"), [(3, 32, 43), (1, 28, 10)])
def test_the_registered_purifier_classifies_what_diffpure_returns(channels: int, size: int, classes: int) -> None:
    import workbench
    from workbench.defenses import create

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))
    model = workbench.wrap(net, num_classes=classes, input_size=size, in_channels=channels)
    x = torch.rand(3, channels, size, size, generator=torch.Generator().manual_seed(0))
    diffusion = micro_diffusion()
    settings = {"t_star": 0.01, "sampler": "sde", "sde_steps": 3}
    result = create("diffpure", diffusion=diffusion, **settings).purify(model, x, seed=5)
    expected = DiffPure(diffusion, **settings).purify(x, seed=5)
    assert torch.equal(result.images, expected) and result.queries == 3
    assert torch.equal(result.labels, model(expected).argmax(1))
    assert result.details == settings
    with pytest.raises(WorkbenchError, match="unknown DiffPure setting"):
        create("diffpure", steps=10)
