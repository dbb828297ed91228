"""A DDPM as the workbench holds it: a diffusers `UNet2DModel` predicting the noise and its `DDPMScheduler`, from
the workbench's own tiny model (`workbench.core.diffusion_training`) or a diffusers-format folder on disk
(`load_diffusion`; safetensors only, nothing fetched from a hub). DiffPure (`workbench.defenses.baselines.diffpure`)
purifies with it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from workbench.core.validation import WorkbenchError, check_fraction

#: files a diffusers folder may hold that would need unpickling to load: refused, never opened
PICKLED = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass(frozen=True)
class Diffusion:
    """A DDPM: a diffusers `UNet2DModel` that predicts the noise eps, and its `DDPMScheduler` (noise schedule)."""

    unet: torch.nn.Module
    scheduler: object
    max_time: float = 1.0  # the model was trained on t < max_time N only (the workbench's tiny one: 0.2)

    def __post_init__(self) -> None:
        check_fraction(self.max_time, "max_time")

    @property
    def steps(self) -> int:
        """N, the number of diffusion steps the model was trained with."""
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def sample_size(self) -> int:
        return int(self.unet.config.sample_size)

    @property
    def channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def noise(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        """The predicted noise eps(x, t) for a batch x in [-1, 1] at (possibly continuous) timestep t."""
        return self.unet(x, t).sample

    def vp_betas(self) -> tuple[float, float]:
        """(beta_min, beta_max) of the VP-SDE whose discretisation is this model's linear schedule."""
        config = self.scheduler.config
        if config.beta_schedule != "linear":
            raise WorkbenchError(f"the SDE sampler needs a linear beta schedule; this model's is "
                                 f"{config.beta_schedule!r}: use sampler='ddpm'")
        return config.beta_start * self.steps, config.beta_end * self.steps



def load_diffusion(folder: str | Path, *, device: str | torch.device = "cpu") -> Diffusion:
    """A diffusers-format DDPM from a local folder (e.g. a saved `DDPMPipeline`: `unet/` and `scheduler/`, or the
    UNet's `config.json` + `diffusion_pytorch_model.safetensors` with a `scheduler_config.json` beside it).

    Only safetensors weights are read: a folder whose weights are pickled (.bin, .pt, .ckpt, ...) is refused without
    being opened, and nothing is fetched from a hub.
    """
    from diffusers import DDPMScheduler, UNet2DModel

    root = Path(folder)
    if not root.is_dir():
        raise WorkbenchError(f"{folder}: not a folder; give a diffusers-format DDPM folder (unet/, scheduler/)")
    unet_dir = root / "unet" if (root / "unet").is_dir() else root
    scheduler_dir = root / "scheduler" if (root / "scheduler").is_dir() else root
    pickled = sorted(p.name for p in unet_dir.iterdir() if p.suffix in PICKLED)
    if not any(unet_dir.glob("*.safetensors")):
        found = f" (found {', '.join(pickled)}: pickled weights are never loaded here)" if pickled else ""
        raise WorkbenchError(f"{unet_dir}: no .safetensors weights{found}; convert them to safetensors first")
    for name in ("config.json", "scheduler_config.json"):
        path = (unet_dir if name == "config.json" else scheduler_dir) / name
        if not path.is_file():
            raise WorkbenchError(f"{path}: missing; a diffusers DDPM folder needs the UNet's config.json and the "
                                 "scheduler's scheduler_config.json")
        json.loads(path.read_text())  # a clear error for a broken file before diffusers sees it
    unet = UNet2DModel.from_pretrained(unet_dir, use_safetensors=True, local_files_only=True)
    scheduler = DDPMScheduler.from_pretrained(scheduler_dir, local_files_only=True)
    if scheduler.config.prediction_type != "epsilon":
        raise WorkbenchError(f"the scheduler predicts {scheduler.config.prediction_type!r}; DiffPure here needs an "
                             "eps-prediction DDPM")
    return Diffusion(unet.to(device).eval(), scheduler)
