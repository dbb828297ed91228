"""Numbers transcribed from the papers' tables, for side-by-side comparison (percent, as printed)."""

from __future__ import annotations

#: BDMAE (000_3dfa915886641a93.txt) Table 2, "Before Defense" row: ResNet-18 trained from scratch, BadNet with
#: 1x1-3x3 white/colour patches, aggregated over 14 runs each; CA / BA / ASR in percent.
BDMAE_TABLE2_BEFORE_DEFENSE = {
    "cifar10": {"CA": 93.3, "BA": 0.9, "ASR": 99.0},
    "gtsrb": {"CA": 98.5, "BA": 1.4, "ASR": 98.6},
}
