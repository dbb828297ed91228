"""Numbers transcribed from the papers' tables, for side-by-side comparison (percent, as printed)."""

from __future__ import annotations

#: BDMAE (000_3dfa915886641a93.txt) Table 2, "Before Defense" row: ResNet-18 trained from scratch, BadNet with
#: 1x1-3x3 white/colour patches, aggregated over 14 runs each; CA / BA / ASR in percent.
BDMAE_TABLE2_BEFORE_DEFENSE = {
    "cifar10": {"CA": 93.3, "BA": 0.9, "ASR": 99.0},
    "gtsrb": {"CA": 98.5, "BA": 1.4, "ASR": 98.6},
}


#: BDMAE Table 2 (CIFAR-10 and GTSRB columns): ResNet-18, BadNet 1x1-3x3 white/colour patches, 14 runs each;
#: (CA, BA, ASR) in percent. "Ours Base" / "Ours Large" use the official MAE ViT-Base / ViT-Large.
BDMAE_TABLE2 = {
    "cifar10": {
        "Before defense": (93.3, 0.9, 99.0),
        "Februus XGradCAM": (91.6, 87.0, 7.0), "Februus GradCAM++": (80.0, 91.0, 2.3),
        "PatchCleanser vanilla": (89.9, 43.9, 55.0), "PatchCleanser variant": (57.6, 86.1, 1.9),
        "Blur weak": (91.5, 14.0, 84.9), "Blur strong": (63.6, 60.0, 6.4),
        "ShrinkPad weak": (90.7, 50.3, 45.0), "ShrinkPad strong": (86.7, 36.7, 57.9),
        "BDMAE Base": (92.5, 90.8, 0.9), "BDMAE Large": (92.7, 91.1, 0.8),
    },
    "gtsrb": {
        "Before defense": (98.5, 1.4, 98.6),
        "Februus XGradCAM": (65.4, 50.9, 38.0), "Februus GradCAM++": (59.1, 73.9, 14.6),
        "PatchCleanser vanilla": (95.0, 10.0, 89.7), "PatchCleanser variant": (13.3, 80.8, 1.5),
        "Blur weak": (98.4, 3.9, 96.0), "Blur strong": (97.7, 94.9, 1.8),
        "ShrinkPad weak": (97.5, 33.3, 65.0), "ShrinkPad strong": (92.8, 23.5, 72.3),
        "BDMAE Base": (98.2, 95.3, 0.9), "BDMAE Large": (98.4, 96.0, 0.9),
    },
}
