"""Februus ([Februus]): white-box trigger localisation by class activation maps, then inpainting.

As BDMAE's comparison (App. C, G): the original GradCAM is replaced by XGradCAM ([XGradCAM]) or GradCAM++
([Grad-CAM++]) on the last convolutional stage; the region whose normalised CAM is >= a threshold
(0.6, 0.7 or 0.8, the best chosen per setting in the paper) is removed and inpainted. The authors' GAN
inpainters are not available here, so the removed region is restored with the workbench's MAE ([BDMAE] Eq. 1 on
the tokens the region touches): a deviation stated in the notebooks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from workbench.core.classifier import capture, check_model_images, num_classes_of
from workbench.core.mae import MAERestorer
from workbench.core.models import StagedClassifier
from workbench.core.validation import WorkbenchError, check_fraction, check_images, check_labels, check_name

CAM_METHODS = ("gradcam", "xgradcam", "gradcam++")


def class_activation_map(model: nn.Module, x: torch.Tensor, method: str = "gradcam++",
                         target: torch.Tensor | None = None, layer: str | None = None) -> torch.Tensor:
    """CAM of the predicted (or given) class on the model's last convolutional feature map.

    Args:
        model: the classifier (white-box access): a workbench model or any wrapped one.
        x: images (N, C, H, W) in [0, 1].
        method: "gradcam", "xgradcam" or "gradcam++".
        target: classes to explain (default: the predicted ones).
        layer: the module whose output is the feature map, by name (pytorch-grad-cam's target layer, e.g. "layer4"
            of a torchvision ResNet); None = the model's declared one: a wrapped model's `cam_layer`, or a workbench
            model's last convolutional map (the input of its `feature_split` stage).

    Returns:
        (N, H, W) maps in [0, 1], each min-max normalised (as pytorch-grad-cam's `scale_cam_image`, which the
        Februus thresholds refer to), up-sampled bilinearly to the image size; a constant map becomes all zeros.
    """
    check_model_images(model, x)
    check_name("CAM method", method, CAM_METHODS)
    if target is not None:
        check_labels(target, len(x), num_classes_of(model, input_shape=tuple(x.shape[1:])), name="target")
    layer = layer or getattr(model, "cam_layer", None)
    if layer is None and not isinstance(model, StagedClassifier):
        raise WorkbenchError("name the CAM layer of this model: layer=<module whose output is the last convolutional "
                             "feature map> (e.g. 'layer4' for a torchvision ResNet), or wrap it with cam_layer=")
    name, at = (model.feature_split, "input") if layer is None else (layer, "output")
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), capture(model, name, at=at, leaf=True) as recorded:
            logits = model(x)
            feats = recorded[0]
            if feats.ndim != 4:
                raise WorkbenchError(f"the CAM layer {name!r} gives {tuple(feats.shape[1:])} features, not a "
                                     "(C, H, W) feature map: name a convolutional layer")
            cls = logits.argmax(dim=1) if target is None else target.to(logits.device)
            score = logits.gather(1, cls.view(-1, 1)).sum()
            grads = torch.autograd.grad(score, feats)[0]
    finally:
        model.train(was_training)
    feats = feats.detach()
    if method == "gradcam":  # [Grad-CAM]: spatially averaged gradients
        weights = grads.mean(dim=(2, 3))
    elif method == "xgradcam":  # [XGradCAM]: gradients weighted by the normalised activations
        weights = (grads * feats / (feats.sum(dim=(2, 3), keepdim=True) + 1e-7)).sum(dim=(2, 3))
    else:  # [Grad-CAM++], closed form with the exponential of the class score
        g2, g3 = grads**2, grads**3
        denom = 2 * g2 + feats.sum(dim=(2, 3), keepdim=True) * g3
        alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
        weights = (alpha * F.relu(grads)).sum(dim=(2, 3))
    cam = F.relu((weights.view(*weights.shape, 1, 1) * feats).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False).squeeze(1)
    low = cam.flatten(1).amin(dim=1).view(-1, 1, 1)
    high = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
    return (cam - low) / (high - low).clamp_min(1e-12)


@dataclass(frozen=True)
class Februus:
    """Remove the high-CAM region and inpaint it with the MAE, then classify (white-box).

    Args:
        model: the suspicious classifier (white-box: its gradients are used).
        restorer: the MAE that inpaints the removed region.
        method: "xgradcam" or "gradcam++" (BDMAE's choices) or "gradcam".
        threshold: CAM level that defines the removed region (BDMAE tries 0.6, 0.7, 0.8).
        layer: the CAM layer (see `class_activation_map`); None = a workbench model's last feature map.
    """

    model: nn.Module
    restorer: MAERestorer
    method: str = "gradcam++"
    threshold: float = 0.7
    layer: str | None = None

    def __post_init__(self) -> None:
        check_fraction(self.threshold, "Februus threshold")
        check_name("CAM method", self.method, CAM_METHODS)

    def purify(self, x: torch.Tensor, *, seed: int = 0) -> torch.Tensor:
        """Images with the CAM region (threshold) inpainted, clipped to [0, 1] (the MAE's output is not bounded);
        deterministic (`seed` unused)."""
        check_images(x)
        cam = class_activation_map(self.model, x, self.method, layer=self.layer)
        grid = self.restorer.grid
        tokens = F.adaptive_max_pool2d((cam >= self.threshold).float().unsqueeze(1), (grid, grid)).flatten(1) > 0
        restored, _ = self.restorer.restore(x, tokens)
        return restored.clamp(0, 1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor, *, seed: int = 0, first_index: int = 0) -> torch.Tensor:
        """The model's labels of the purified images; `seed` and `first_index` are unused (deterministic)."""
        purified = self.purify(x, seed=seed)
        self.model.eval()
        return torch.cat([self.model(purified[i:i + 256]).argmax(1) for i in range(0, len(x), 256)]).cpu()
