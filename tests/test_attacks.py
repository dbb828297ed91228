"""Triggers change exactly what they claim, follow the papers' formulas, and refuse bad input."""

from __future__ import annotations

import math

import pytest
import torch

from workbench.core.attacks import (
    ATTACK_PRESETS,
    SIG,
    Additive,
    BadNets,
    Blended,
    WaNet,
    attack_from_dict,
    make_attack,
    per_class_triggers,
)
from workbench.core.attacks.patches import BDMAE_COLOUR_PATCH
from workbench.core.validation import UnknownNameError, WorkbenchError


def images(n: int = 3, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 0.5 + 0.25


def changed(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(H, W) map of pixels changed in any channel of any image."""
    return (x != y).any(dim=1).any(dim=0)


def test_bdmae_colour_patch_is_exact_and_only_there() -> None:
    x = images()
    y = make_attack("bdmae_badnets_colour")(x)
    expected = torch.tensor([[214, 240, 47], [176, 208, 235], [249, 73, 252]]) / 255  # row 16, cols 27-29
    assert torch.allclose(y[0, :, 16, 27:30].T, expected)
    assert torch.allclose(y[:, :, 16:19, 27:30], BDMAE_COLOUR_PATCH.expand(3, -1, -1, -1))
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[16:19, 27:30] = True
    assert torch.equal(changed(x, y), mask)


def test_checkerboard_grid_matches_notes() -> None:
    y = make_attack("bdmae_badnets_checkerboard")(images())
    grid = torch.tensor([[0, 0, 1], [0, 1, 0], [1, 0, 1]], dtype=torch.float32)  # B B W / B W B / W B W
    for ch in range(3):
        assert torch.equal(y[1, ch, 29:32, 29:32], grid)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@pytest.mark.parametrize("pattern", ["white", "checkerboard", "random_colour"])
def test_badnets_sizes_positions(size: int, pattern: str) -> None:
    x = images()
    attack = BadNets(pattern=pattern, size=size, row=4, col=-size - 2)
    y = attack(x)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[4:4 + size, 32 - size - 2:32 - 2] = True
    assert torch.equal(changed(x, y), mask)
    assert torch.equal(attack.trigger_mask(3, 32, 32), mask)
    # the same patch on every image: a replacement, not an addition
    assert torch.equal(y[0][:, mask], y[2][:, mask])


def test_random_colour_is_seeded() -> None:
    x = images()
    a, b = BadNets(pattern="random_colour", seed=1)(x), BadNets(pattern="random_colour", seed=1)(x)
    c = BadNets(pattern="random_colour", seed=2)(x)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_four_corners_mirrored() -> None:
    x = torch.full((1, 3, 32, 32), 0.5)
    y = make_attack("lc_four_corners")(x)
    assert int(changed(x, y).sum()) == 4 * 9
    assert torch.equal(y, y.flip(-1)) and torch.equal(y, y.flip(-2))  # symmetric about both axes


def test_per_class_triggers_are_distinct() -> None:
    triggers = per_class_triggers(10, 32, seed=3)
    x = images(1)
    outputs = torch.stack([t(x)[0] for t in triggers])
    assert len(triggers) == 10
    assert len({tuple(o.flatten().tolist()) for o in outputs}) == 10


def test_blended_formula_whole_and_region() -> None:
    x = images()
    attack = Blended(alpha=0.2, seed=4)
    pattern, _ = attack.pattern_for(3, 32, 32)
    assert torch.allclose(attack(x), 0.8 * x + 0.2 * pattern, atol=1e-6)
    local = make_attack("bdmae_blended")
    y = local(x)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[17:, 17:] = True
    assert torch.equal(changed(x, y), mask)
    assert torch.allclose(local.replace(alpha=0.1)(x)[:, :, 17:, 17:],
                          0.9 * x[:, :, 17:, 17:] + 0.1 * local.pattern_for(3, 32, 32)[0][:, 17:, 17:], atol=1e-6)


def test_sig_additive_formula() -> None:
    x = images()
    alpha = 40 / 255
    y = SIG(alpha=alpha, cycles=6)(x)
    cols = torch.arange(32, dtype=torch.float64)
    wave = torch.sin(2 * math.pi * 6 / 32 * cols).float()  # Eq. 8 with (F_x, F_y) = (6/32, 0)
    assert torch.allclose(y, (x + alpha * wave).clamp(0, 1), atol=1e-6)  # Eq. 7
    unclipped = SIG(alpha=alpha, cycles=6)(torch.full((1, 3, 32, 32), 0.5)) - 0.5
    assert torch.allclose(unclipped, unclipped[:, :, :1].expand_as(unclipped), atol=1e-6)  # varies along columns only


def test_sig_blend_mode() -> None:
    x = images()
    y = make_attack("tr_sig")(x)
    wave = torch.sin(2 * math.pi * 6 / 32 * torch.arange(32, dtype=torch.float64)).float()
    assert torch.allclose(y, 0.8 * x + 0.2 * (1 + wave) / 2, atol=1e-6)


def test_sig_clips_to_unit_range() -> None:
    y = SIG(alpha=1.0)(torch.ones(1, 1, 28, 28))
    assert float(y.max()) == 1.0 and float(y.min()) >= 0.0


def test_wanet_zero_strength_is_identity() -> None:
    x = images()
    assert torch.allclose(WaNet(strength=0.0)(x), x, atol=1e-5)


def test_wanet_warps_and_noise_mode_differs() -> None:
    x = images()
    attack = WaNet(strength=0.5, seed=1)
    y = attack(x)
    assert (y - x).abs().mean() > 1e-3
    assert torch.equal(y, WaNet(strength=0.5, seed=1)(x))
    noisy = attack.apply_noise_mode(x, torch.Generator().manual_seed(0))
    again = attack.apply_noise_mode(x, torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again) and not torch.allclose(noisy, y, atol=1e-4)


def test_lred_global_one_pixel_in_every_2x2_window() -> None:
    x = torch.full((1, 3, 32, 32), 0.5)
    delta = make_attack("lred_global")(x) - x
    assert torch.allclose(delta.abs().max(), torch.tensor(2 / 255))
    perturbed = (delta.abs() > 0).float()
    assert torch.equal(perturbed[0, 0], perturbed[0, 1]) and torch.equal(perturbed[0, 0], perturbed[0, 2])
    windows = torch.nn.functional.avg_pool2d(perturbed[:, :1], 2, stride=1) * 4  # every offset
    assert torch.equal(windows, torch.ones_like(windows))


def test_lred_local_square_one_channel() -> None:
    x = torch.full((1, 3, 32, 32), 0.5)
    delta = make_attack("lred_local", seed=7)(x) - x
    nonzero = delta.abs() > 0
    assert int(nonzero.sum()) == 4
    assert int(nonzero.any(dim=(2, 3)).sum()) == 1  # a single channel
    rows, cols = nonzero[0].any(0).nonzero(as_tuple=True)
    assert rows.max() - rows.min() == 1 and cols.max() - cols.min() == 1  # a 2x2 square
    assert torch.allclose(delta[nonzero], torch.tensor(50 / 255))


@pytest.mark.parametrize(("name", "count", "amplitude"), [
    ("lred_cross", 5, 60 / 255), ("lred_l_shape", 4, 65 / 255), ("lred_pixel", 1, 50 / 255),
    ("lred_local_chessboard", 18, 25 / 255), ("l0_invisible", 5, 0.5),
])
def test_sparse_additive_patterns(name: str, count: int, amplitude: float) -> None:
    x = torch.full((1, 3, 32, 32), 0.5)
    delta = make_attack(name)(x) - x
    assert int((delta.abs() > 0).any(1).sum()) == count
    assert torch.allclose(delta.abs().max(), torch.tensor(amplitude), atol=1e-6)


def test_l0_invisible_on_last_row_and_chessboard_alternates() -> None:
    x = torch.full((1, 1, 28, 28), 0.5)
    assert changed(x, make_attack("l0_invisible")(x))[:-1].sum() == 0
    board = (make_attack("lred_chessboard")(x) - x)[0, 0] > 0
    assert torch.equal(board[:, :-1] ^ board[:, 1:], torch.ones(28, 27, dtype=torch.bool))


def test_dense_patterns_touch_every_pixel() -> None:
    x = torch.full((1, 3, 32, 32), 0.5)
    assert bool(changed(x, make_attack("l2_invisible")(x)).all())
    assert 0 < int(changed(x, make_attack("trojan_wm")(x)).sum()) < 32 * 32


@pytest.mark.parametrize("name", sorted(ATTACK_PRESETS))
def test_every_preset_batched_equals_per_image_and_keeps_range(name: str) -> None:
    attack = make_attack(name)
    x = images(4)
    y = attack(x)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    one_by_one = torch.cat([attack(x[i:i + 1]) for i in range(4)])
    assert torch.allclose(y, one_by_one, atol=1e-6)
    assert attack_from_dict(attack.to_dict()) == attack


def test_grey_images_supported() -> None:
    x = images(2, c=1, size=28)
    for name in ("restore_badnets_mnist", "restore_sig_mnist", "lred_pixel", "lred_local_chessboard", "wanet"):
        assert make_attack(name)(x).shape == x.shape


def test_bad_inputs_fail_with_one_line_messages() -> None:
    attack = make_attack("bdmae_badnets_colour")
    cases = [
        (lambda: attack(torch.rand(3, 32, 32)), "shape (N, C, H, W)"),
        (lambda: attack(torch.rand(1, 3, 32, 32) * 2), "[0, 1]"),
        (lambda: attack(torch.randint(0, 255, (1, 3, 32, 32), dtype=torch.uint8)), "floating point"),
        (lambda: attack(torch.rand(1, 3, 28, 28)), "outside a 28-pixel image"),
        (lambda: attack(torch.rand(1, 1, 32, 32)), "needs 3-channel images"),
        (lambda: make_attack("badnet"), "unknown attack 'badnet'"),
        (lambda: make_attack("blended", alpha=1.5), "alpha must be in (0, 1]"),
        (lambda: make_attack("badnets", colour="red"), "bad parameters"),
        (lambda: Additive(pattern="nope"), "unknown additive pattern"),
    ]
    for call, fragment in cases:
        with pytest.raises(WorkbenchError) as info:
            call()
        assert fragment in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UnknownNameError):
        make_attack("badnet")


def test_dynamic_badnets_moves_the_patch_between_images() -> None:
    attack = make_attack("restore_dynamic_badnets")
    x = images(40)
    y = attack(x)
    corners = set()
    for i in range(40):
        where = (y[i] != x[i]).any(dim=0).nonzero()
        top, left = where.min(dim=0).values.tolist()
        assert torch.equal(y[i, :, top:top + 3, left:left + 3], BDMAE_COLOUR_PATCH)
        assert torch.equal(y[i][:, (y[i] == x[i]).all(dim=0)], x[i][:, (y[i] == x[i]).all(dim=0)])
        corners.add((top, left))
    assert len(corners) > 30  # positions differ from image to image
    assert torch.equal(attack(x), y) and not torch.equal(attack.replace(position_seed=1)(x), y)


def test_smooth_trigger_is_low_frequency_and_rescales_each_image() -> None:
    attack = make_attack("tr_smooth")
    v = attack.perturbation(3, 32, 32)
    assert v.abs().max().item() == pytest.approx(0.25)

    def low_frequency_share(pattern: torch.Tensor) -> float:  # energy within 3 cycles per image of DC
        spectrum = torch.fft.fft2(pattern).abs() ** 2
        k = torch.fft.fftfreq(32, d=1 / 32).abs()
        return float(spectrum[:, (k[:, None] <= 3) & (k[None, :] <= 3)].sum() / spectrum.sum())

    assert low_frequency_share(v) > 0.8  # ~5 % of the frequency bins hold most of the energy
    assert low_frequency_share(make_attack("l2_invisible").perturbation(3, 32, 32)) < 0.2  # white noise: spread out
    x = torch.rand(5, 3, 32, 32) * 0.5 + 0.2
    out = attack(x)
    assert torch.allclose(out.amin(dim=(1, 2, 3)), torch.zeros(5)) and torch.allclose(out.amax(dim=(1, 2, 3)),
                                                                                       torch.ones(5))
    shifted = x + v
    expected = (shifted - shifted.amin(dim=(1, 2, 3), keepdim=True)) / (
        shifted.amax(dim=(1, 2, 3), keepdim=True) - shifted.amin(dim=(1, 2, 3), keepdim=True))
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(make_attack("tr_smooth", seed=1)(x), make_attack("tr_smooth", seed=1)(x))
    assert not torch.equal(make_attack("tr_smooth", seed=1).perturbation(3, 32, 32), v)
    with pytest.raises(WorkbenchError, match="grid must be at least 2"):
        make_attack("tr_smooth", grid=1)
