"""The attack configurations the four papers' tables use, by name (`make_attack(name)`)."""

from __future__ import annotations

from workbench.core.attacks.additive import PATTERN_NOTES, Additive, Smooth
from workbench.core.attacks.base import register_preset
from workbench.core.attacks.blending import SIG, Blended
from workbench.core.attacks.patches import BadNets, DynamicBadNets
from workbench.core.attacks.warping import WaNet

register_preset("bdmae_badnets_colour", "BDMAE: 3x3 random-colour patch at rows 16-18, cols 27-29 (exact colours); "
                "REStore reuses it on CIFAR-10")(lambda: BadNets(pattern="bdmae_colour"))
register_preset("bdmae_badnets_checkerboard", "BDMAE / T&R BadNet-Grid: 3x3 black-white grid at rows/cols 29-31")(
    lambda: BadNets(pattern="bdmae_checkerboard"))
register_preset("lc_four_corners", "BDMAE / T&R LC(BA) trigger: the 3x3 grid mirrored at all four corners "
                "(the adversarial perturbation of LC is a separate step)")(
    lambda: BadNets(pattern="bdmae_checkerboard", four_corners=True))
register_preset("tr_badnet_white", "T&R BadNet-White: a white 3x3 square one pixel from the bottom-right corner")(
    lambda: BadNets(pattern="white", size=3, row=-4, col=-4))
register_preset("restore_badnets_mnist", "REStore MNIST: 3x3 grey checkerboard at the bottom left")(
    lambda: BadNets(pattern="checkerboard", size=3, row=-4, col=1))
register_preset("restore_dynamic_badnets", "REStore Sec. IV-G2: BDMAE's 3x3 colour patch at a random position "
                "in every image")(DynamicBadNets)
register_preset("bdmae_blended", "BDMAE Blended: 15x15 random-pixel patch in the lower-right corner, alpha 0.2 "
                "for training (use .replace(alpha=0.1) at test time)")(lambda: Blended(alpha=0.2, size=15))
register_preset("tr_blend", "T&R Blend: 0.8 img + 0.2 pattern over the whole image (noise pattern: the original "
                "image is unavailable)")(lambda: Blended(alpha=0.2))
register_preset("restore_sig_cifar", "REStore SIG on CIFAR-10: alpha 40/255, F_x = 6/32 (Eqs. 7-8)")(
    lambda: SIG(alpha=40 / 255, cycles=6))
register_preset("restore_sig_mnist", "REStore SIG on MNIST: alpha 60/255, F_x = 6/28 (Eqs. 7-8)")(
    lambda: SIG(alpha=60 / 255, cycles=6))
register_preset("tr_sig", "T&R SIG: 0.8 img + 0.2 horizontal sine pattern")(
    lambda: SIG(alpha=0.2, cycles=6, mode="blend"))
register_preset("tr_smooth", "T&R Smooth equivalent (trigger file unavailable): a seeded low-frequency field "
                "(4x4 Gaussian grid, bicubic upsampling, largest magnitude 0.25) added, then per-image min-max "
                "rescale")(Smooth)
register_preset("wanet", "WaNet: k = 4, s = 0.5, noise mode available (original paper's defaults)")(WaNet)

for _pattern, _name in (("lred_global", "lred_global"), ("local_square", "lred_local"),
                        ("chessboard", "lred_chessboard"), ("cross", "lred_cross"), ("l_shape", "lred_l_shape"),
                        ("pixel", "lred_pixel"), ("local_chessboard", "lred_local_chessboard"),
                        ("trojan_square", "trojan_sq"), ("trojan_watermark", "trojan_wm"),
                        ("l0_invisible", "l0_invisible"), ("l2_invisible", "l2_invisible")):
    register_preset(_name, PATTERN_NOTES[_pattern])(lambda p=_pattern: Additive(pattern=p))
