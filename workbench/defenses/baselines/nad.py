"""Neural Attention Distillation (NAD; [NAD]): erase a backdoor by fine-tuning the backdoored model
(the student) on the clean holdout while matching its intermediate attention maps to those of a teacher, the same
backdoored model fine-tuned on the same holdout.

1. Teacher: `fine_tune(model, holdout)` with NAD's recipe (see `workbench.defenses.baselines.finetune`), 10 epochs.
2. Student: a fresh copy of the backdoored model trained on the holdout with

       L = CE(f_S(x), y) + sum_k beta_k * L_AT(a_S^k(x), a_T^k(x)),

   a^k the output of the k-th residual group (WRN-16-1: stages block1_1, block2_1, block3_1), the teacher frozen in
   eval mode. Attention map (NAD's A^p_sum, the attention-transfer operator of [AT]):
   A(a) = sum over channels of |a|^p, flattened to (N, H*W) and L2-normalised per sample, p = 2.

The distance L_AT between normalised maps: the paper writes the (batch-mean) L2 norm of their difference; the public
code (`at.py`) uses `F.mse_loss`, the mean of the squared differences over the batch and the H*W positions. The betas
500 / 1000 / 1000 were set with the code's form (with the L2 norm, whose gradient has unit size whatever the
distance, beta = 1000 swamps the cross-entropy), so `distance="mse"` is the default and `distance="l2"` is the
paper's form.

Defaults (WRN-16-1 on CIFAR-10; [T&R] App. B.2 "directly use the best hyper-parameters reported in their original
papers"): the public NAD `config.py` / `main.py` / `utils.py`: student 20 epochs, SGD (Nesterov) momentum 0.9, lr 0.1
for 2 epochs then 0.01, weight decay 1e-4 (not 5e-4: pass `weight_decay=5e-4` for that), batch 64, betas
(500, 1000, 1000), p = 2, crop + flip + Cutout; teacher 10 epochs with the same recipe.
NAD's paper runs the student for 10 epochs in its main tables (20 in its App. J); we follow the code. The step decay
runs as constant-lr phases of `train_classifier` (see `finetune.py` for that and the other small deviations).
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.core.classifier import capture, check_classifier, check_model_images, input_shape_of
from workbench.core.data import ImageDataset
from workbench.core.models import StagedClassifier
from workbench.core.runtime import child_seed
from workbench.core.validation import (
    WorkbenchError,
    check_name,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_seed,
    check_tensor,
)
from workbench.defenses.baselines.finetune import (
    FineTuneConfig,
    check_defence_inputs,
    fine_tune,
    train_in_phases,
)

#: the outputs of WRN-16-1's three residual groups, where NAD distils attention
WRN_GROUPS = ("block1_1", "block2_1", "block3_1")


@dataclass(frozen=True)
class NADConfig:
    """NAD's teacher and student training (defaults: public NAD code for WRN-16-1 / CIFAR-10; module docstring).

    Args:
        teacher_epochs: epochs of the teacher's fine-tuning (10; NAD's README: 5~10).
        epochs: epochs of the student's attention distillation (20, public `config.py`; the paper's tables use 10).
        batch_size, lr, lr_milestones, lr_decay, momentum, weight_decay, augment, cutout: the optimisation settings
            of both teacher and student, as in `FineTuneConfig` (64; 0.1 -> 0.01 at epoch 2; 0.9; 1e-4;
            crop + flip; Cutout 2 x 2 px).
        stages: names of the stages whose outputs are distilled (WRN-16-1's residual groups; any spatial stage of a
            workbench model, see `model.split_points`, or any module name of a wrapped model, e.g. "layer3").
        betas: one weight per stage ((500, 1000, 1000), public `config.py`).
        p: the power of the attention operator (2).
        distance: "mse" (public code: mean squared difference of the normalised maps) or "l2" (paper: batch mean of
            the L2 norm of their difference).
        seed: the teacher is trained with `seed`, the student with its "nad_student" child seed.
    """

    teacher_epochs: int = 10
    epochs: int = 20
    batch_size: int = 64
    lr: float = 0.1
    lr_milestones: tuple[int, ...] = (2,)
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    augment: str = "crop_flip"
    cutout: int = 2
    stages: tuple[str, ...] = WRN_GROUPS
    betas: tuple[float, ...] = (500.0, 1000.0, 1000.0)
    p: float = 2.0
    distance: str = "mse"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("lr_milestones", "stages", "betas"):  # lists (from JSON) become tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        check_positive_int(self.teacher_epochs, "NADConfig.teacher_epochs")
        check_positive_int(self.epochs, "NADConfig.epochs")
        if not self.stages or any(not isinstance(s, str) for s in self.stages):
            raise WorkbenchError(f"NADConfig.stages must name at least one stage, got {self.stages!r}")
        if len(set(self.stages)) != len(self.stages):
            raise WorkbenchError(f"NADConfig.stages lists a stage twice: {self.stages!r}")
        if len(self.betas) != len(self.stages):
            raise WorkbenchError(f"NADConfig needs one beta per stage: {len(self.stages)} stages {self.stages} but "
                                 f"{len(self.betas)} betas {self.betas}")
        for beta in self.betas:
            check_non_negative(beta, "NADConfig.betas (each)")
        check_positive(self.p, "NADConfig.p")
        if self.distance not in ("mse", "l2"):
            raise WorkbenchError(f"NADConfig.distance must be 'mse' (public code) or 'l2' (paper), got "
                                 f"{self.distance!r}")
        check_seed(self.seed, "NADConfig.seed")
        self.teacher_recipe()  # validates the optimisation fields (with their FineTuneConfig names)
        self.student_recipe()

    def _recipe(self, epochs: int, seed: int) -> FineTuneConfig:
        return FineTuneConfig(epochs=epochs, batch_size=self.batch_size, lr=self.lr, lr_milestones=self.lr_milestones,
                              lr_decay=self.lr_decay, optimizer="sgd", momentum=self.momentum,
                              weight_decay=self.weight_decay, augment=self.augment, cutout=self.cutout,
                              label_smoothing=0.0, seed=seed)

    def teacher_recipe(self) -> FineTuneConfig:
        """The teacher's fine-tuning: the student's settings over `teacher_epochs` (NAD main.py with beta = 0)."""
        return self._recipe(self.teacher_epochs, self.seed)

    def student_recipe(self) -> FineTuneConfig:
        """The student's optimisation settings (its loss adds the attention terms)."""
        return self._recipe(self.epochs, child_seed(self.seed, "nad_student"))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NADConfig:
        return cls(**data)


def attention_map(activation: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """NAD's attention map of an activation (N, C, H, W): sum over channels of |a|^p, flattened and L2-normalised
    per sample -> (N, H*W). Invariant to positive scaling of the activation; an all-zero activation maps to zeros."""
    check_tensor(activation, "activation", ndim=4)
    check_positive(p, "p")
    return _attention_map(activation, p)


def _attention_map(activation: torch.Tensor, p: float) -> torch.Tensor:
    """`attention_map` without its checks (the distillation loss computes it on every batch)."""
    return F.normalize(activation.abs().pow(p).sum(dim=1).flatten(1), dim=1)


def attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0,
                   distance: str = "mse") -> torch.Tensor:
    """L_AT between the attention maps of two activations (N, C, H, W) (channel counts may differ, H and W may not).

    "mse": mean over the batch and the H*W positions of the squared difference of the normalised maps (public code);
    "l2": mean over the batch of the L2 norm of their difference (paper).
    """
    check_tensor(student, "student activation", ndim=4)
    check_tensor(teacher, "teacher activation", ndim=4)
    check_positive(p, "p")
    check_name("distance", distance, ("mse", "l2"))
    return _attention_loss(student, teacher, p, distance)


def _attention_loss(student: torch.Tensor, teacher: torch.Tensor, p: float, distance: str) -> torch.Tensor:
    """`attention_loss` without the checks of its settings and values (the distillation loss calls it per batch)."""
    if student.shape[0] != teacher.shape[0] or student.shape[2:] != teacher.shape[2:]:
        raise WorkbenchError(f"student and teacher activations must share N, H and W, got {tuple(student.shape)} and "
                             f"{tuple(teacher.shape)}")
    diff = _attention_map(student, p) - _attention_map(teacher, p)
    if distance == "mse":
        return diff.pow(2).mean()
    if distance == "l2":
        return diff.norm(dim=1).mean()
    raise WorkbenchError(f"distance must be 'mse' or 'l2', got {distance!r}")


def stage_outputs(model: nn.Module, x: torch.Tensor, names: tuple[str, ...] | list[str], *,
                  logits: bool = True) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Run `model` on images x (N, C, H, W) in [0, 1] and return (logits, [output of each named module]): stages of
    a workbench model, or any module names of a wrapped one (e.g. torchvision's "layer3"). With `logits=False` the
    logits are None (the teacher's pass). A module called several times in one pass gives its last output."""
    check_model_images(model, x)
    if isinstance(names, str) or not all(isinstance(name, str) for name in names):
        raise WorkbenchError(f"names must be a tuple of module names, e.g. ('stage2',), got {names!r}")
    return _stage_outputs(model, x, names, logits=logits)


def _stage_outputs(model: nn.Module, x: torch.Tensor, names: tuple[str, ...] | list[str], *,
                   logits: bool = True) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """`stage_outputs` without the check of the images (the distillation loss runs it on every batch)."""
    with ExitStack() as stack:
        recorded = [stack.enter_context(capture(model, name, at="output")) for name in names]
        out = model(x)
    return (out if logits else None), [r[-1] for r in recorded]


def _candidate_stages(model: nn.Module) -> list[str]:
    """A workbench model's stages, or the top-level modules of a wrapped one, in order."""
    if isinstance(model, StagedClassifier):
        return model.split_points
    return [name for name, _ in getattr(model, "model", model).named_children()]


def check_stages(model: nn.Module, stages: tuple[str, ...]) -> None:
    """Every stage must exist and give a spatial (N, C, H, W) output (an attention map needs positions)."""
    probe = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        _, outputs = stage_outputs(probe, torch.zeros(1, *input_shape_of(model)), stages, logits=False)
    for name, out in zip(stages, outputs, strict=True):
        if out.ndim != 4 or out.shape[2] * out.shape[3] < 2:
            raise WorkbenchError(f"stage {name!r} outputs shape {tuple(out.shape[1:])}; NAD needs a spatial (C, H, W) "
                                 f"activation: choose among {', '.join(_spatial_stages(model))}")


def _spatial_stages(model: nn.Module) -> list[str]:
    """The stages of `model` (a wrapped model's top-level modules) whose outputs are spatial (N, C, H, W) maps of
    more than one position, in order."""
    probe = copy.deepcopy(model).cpu().eval()
    names = _candidate_stages(model)
    with torch.no_grad():
        _, outputs = stage_outputs(probe, torch.zeros(1, *input_shape_of(model)), names, logits=False)
    return [name for name, out in zip(names, outputs, strict=True) if out.ndim == 4 and out.shape[2] * out.shape[3] > 1]


def default_stages(model: nn.Module, config: NADConfig) -> NADConfig:
    """`config` for `model`: its stages when `model` has them (WRN-16-1's residual groups, the paper's choice),
    else the model's last spatial stages after the stem, as many as `config.betas` has weights (the outputs of its
    deepest feature groups, [NAD] Sec. 3's choice for ResNets), with the last betas."""
    candidates = _candidate_stages(model)
    if all(name in candidates for name in config.stages):
        return config
    stages = [name for name in _spatial_stages(model) if name != candidates[0]][-len(config.betas):]
    if not stages:
        raise WorkbenchError("NAD needs a spatial stage after the stem to distil attention from; this model has none")
    return dataclasses.replace(config, stages=tuple(stages), betas=config.betas[-len(stages):])


def nad_loss(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor,
             config: NADConfig) -> torch.Tensor:
    """The student's loss on one batch x (N, C, H, W) in [0, 1] with labels y (N,):
    CE(f_S(x), y) + sum_k beta_k L_AT(a_S^k(x), a_T^k(x)), the teacher's activations taken without gradients."""
    check_classifier(student, x, y, name="x")
    return _nad_loss(student, teacher, x, y, config)


def _nad_loss(student: nn.Module, teacher: nn.Module, x: torch.Tensor, y: torch.Tensor,
              config: NADConfig) -> torch.Tensor:
    """`nad_loss` without the checks of the batch (the training loop's batches come from a checked holdout)."""
    logits, student_acts = _stage_outputs(student, x, config.stages)
    with torch.no_grad():
        _, teacher_acts = _stage_outputs(teacher, x, config.stages, logits=False)
    loss = F.cross_entropy(logits, y)
    for beta, a_s, a_t in zip(config.betas, student_acts, teacher_acts, strict=True):
        if beta > 0:  # betas of 0 leave plain fine-tuning, bit for bit
            loss = loss + float(beta) * _attention_loss(a_s, a_t, config.p, config.distance)
    return loss


def nad(model: nn.Module, holdout: ImageDataset, config: NADConfig = NADConfig(), *, device: str = "auto",
        progress: bool = True) -> nn.Module:
    """Neural Attention Distillation on a copy of `model`.

    Args:
        model: the (backdoored) classifier; it is not modified.
        holdout: clean labelled images (uint8 (N, C, H, W) of the model's input shape).
        config: teacher and student settings; `config.stages` must name spatial stages of `model`.
        device: where to train ("auto" = GPU if available).
        progress: show tqdm bars.

    Returns:
        The student after distillation, in eval mode, on `device`.
    """
    check_defence_inputs(model, holdout)
    check_stages(model, config.stages)
    teacher = fine_tune(model, holdout, config.teacher_recipe(), device=device, progress=progress)
    teacher.requires_grad_(False).eval()  # NAD's teacher is frozen and runs in eval mode
    student = copy.deepcopy(model).requires_grad_(True)

    def distillation_loss(net: nn.Module, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return _nad_loss(net, teacher, x, y, config)

    train_in_phases(student, holdout, config.student_recipe(), device=device, progress=progress,
                    batch_loss=distillation_loss)
    student.zero_grad(set_to_none=True)
    return student.eval()
