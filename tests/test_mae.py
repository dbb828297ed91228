"""The MAE: official names and outputs, variable mask counts per batch, and the restoration of Eq. 1."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.reference_mae import ReferenceMAE
from workbench.core.mae import (
    MAEArchitecture,
    MAERestorer,
    MaskedAutoencoderViT,
    _length_chunks,
    load_official_mae,
    random_token_masks,
)
from workbench.core.validation import WorkbenchError

SMALL = MAEArchitecture(img_size=16, patch_size=4, in_chans=3, embed_dim=32, depth=2, num_heads=4,
                        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2, mlp_ratio=4.0)


def small_mae(seed: int = 0) -> MaskedAutoencoderViT:
    torch.manual_seed(seed)
    return MaskedAutoencoderViT(SMALL).eval()


def test_state_dict_from_independent_implementation_gives_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = ReferenceMAE(16, 4, 32, 2, 4, 16, 1, 2).eval()
    for p in reference.parameters():  # random weights everywhere, not just the initialisation
        p.data.normal_(0, 0.2)
    reference.pos_embed.data = ReferenceMAE(16, 4, 32, 2, 4, 16, 1, 2).pos_embed.data  # keep fixed embeddings
    reference.decoder_pos_embed.data = ReferenceMAE(16, 4, 32, 2, 4, 16, 1, 2).decoder_pos_embed.data
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": reference.state_dict()}, path)  # the official file layout
    mae = load_official_mae(str(path), SMALL)
    assert torch.allclose(mae.pos_embed, reference.pos_embed)  # our sin-cos equals the reference's
    fresh = MaskedAutoencoderViT(SMALL)
    assert torch.allclose(fresh.pos_embed, reference.pos_embed, atol=1e-6)
    assert torch.allclose(fresh.decoder_pos_embed, reference.decoder_pos_embed, atol=1e-6)

    imgs = torch.randn(3, 3, 16, 16)
    noise = torch.rand(3, 16)
    keep = 4
    mask = torch.ones(3, 16, dtype=torch.bool)
    mask.scatter_(1, torch.argsort(noise, dim=1)[:, :keep], False)
    with torch.no_grad():
        assert torch.allclose(mae(imgs, mask), reference(imgs, noise, keep), atol=1e-5)


def test_wrong_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.pth"
    torch.save({"model": {"something": torch.zeros(1)}}, path)
    with pytest.raises(WorkbenchError, match="does not fit"):
        load_official_mae(str(path), SMALL)


def test_variable_mask_counts_keep_per_image_semantics() -> None:
    mae = small_mae()
    imgs = torch.randn(4, 3, 16, 16)
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([random_token_masks(1, 16, ratio, gen)[0] for ratio in (0.25, 0.5, 0.75, 0.9)])
    masks[3] = True  # everything hidden: the encoder sees only its class token (as the official MAE at ratio 1)
    with torch.no_grad():
        batched = mae(imgs, masks)
        single = torch.cat([mae(imgs[i:i + 1], masks[i:i + 1]) for i in range(4)])
    assert torch.allclose(batched, single, atol=1e-5)


def test_restorer_sorts_by_visible_count_and_keeps_each_image_in_place() -> None:
    restorer = MAERestorer(small_mae(), batch_size=3)
    x = torch.rand(7, 3, 16, 16)
    gen = torch.Generator().manual_seed(1)
    masks = torch.stack([random_token_masks(1, 16, r, gen)[0] for r in (0.9, 0.1, 0.5, 0.25, 0.75, 0.1, 0.9)])
    batched = restorer.predict(x, masks)
    single = torch.cat([restorer.predict(x[i:i + 1], masks[i:i + 1]) for i in range(7)])
    assert torch.allclose(batched, single, atol=1e-5)
    assert restorer.restorations == 14


def test_length_chunks_cut_widely_spread_runs_only() -> None:
    # equal lengths: plain runs of batch_size
    assert _length_chunks(torch.full((5,), 10), 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    # two clusters: cutting after the short ones saves 4 x (100 - 10) of 8 x 100 padded tokens
    lengths = torch.tensor([10, 10, 10, 10, 100, 100, 100, 100])
    assert _length_chunks(lengths, 8) == [slice(0, 4), slice(4, 8)]
    # a small spread is not worth a second pass
    assert _length_chunks(torch.tensor([96, 97, 98, 100]), 8) == [slice(0, 4)]


def test_patchify_round_trip_and_loss_on_masked_only() -> None:
    mae = small_mae()
    imgs = torch.randn(2, 3, 16, 16)
    assert torch.equal(mae.unpatchify(mae.patchify(imgs)), imgs)
    patches = mae.patchify(imgs)
    assert torch.equal(patches[0, 5], imgs[0, :, 4:8, 4:8].permute(1, 2, 0).reshape(-1))  # token (1, 1)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, 0] = True
    pred = patches.clone()
    pred[:, 1:] += 5  # errors on visible patches do not count
    assert mae.loss(imgs, pred, mask) == 0


def test_restore_keeps_visible_pixels_and_maps_tokens_to_pixels() -> None:
    restorer = MAERestorer(small_mae())
    x = torch.rand(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, 0] = True  # token (0, 0) = pixels 0-7 x 0-7 of a 32 px image on a 4 x 4 grid
    restored, pixel = restorer.restore(x, mask)
    assert torch.equal(restored[1], x[1]) and torch.equal(pixel[1], torch.zeros_like(pixel[1]))
    assert int(pixel[0].sum()) == 64 and bool(pixel[0, 0, :8, :8].all())
    assert torch.equal(restored[0, :, 8:, :], x[0, :, 8:, :])
    assert not torch.equal(restored[0, :, :8, :8], x[0, :, :8, :8])
    assert restorer.restorations == 2
    grey, _ = restorer.restore(torch.rand(1, 1, 28, 28), mask[:1])
    assert grey.shape == (1, 1, 28, 28)
    with pytest.raises(WorkbenchError, match="token masks must have shape"):
        restorer.restore(x, torch.zeros(2, 9, dtype=torch.bool))


def test_random_masks_hide_the_requested_count() -> None:
    masks = random_token_masks(5, 196, 0.75, torch.Generator().manual_seed(0))
    assert masks.sum(dim=1).tolist() == [147] * 5
    with pytest.raises(WorkbenchError, match="masking ratio"):
        random_token_masks(1, 4, 0.01, torch.Generator())
