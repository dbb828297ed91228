"""DiffPure ([DiffPure], "Diffusion models for adversarial purification"), BDMAE's diffusion-based
baseline ([BDMAE] Sec. 5.1 "Comparison with diffusion model based DiffPure", Table 1; App. C and F.7).

Each test image x in [0, 1] is scaled to [-1, 1], resized to the diffusion model's resolution, diffused to a small
time t* with the forward process and brought back to t = 0 by the reverse process; the result is resized back and
classified (one label query per image: DiffPure is black-box). Two reverse processes, as BDMAE compares (DiffPure
Sec. 3):

- "ddpm": ancestral DDPM sampling ([DDPM] Alg. 2) over the discrete steps t* N - 1, ..., 0 of the model's
  own `DDPMScheduler` (N = its training steps): forward x_k = sqrt(abar_k) x_0 + sqrt(1 - abar_k) z, then
  `DDPMScheduler.step` down to 0.
- "sde": the reverse-time VP-SDE ([ScoreSDE] Eq. 6; [DiffPure] Eq. 4) of the same noise schedule in its
  continuous limit, beta(t) = beta_min + t (beta_max - beta_min) with beta_min = N beta_1 and beta_max = N beta_N,
  integrated from t* to 0 by Euler-Maruyama with `sde_steps` equal steps (DiffPure: torchsde's Euler with
  dt = 1e-3, i.e. 100 steps for t* = 0.1). The score is -eps(x, t) / sqrt(1 - abar(t)), the eps-model queried at
  the continuous timestep t (N - 1) (score_sde's convention for DDPM-trained models).

t* = 0.1: DiffPure's CIFAR-10 setting ([DiffPure] Sec. 5.1); BDMAE does not state the t* it used.

Deviation ([BDMAE] App. C): the paper uses OpenAI's public 256 x 256 unconditional model and up-samples every test
image to 256 px; here the diffusion model is the workbench's own tiny 32 px one (no pretrained model can be
downloaded here), or any diffusers-format DDPM folder on disk (`load_diffusion`), so images are resized to that
model's `sample_size` instead. Grey images are repeated to the model's channels and averaged back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workbench.core.diffusion import Diffusion
from workbench.core.runtime import image_generators
from workbench.core.validation import (
    WorkbenchError,
    check_fraction,
    check_images,
    check_name,
    check_non_negative,
    check_positive,
    check_positive_int,
)

SAMPLERS = ("ddpm", "sde")


def _diffuse_ddpm(diffusion: Diffusion, x0: torch.Tensor, step: int, generators: list[torch.Generator]
                 ) -> torch.Tensor:
    """x_step = sqrt(abar_step) x0 + sqrt(1 - abar_step) z ([DDPM] Eq. 4), x0 in [-1, 1], one generator per image."""
    from diffusers.utils.torch_utils import randn_tensor

    z = randn_tensor(x0.shape, generator=generators, device=x0.device, dtype=x0.dtype)
    return diffusion.scheduler.add_noise(x0, z, torch.full((len(x0),), step, dtype=torch.long))


@torch.no_grad()
def _reverse_ddpm(diffusion: Diffusion, x: torch.Tensor, step: int, generators: list[torch.Generator]
                 ) -> torch.Tensor:
    """Ancestral sampling ([DDPM] Alg. 2) from discrete step `step` down to x_0, by `DDPMScheduler.step`."""
    for t in range(step, -1, -1):
        eps = diffusion.noise(x, torch.full((len(x),), t, device=x.device))
        x = diffusion.scheduler.step(eps, t, x, generator=generators).prev_sample
    return x


def vp_alpha_bar(t: torch.Tensor | float, beta_min: float, beta_max: float) -> torch.Tensor:
    """abar(t) = exp(-t^2 (beta_max - beta_min) / 2 - t beta_min), the VP-SDE's signal fraction at time t in [0, 1]
    (a number or a tensor of times)."""
    if isinstance(t, torch.Tensor):
        if t.is_complex() or not bool(((t >= 0) & (t <= 1)).all()):  # NaN fails the comparisons too
            raise WorkbenchError("t must hold diffusion times in [0, 1], got values outside it (or NaN)")
    else:
        check_fraction(t, "t", allow_zero=True)
    check_non_negative(beta_min, "beta_min")
    check_positive(beta_max, "beta_max")
    if beta_max < beta_min:
        raise WorkbenchError(f"beta_max must be >= beta_min (the schedule's betas grow with t), got beta_min="
                             f"{beta_min!r}, beta_max={beta_max!r}")
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.exp(-0.5 * t**2 * (beta_max - beta_min) - t * beta_min)


def _diffuse_sde(diffusion: Diffusion, x0: torch.Tensor, t_star: float, generators: list[torch.Generator]
                ) -> torch.Tensor:
    """x(t*) = sqrt(abar(t*)) x0 + sqrt(1 - abar(t*)) z: the VP-SDE's forward marginal ([DiffPure] Eq. 2)."""
    from diffusers.utils.torch_utils import randn_tensor

    abar = float(vp_alpha_bar(t_star, *diffusion.vp_betas()))
    z = randn_tensor(x0.shape, generator=generators, device=x0.device, dtype=x0.dtype)
    return abar**0.5 * x0 + (1 - abar) ** 0.5 * z


@torch.no_grad()
def _reverse_sde(diffusion: Diffusion, x: torch.Tensor, t_star: float, steps: int, generators: list[torch.Generator]
                ) -> torch.Tensor:
    """Euler-Maruyama on the reverse-time VP-SDE dx = [-beta(t) x / 2 - beta(t) score(x, t)] dt + sqrt(beta(t)) dw
    from t* to 0 in `steps` equal steps ([DiffPure] Eq. 4; [ScoreSDE] Eq. 6)."""
    from diffusers.utils.torch_utils import randn_tensor

    beta_min, beta_max = diffusion.vp_betas()
    dt = t_star / steps
    for i in range(steps):
        t = t_star - i * dt
        beta = beta_min + t * (beta_max - beta_min)
        sigma = float(1 - vp_alpha_bar(t, beta_min, beta_max)) ** 0.5
        timestep = torch.full((len(x),), t * (diffusion.steps - 1), device=x.device)
        score = -diffusion.noise(x, timestep) / sigma
        z = randn_tensor(x.shape, generator=generators, device=x.device, dtype=x.dtype)
        x = x + (0.5 * beta * x + beta * score) * dt + (beta * dt) ** 0.5 * z
    return x


@dataclass(frozen=True)
class DiffPure:
    """DiffPure's purification; the defended pipeline classifies `purify(x)` with one label query per image.

    Args:
        diffusion: the DDPM (`load_workbench_diffusion()` or `workbench.core.diffusion.load_diffusion(folder)`).
        t_star: the diffusion time in [0, 1] the images are diffused to (0.1, DiffPure's CIFAR-10 setting).
        sampler: "ddpm" or "sde" ([BDMAE] Table 1 reports both).
        sde_steps: Euler-Maruyama steps of the SDE sampler (None = t* N, i.e. dt = 1 / N = 1e-3 as DiffPure).
        batch_size: images per reverse-process batch.
    """

    diffusion: Diffusion
    t_star: float = 0.1
    sampler: str = "ddpm"
    sde_steps: int | None = None
    batch_size: int = 64

    def __post_init__(self) -> None:
        self.check_settings(t_star=self.t_star, sampler=self.sampler, sde_steps=self.sde_steps,
                            batch_size=self.batch_size)
        if round(self.t_star * self.diffusion.steps) < 1:
            raise WorkbenchError(f"t_star={self.t_star} is less than one of the model's {self.diffusion.steps} steps")
        if self.t_star > self.diffusion.max_time:
            raise WorkbenchError(f"t_star={self.t_star} exceeds the {self.diffusion.max_time} the diffusion model was "
                                 "trained up to; lower t_star or use a model trained on all noise levels")

    @staticmethod
    def check_settings(*, t_star: float = 0.1, sampler: str = "ddpm", sde_steps: int | None = None,
                       batch_size: int = 64) -> None:
        """Check the settings that do not depend on the diffusion model (before it is loaded)."""
        check_name("DiffPure sampler", sampler, SAMPLERS)
        check_fraction(t_star, "DiffPure t_star")
        check_positive_int(sde_steps, "DiffPure sde_steps", optional=True)
        check_positive_int(batch_size, "DiffPure batch_size")

    def purify(self, x: torch.Tensor, *, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        """Purified images (N, C, H, W) in [0, 1]; image n draws its noise from (seed, first_index + n), so splitting
        a test set into calls (`first_index`: the global index of x[0]) changes nothing."""
        check_images(x)
        if len(x) == 0:
            raise WorkbenchError("images are empty: pass at least one image (N, C, H, W) to purify")
        return torch.cat([self._purify_batch(batch, seed, first_index + start) for start, batch in
                          zip(range(0, len(x), self.batch_size), x.split(self.batch_size), strict=True)])

    def _purify_batch(self, x: torch.Tensor, seed: int, first_index: int) -> torch.Tensor:
        size, channels = x.shape[-2:], x.shape[1]
        model_in = F.interpolate(x.to(self.diffusion.device), size=self.diffusion.sample_size, mode="bilinear",
                                 align_corners=False, antialias=True)
        model_in = _match_channels(model_in, self.diffusion.channels) * 2 - 1
        gens = image_generators(seed, first_index, len(x))
        if self.sampler == "ddpm":
            step = round(self.t_star * self.diffusion.steps) - 1
            restored = _reverse_ddpm(self.diffusion, _diffuse_ddpm(self.diffusion, model_in, step, gens), step, gens)
        else:
            steps = self.sde_steps or round(self.t_star * self.diffusion.steps)
            noisy = _diffuse_sde(self.diffusion, model_in, self.t_star, gens)
            restored = _reverse_sde(self.diffusion, noisy, self.t_star, steps, gens)
        restored = _match_channels((restored.clamp(-1, 1) + 1) / 2, channels)
        back = F.interpolate(restored, size=size, mode="bilinear", align_corners=False, antialias=True)
        return back.clamp_(0, 1).cpu()


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Grey -> the model's channels by repetition; back by averaging (a 3-channel model on grey images)."""
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    raise WorkbenchError(f"images with {x.shape[1]} channels do not fit a {channels}-channel diffusion model")
