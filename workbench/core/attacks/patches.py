"""BadNets: a small patch stamped over the image ([BadNets]; [REStore] App. A Eq. 6)."""

from __future__ import annotations

import dataclasses

import torch

from workbench.core.attacks import functional as Fn
from workbench.core.attacks.base import Attack, resolve_position
from workbench.core.runtime import child_seed, make_generator
from workbench.core.validation import WorkbenchError, check_positive_int, check_seed

# The exact BDMAE random-colour patch, RGB rows (the authors' public code: docs/implementation.md#bdmae-attacks).
BDMAE_COLOUR_PATCH = torch.tensor([
    [(214, 240, 47), (176, 208, 235), (249, 73, 252)],
    [(0, 9, 236), (253, 75, 134), (106, 104, 78)],
    [(18, 113, 236), (68, 62, 205), (125, 62, 29)],
], dtype=torch.float32).permute(2, 0, 1) / 255
# The exact 3x3 black-white grid of BDMAE / ABL / T&R BadNet-Grid (rows: B B W / B W B / W B W).
BDMAE_CHECKERBOARD = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.float32).unsqueeze(0)

#: Where the papers place their fixed patches on 32 px images (top-left row, col).
FIXED_PATCHES = {"bdmae_colour": (BDMAE_COLOUR_PATCH, 16, 27), "bdmae_checkerboard": (BDMAE_CHECKERBOARD, 29, 29)}
PATCH_PATTERNS = ("white", "black", "checkerboard", "random_colour", *FIXED_PATCHES)


def _patch_pattern(pattern: str, size: int, channels: int, seed: int) -> torch.Tensor:
    """The (C or 1, size, size) patch for a named pattern.

    - "white" / "black": solid 1 / 0.
    - "checkerboard": alternating 1/0 starting with white at the top-left.
    - "random_colour": every pixel and channel uniform in {0, ..., 255} / 255, drawn from `seed`.
    - "bdmae_colour", "bdmae_checkerboard": the exact 3x3 patches of docs/implementation.md#bdmae-attacks.
    """
    if pattern in FIXED_PATCHES:
        patch = FIXED_PATCHES[pattern][0]
        if patch.shape[0] not in (1, channels):
            raise WorkbenchError(f"pattern {pattern!r} is an RGB patch and needs 3-channel images, got {channels}")
        return patch
    if pattern == "white":
        return torch.ones(1, size, size)
    if pattern == "black":
        return torch.zeros(1, size, size)
    if pattern == "checkerboard":
        idx = torch.arange(size)
        return ((idx.view(-1, 1) + idx.view(1, -1)) % 2 == 0).float().unsqueeze(0)
    return torch.randint(0, 256, (channels, size, size), generator=make_generator(seed)).float() / 255


@dataclasses.dataclass(frozen=True)
class BadNets(Attack):
    """Stamp a patch that replaces the pixels under it (Eq. 6 of [REStore] App. A).

    Args:
        pattern: one of "white", "black", "checkerboard", "random_colour", "bdmae_colour" (BDMAE's 3x3
            colour patch), "bdmae_checkerboard" (BDMAE/ABL's 3x3 grid).
        size: side of the square patch in pixels (fixed at 3 for the two bdmae patterns).
        row, col: top-left pixel of the patch; negative values count from the bottom/right edge
            (-size puts the patch in the corner). None = the pattern's paper position for the bdmae
            patterns (rows 16-18 / cols 27-29 and rows/cols 29-31 on 32 px), else the bottom-right corner.
        four_corners: stamp the patch at all four corners, mirrored so the result is symmetric
            (the LC attack's trigger); `row` / `col` are then ignored.
        seed: seed of the "random_colour" pattern.
    """

    family = "badnets"
    pattern: str = "white"
    size: int = 3
    row: int | None = None
    col: int | None = None
    four_corners: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.pattern not in PATCH_PATTERNS:
            raise WorkbenchError(f"unknown BadNets pattern {self.pattern!r}; choose one of: "
                                 f"{', '.join(PATCH_PATTERNS)}")
        check_positive_int(self.size, "BadNets size")
        if self.pattern in FIXED_PATCHES and self.size != 3:
            raise WorkbenchError(f"pattern {self.pattern!r} is a fixed 3x3 patch; leave size=3")

    def _build_pattern(self, channels: int, height: int, width: int) -> list[tuple[torch.Tensor, int, int]]:
        patch = _patch_pattern(self.pattern, self.size, channels, self.seed)
        if self.four_corners:
            far_r, far_c = height - self.size, width - self.size
            return [(patch, far_r, far_c), (patch.flip(-1), far_r, 0), (patch.flip(-2), 0, far_c),
                    (patch.flip(-1, -2), 0, 0)]
        if self.pattern in FIXED_PATCHES:
            default_r, default_c = FIXED_PATCHES[self.pattern][1:]
        else:
            default_r = default_c = -self.size
        row = resolve_position(default_r if self.row is None else self.row, height, self.size, "row")
        col = resolve_position(default_c if self.col is None else self.col, width, self.size, "col")
        return [(patch, row, col)]

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        for patch, row, col in self.pattern_for(*x.shape[1:]):
            x = Fn._stamp_patch(x, patch, row, col)
        return x

    def trigger_mask(self, channels: int, height: int, width: int) -> torch.Tensor:
        """(H, W) boolean map of the pixels this trigger replaces."""
        mask = torch.zeros(height, width, dtype=torch.bool)
        for _, row, col in self.pattern_for(channels, height, width):
            mask[row:row + self.size, col:col + self.size] = True
        return mask


@dataclasses.dataclass(frozen=True)
class DynamicBadNets(Attack):
    """BadNets with the patch at a random position in every image ([REStore] Sec. IV-G2, "dynamic BadNets": placed at
    random during training instead of at a static location; test-time triggers are placed at random too).

    Args:
        pattern, size, seed: the patch, as for `BadNets`.
        position_seed: seeds the positions (a hash of each image's pixels, so one image always gets one position).
    """

    family = "dynamic_badnets"
    pattern: str = "bdmae_colour"
    size: int = 3
    seed: int = 0
    position_seed: int = 0

    def __post_init__(self) -> None:
        BadNets(pattern=self.pattern, size=self.size, seed=self.seed)  # validates the patch settings

    def _build_pattern(self, channels: int, height: int, width: int) -> torch.Tensor:
        return _patch_pattern(self.pattern, self.size, channels, self.seed)

    def _apply(self, x: torch.Tensor) -> torch.Tensor:
        _, channels, height, width = x.shape
        # the position is a seeded hash of the image's 8-bit pixels: pseudo-random over images, yet the same image
        # always gets the same position, however it is batched
        weights = torch.randint(1, 2 ** 31 - 1, (x[0].numel(),), generator=make_generator(self.position_seed))
        code = ((x.flatten(1) * 255).round().long() * weights.to(x.device)).sum(dim=1) % (2 ** 31 - 1)
        rows, cols = height - self.size + 1, width - self.size + 1
        return Fn._stamp_patch_at(x, self.pattern_for(channels, height, width), code % rows, (code // rows) % cols)


def per_class_triggers(num_classes: int, image_size: int, *, size: int = 3, seed: int = 0) -> list[BadNets]:
    """Distinct random-colour BadNets triggers at random positions, one per class.

    [REStore] Sec. V-A ("all classes backdoored"): each class gets its own 3x3 trigger whose pattern and
    location are drawn at random; here from `seed` (trigger k: `child_seed(seed, "patch_colour", k)`).
    """
    check_positive_int(num_classes, "num_classes")
    check_positive_int(image_size, "image_size")
    check_positive_int(size, "size")
    check_seed(seed)
    if size > image_size:
        raise WorkbenchError(f"size={size} is larger than the {image_size}-pixel images; use a patch of at most "
                             f"{image_size} pixels")
    gen = make_generator(seed)
    positions = torch.randint(0, image_size - size + 1, (num_classes, 2), generator=gen).tolist()
    return [BadNets(pattern="random_colour", size=size, row=r, col=c, seed=child_seed(seed, "patch_colour", k))
            for k, (r, c) in enumerate(positions)]
