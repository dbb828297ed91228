"""Training the workbench's own tiny diffusion model for DiffPure, because no pretrained one can be downloaded here.

A DDPM ([DDPM]): a small diffusers `UNet2DModel` predicts the noise eps of x_t = sqrt(abar_t) x_0 +
sqrt(1 - abar_t) eps under diffusers' `DDPMScheduler` with the linear schedule of [DDPM] (N = 1000 steps,
beta 1e-4 -> 0.02, the public 32 px CIFAR-10 DDPM's), trained with the simple loss ||eps - eps_theta(x_t, t)||^2
([DDPM] Eq. 14) on clean CIFAR-10 training images (the training part of the workbench split; never holdout or
test images), flipped at random.

Deviation (named in notebook 11): DiffPure only ever runs the reverse process from t* = 0.1 (100 of the 1,000
steps; [DiffPure] Sec. 5.1) down to 0, so the tiny model is trained on t < `max_time` N only (0.2: the steps
DiffPure uses, with a margin for other t*). It cannot generate images from pure noise, and `DiffPure` refuses a t*
above its `max_time`. The paper's model is OpenAI's 256 px ImageNet-trained one ([BDMAE] App. C).

`python -m workbench diffusion` trains it in stages (each resuming after an interruption), writes the weights with
their recipe to `data/assets/diffusion/` (`--commit`), where `load_workbench_diffusion()` finds them, and records
the held-out denoising error at t*.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from workbench.core.artefacts import ArtefactStore, config_key
from workbench.core.data import load_splits
from workbench.core.diffusion import Diffusion
from workbench.core.mae_training import training_images
from workbench.core.pretraining import check_recipe, load_pretrained, run_resumable, warmup_cosine
from workbench.core.runtime import cache_root, child_seed, make_generator, resolve_device
from workbench.core.validation import check_fraction, check_positive_int, check_seed

#: The tiny UNet: three resolutions (32, 16, 8 px) of 32 / 64 / 64 channels, one ResNet block per level, self-
#: attention at 16 px and in the middle block (1.1 M parameters, 4.5 MB in float32).
TINY_UNET: tuple[tuple[str, Any], ...] = (
    ("sample_size", 32), ("in_channels", 3), ("out_channels", 3), ("layers_per_block", 1),
    ("block_out_channels", (32, 64, 64)), ("norm_num_groups", 8),
    ("down_block_types", ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")),
    ("up_block_types", ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")),
)
#: The noise schedule (diffusers `DDPMScheduler` settings): [DDPM]'s, as the public 32 px CIFAR-10 DDPM.
DDPM_SCHEDULE: tuple[tuple[str, Any], ...] = (
    ("num_train_timesteps", 1000), ("beta_start", 1e-4), ("beta_end", 0.02), ("beta_schedule", "linear"),
    ("clip_sample", True), ("prediction_type", "epsilon"), ("variance_type", "fixed_small"),
)


@dataclass(frozen=True)
class DiffusionTrainConfig:
    """Recipe of one pretraining stage of the tiny diffusion model (AdamW, linear warm-up then cosine decay).
    `init` continues from the model trained with another recipe (a later stage with a fresh schedule)."""

    unet: tuple[tuple[str, Any], ...] = TINY_UNET
    schedule: tuple[tuple[str, Any], ...] = DDPM_SCHEDULE
    datasets: tuple[str, ...] = ("cifar10",)
    max_time: float = 0.2
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 100
    flip: bool = True
    split_seed: int = 0
    seed: int = 0
    init: DiffusionTrainConfig | None = None

    def __post_init__(self) -> None:
        check_recipe(self)
        check_fraction(self.max_time, "max_time")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["unet"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.unet}
        data["schedule"] = dict(self.schedule)
        data["datasets"] = list(self.datasets)
        data["init"] = self.init.to_dict() if self.init is not None else None
        return data

    def stages(self) -> list[DiffusionTrainConfig]:
        """This recipe's stages, first to last."""
        return [*(self.init.stages() if self.init is not None else []), self]

    def new_diffusion(self) -> Diffusion:
        """The untrained model of this recipe, initialised from its seed."""
        from diffusers import DDPMScheduler, UNet2DModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            unet = UNet2DModel(**dict(self.unet))
        return Diffusion(unet, DDPMScheduler(**dict(self.schedule)), self.max_time)


#: The default tiny diffusion model: one stage of 1,500 steps of 32 images (about 1 s a step on 2 CPU cores; half a
#: pass over the 47,500 training images), what one session could afford. Its held-out noise-prediction error at t*
#: is in its manifest and printed by `python -m workbench diffusion`; a later stage (`init=DEFAULT_DIFFUSION`) can
#: continue it.
DEFAULT_DIFFUSION = DiffusionTrainConfig()


def train_diffusion(config: DiffusionTrainConfig, *, device: str = "auto", checkpoint_dir: Path | None = None,
                    progress: bool = True) -> tuple[Diffusion, dict[str, Any]]:
    """Train a DDPM with `config`, checkpointing every 100 steps so an interrupted run resumes.

    Returns:
        The trained model (eval mode) and a metrics dict (loss curve, seconds, image count).
    """
    dev = resolve_device(device)
    checkpoint_dir = checkpoint_dir or cache_root() / "diffusion-checkpoints" / config_key(config.to_dict())
    images = training_images(config.datasets, config.split_seed)
    diffusion = config.new_diffusion()
    if config.init is not None:  # a later stage starts from the previous stage's weights
        diffusion.unet.load_state_dict(load_workbench_diffusion(config.init).unet.state_dict())
    unet = diffusion.unet.to(dev)
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = make_generator(child_seed(config.seed, "data_order"))
    top = max(1, round(config.max_time * diffusion.steps))

    def draw() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(images), (config.batch_size,), generator=gen)
        flip = torch.rand(config.batch_size, generator=gen) < 0.5
        t = torch.randint(0, top, (config.batch_size,), generator=gen)
        noise = torch.randn(config.batch_size, *images.shape[1:], generator=gen)
        return idx, flip & config.flip, t, noise

    def batch_loss() -> torch.Tensor:
        idx, flip, t, noise = draw()
        x0 = images[idx].to(dev).float().div(127.5).sub(1)
        x0 = torch.where(flip.to(dev).view(-1, 1, 1, 1), x0.flip(-1), x0)
        noisy = diffusion.scheduler.add_noise(x0, noise.to(dev), t.to(dev))
        return F.mse_loss(unet(noisy, t.to(dev)).sample, noise.to(dev))

    losses, seconds = run_resumable(
        unet, opt, steps=config.steps, batch_loss=batch_loss, replay=draw,
        lr_at=lambda step: warmup_cosine(step, lr=config.lr, warmup_steps=config.warmup_steps, steps=config.steps),
        state_file=checkpoint_dir / "state.safetensors", recipe=config.to_dict(),
        desc="pretrain tiny diffusion model", progress=progress)
    metrics = {"train_seconds": seconds, "train_images": len(images), "loss_curve": losses[::10],
               "final_loss": sum(losses[-100:]) / max(1, len(losses[-100:])), "datasets": list(config.datasets)}
    return Diffusion(unet.eval(), diffusion.scheduler, config.max_time), metrics


@torch.no_grad()
def held_out_denoising_error(diffusion: Diffusion, dataset: str = "cifar10", *, t_star: float = 0.1,
                             images: int = 256, seed: int = 0, split_seed: int = 0) -> float:
    """Mean squared error of the predicted noise at step t* N on test images the model never saw ([DDPM]'s
    training loss, measured at DiffPure's noise level), with seeded images and noise."""
    check_fraction(t_star, "t_star")
    check_positive_int(images, "images")
    check_seed(split_seed, "split_seed")
    test = load_splits(dataset, seed=split_seed).test
    gen = make_generator(seed)
    x = test.subset(torch.randperm(len(test), generator=gen)[:images]).float_images()
    x0 = F.interpolate(x.expand(-1, diffusion.channels, -1, -1), size=diffusion.sample_size, mode="bilinear",
                       align_corners=False, antialias=True) * 2 - 1
    step = round(t_star * diffusion.steps) - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.full((len(x0),), step)
    dev = diffusion.device
    noisy = diffusion.scheduler.add_noise(x0, noise, t)
    predicted = torch.cat([diffusion.noise(b.to(dev), tb.to(dev)).cpu() for b, tb in zip(noisy.split(64), t.split(64),
                                                                                         strict=True)])
    return round(float(F.mse_loss(predicted, noise)), 6)


def load_workbench_diffusion(config: DiffusionTrainConfig | None = None, *, device: str = "auto") -> Diffusion:
    """The workbench's tiny diffusion model for `config` (default: `DEFAULT_DIFFUSION`), from the cache or the
    committed `data/assets/diffusion`.

    Raises:
        WorkbenchError: if it has not been trained; the message gives the command that trains it.
    """
    config = config or DEFAULT_DIFFUSION
    weights = load_pretrained("diffusion", config, name="tiny diffusion model",
                              command="`python -m workbench diffusion` (resumable)")
    diffusion = config.new_diffusion()
    diffusion.unet.load_state_dict(weights, strict=True)
    return Diffusion(diffusion.unet.to(resolve_device(device)).eval(), diffusion.scheduler, config.max_time)


def save_workbench_diffusion(diffusion: Diffusion, config: DiffusionTrainConfig, metrics: dict[str, Any],
                             store: ArtefactStore) -> Path:
    """Store the trained UNet under its recipe's key."""
    state = {k: v.detach().cpu() for k, v in diffusion.unet.state_dict().items()}
    return store.save("diffusion", config_key(config.to_dict()), state, config.to_dict(), metrics).path
