"""Masked autoencoder ([MAE]) with explicit per-image token masks, and the restoration of Eq. 1.

`MaskedAutoencoderViT` keeps the official implementation's parameter names (patch_embed.proj, cls_token,
pos_embed, blocks.N.*, norm, decoder_embed, mask_token, decoder_pos_embed, decoder_blocks.N.*, decoder_norm,
decoder_pred), so the official "visualize" checkpoints load from a local file (`load_official_mae`). Unlike the
official code it takes the token mask as an input (1 = masked) instead of drawing it, and images in one batch
may have different numbers of masked tokens: visible tokens are padded to the longest and padding is excluded
from attention, which keeps per-image semantics exactly.

Conventions ([BDMAE]'s public code; docs/implementation.md#bdmae-model-access-and-mae-input): the MAE sees images
resized bilinearly to its input size and normalised with the ImageNet mean/std; it predicts normalised pixels (no
norm-pix loss), which `restore` un-normalises, brings back to the data resolution with nearest interpolation and
pastes into the masked tokens.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from workbench.core.validation import (
    WorkbenchError,
    check_fraction,
    check_images,
    check_non_negative,
    check_positive,
    check_positive_int,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class MAEArchitecture:
    """Shape of a masked autoencoder. The official ViT-Base / ViT-Large "visualize" checkpoints are
    `MAE_BASE` / `MAE_LARGE`; the workbench's own tiny MAE is defined in `workbench.core.mae_training`."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            if f.name != "mlp_ratio":
                check_positive_int(getattr(self, f.name), f.name)
        check_positive(self.mlp_ratio, "mlp_ratio")
        if self.img_size % self.patch_size:
            raise WorkbenchError(f"MAE img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")
        for width, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            if getattr(self, width) % getattr(self, heads):
                raise WorkbenchError(f"MAE {width} {getattr(self, width)} is not a multiple of {heads} "
                                     f"{getattr(self, heads)}: each attention head takes an equal share")

    @property
    def grid(self) -> int:
        """Tokens per side."""
        return self.img_size // self.patch_size


MAE_BASE = MAEArchitecture(embed_dim=768, depth=12, num_heads=12)
MAE_LARGE = MAEArchitecture(embed_dim=1024, depth=24, num_heads=16)


def _sincos_position_embedding(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE): half the channels encode the row, half the column.

    Returns:
        (1, grid*grid (+1), dim); the class token's row is zeros.
    """
    if dim % 4:
        raise WorkbenchError(f"sin-cos position embeddings need a dimension divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    coords = torch.arange(grid, dtype=torch.float64)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * omega.view(1, -1)
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)

    # the official code embeds the grid's width coordinate first, then its height
    emb = torch.cat([encode(cols), encode(rows)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)


class MaskedAutoencoderViT(nn.Module):
    """MAE encoder/decoder with explicit token masks.

    Args:
        arch: the architecture (sizes).
    """

    def __init__(self, arch: MAEArchitecture) -> None:
        super().__init__()
        self.arch = arch
        num_patches = arch.grid**2
        self.patch_embed = PatchEmbed(arch.img_size, arch.patch_size, arch.in_chans, arch.embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.embed_dim))
        self.pos_embed = nn.Parameter(_sincos_position_embedding(arch.embed_dim, arch.grid), requires_grad=False)
        self.blocks = nn.ModuleList([
            Block(arch.embed_dim, arch.num_heads, arch.mlp_ratio, qkv_bias=True, norm_layer=_layer_norm)
            for _ in range(arch.depth)])
        self.norm = _layer_norm(arch.embed_dim)
        self.decoder_embed = nn.Linear(arch.embed_dim, arch.decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, arch.decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(_sincos_position_embedding(arch.decoder_embed_dim, arch.grid),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([
            Block(arch.decoder_embed_dim, arch.decoder_num_heads, arch.mlp_ratio, qkv_bias=True,
                  norm_layer=_layer_norm) for _ in range(arch.decoder_depth)])
        self.decoder_norm = _layer_norm(arch.decoder_embed_dim)
        self.decoder_pred = nn.Linear(arch.decoder_embed_dim, arch.patch_size**2 * arch.in_chans)
        self.num_patches = num_patches
        self._init_weights()

    def _init_weights(self) -> None:
        # as the official MAE: xavier-uniform linears and patch projection, N(0, 0.02) tokens, zero biases
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------------------------------ patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), patch order (row, col, pixel row, pixel col, channel)."""
        p, g, c = self.arch.patch_size, self.arch.grid, self.arch.in_chans
        x = imgs.reshape(imgs.shape[0], c, g, p, g, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(imgs.shape[0], g * g, p * p * c)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W); inverse of `patchify`."""
        p, g, c = self.arch.patch_size, self.arch.grid, self.arch.in_chans
        x = patches.reshape(patches.shape[0], g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(patches.shape[0], c, g * p, g * p)

    # ------------------------------------------------------------------------------------------- model
    def forward(self, imgs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Predict every patch from the visible ones.

        Args:
            imgs: ImageNet-normalised images (N, C, img_size, img_size).
            mask: (N, L) token mask, 1/True = masked (hidden from the encoder); any count per image.

        Returns:
            (N, L, p*p*C) predicted normalised pixels for every patch.
        """
        mask = mask.to(device=imgs.device, dtype=torch.bool)
        if mask.shape != (imgs.shape[0], self.num_patches):
            raise WorkbenchError(f"token mask must have shape (N, {self.num_patches}), got {tuple(mask.shape)}")
        visible_count = (~mask).sum(dim=1)  # 0 is allowed: the encoder then sees its class token only
        # visible tokens first (in raster order), then masked ones: stable sort of the mask
        ids_shuffle = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        longest = int(visible_count.max())
        ids_keep = ids_shuffle[:, :longest]
        slot = torch.arange(longest, device=imgs.device).view(1, -1)
        valid = slot < visible_count.view(-1, 1)  # (N, longest): False on padding slots

        x = self.patch_embed(imgs) + self.pos_embed[:, 1:]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        attend = torch.cat([valid.new_ones(x.shape[0], 1), valid], dim=1)  # keys that take part
        # an additive float mask (0 / -inf): timm versions differ in how they treat boolean masks
        attn_mask = None
        if not bool(valid.all()):
            bias = torch.zeros(attend.shape, dtype=x.dtype, device=x.device).masked_fill(~attend, float("-inf"))
            attn_mask = bias.view(x.shape[0], 1, 1, -1)
        for block in self.blocks:
            x = block(x, attn_mask=attn_mask)
        x = self.decoder_embed(self.norm(x))

        tokens = x[:, 1:]
        tokens = torch.where(valid.unsqueeze(-1), tokens, self.mask_token.to(tokens.dtype))
        fill = self.mask_token.expand(x.shape[0], self.num_patches - longest, -1)
        seq = torch.cat([tokens, fill], dim=1)
        seq = torch.gather(seq, 1, ids_restore.unsqueeze(-1).expand(-1, -1, seq.shape[-1]))
        x = torch.cat([x[:, :1], seq], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the masked patches (the MAE objective without norm-pix targets)."""
        per_patch = ((pred - self.patchify(imgs)) ** 2).mean(dim=-1)
        mask = mask.to(per_patch.dtype)
        return (per_patch * mask).sum() / mask.sum().clamp_min(1)


def _layer_norm(dim: int, **factory: object) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=1e-6, **factory)


# ------------------------------------------------------------------------------------------- masks
def random_token_masks(n: int, num_tokens: int, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """(n, num_tokens) boolean masks, each hiding round(ratio * num_tokens) uniformly chosen tokens."""
    check_non_negative(n, "n", integer=True)
    check_positive_int(num_tokens, "num_tokens")
    check_fraction(ratio, "ratio", allow_one=False)
    count = round(ratio * num_tokens)
    if not 0 < count < num_tokens:
        raise WorkbenchError(f"masking ratio {ratio} hides {count} of {num_tokens} tokens; use a ratio in (0, 1) "
                             "that hides at least one and keeps at least one")
    order = torch.argsort(torch.rand(n, num_tokens, generator=generator), dim=1)
    mask = torch.zeros(n, num_tokens, dtype=torch.bool)
    mask.scatter_(1, order[:, :count], True)
    return mask


# --------------------------------------------------------------------------------------- restoration
class MAERestorer:
    """Restoration with a generic MAE ([BDMAE] Eq. 1), batched over images and masks.

    `restore(x, token_mask)` resizes x to the MAE input (bilinear, align_corners=False), normalises it with
    the ImageNet statistics, predicts every patch, un-normalises, resizes back to the data resolution with
    nearest interpolation, and composites x (1 - m~) + x_bar m~ with the pixel mask m~ = the token mask
    expanded to pixels and resized the same way. The MAE output is not clipped (follows the authors' public
    code). Grey images are replicated to three channels for the MAE and averaged back.

    Args:
        mae: the masked autoencoder (its parameters are not trained here).
        batch_size: images per MAE forward pass.

    Attributes:
        restorations: images restored so far (cost accounting).
    """

    def __init__(self, mae: MaskedAutoencoderViT, batch_size: int = 128) -> None:
        self.mae = mae.eval()
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.restorations = 0
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    @property
    def grid(self) -> int:
        return self.mae.arch.grid

    @property
    def device(self) -> torch.device:
        return self.mae.cls_token.device

    def pixel_mask(self, token_mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(N, L) token mask -> (N, 1, H, W) float pixel mask at the data resolution (nearest)."""
        g, size = self.grid, self.mae.arch.img_size
        m = token_mask.float().view(-1, 1, g, g)
        m = F.interpolate(m, size=(size, size), mode="nearest")  # token -> pixels of the MAE input
        return F.interpolate(m, size=(height, width), mode="nearest")

    def _to_mae_size(self, x: torch.Tensor) -> torch.Tensor:
        size = self.mae.arch.img_size
        return x if x.shape[-2:] == (size, size) else F.interpolate(x, size=(size, size), mode="bilinear",
                                                                     align_corners=False)

    def _to_data_size(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return x if x.shape[-2:] == (height, width) else F.interpolate(x, size=(height, width), mode="nearest")

    def resample(self, x: torch.Tensor) -> torch.Tensor:
        """What a perfect MAE would give back: x through the resolution round trip of every restoration (bilinear
        up-sampling to the MAE's input size, nearest down-sampling back). (N, C, H, W)."""
        return self._to_data_size(self._to_mae_size(x), *x.shape[2:])

    @torch.no_grad()
    def predict(self, x: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """x_bar of Eq. 1: the MAE's full prediction (N, C, H, W) at the data resolution, unclipped.

        The images go through the MAE in order of their visible-token count, so that each forward pass pads
        its images to nearly the same length (the encoder's cost grows with the longest image of the pass)."""
        n, c, h, w = x.shape
        visible = (~token_mask.bool()).sum(dim=1).cpu()
        order = torch.argsort(visible, stable=True)
        out = torch.empty_like(x)
        for chunk in _length_chunks(visible[order], self.batch_size):
            rows = order[chunk]
            xb = x[rows.to(x.device)].to(self.device)
            mb = token_mask[rows.to(token_mask.device)].to(self.device)
            inp = self._to_mae_size(xb.expand(-1, 3, -1, -1) if c == 1 else xb)
            inp = (inp - self._mean.to(inp.device)) / self._std.to(inp.device)
            pred = self.mae.unpatchify(self.mae(inp, mb))
            pred = self._to_data_size(pred * self._std.to(pred.device) + self._mean.to(pred.device), h, w)
            out[rows.to(x.device)] = (pred.mean(dim=1, keepdim=True) if c == 1 else pred).to(x.device)
        self.restorations += n
        return out

    def restore(self, x: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[BDMAE] Eq. 1: (x~, m~) for images x (N, C, H, W) in [0, 1] and token masks (N, L), 1 = restore.

        Returns:
            x~ (N, C, H, W): x outside the mask, the MAE's prediction inside; m~ (N, 1, H, W) pixel mask.
        """
        check_images(x)
        if token_mask.shape != (x.shape[0], self.grid**2):
            raise WorkbenchError(f"token masks must have shape ({x.shape[0]}, {self.grid ** 2}) for this "
                                 f"{self.grid}x{self.grid}-token MAE, got {tuple(token_mask.shape)}")
        m = self.pixel_mask(token_mask, *x.shape[2:]).to(x.device)
        predicted = self.predict(x, token_mask)
        if not bool(torch.isfinite(predicted).all()):  # else BDMAE's scores turn NaN and restore nothing
            raise WorkbenchError("the restorer returned NaN or infinite pixels; check the MAE's weights "
                                 "(workbench.core.mae_training trains and verifies them)")
        return x * (1 - m) + predicted * m, m


def _length_chunks(lengths: torch.Tensor, batch_size: int, min_saving: float = 0.08) -> list[slice]:
    """Forward-pass chunks of ascending `lengths`: runs of at most `batch_size`, cut in two (recursively) where
    that saves more than `min_saving` of a run's padded tokens (rows x longest). A pass costs about its rows
    times its longest row plus a fixed overhead, so sorted runs whose lengths spread widely are cheaper split;
    the threshold stands for that overhead (on the tiny MAE it cut BDMAE's refinement restorations of 64
    images from 7.3 s to 6.0 s on 2 CPU threads)."""
    def split(start: int, stop: int) -> list[slice]:
        run = lengths[start:stop]
        if len(run) < 2:
            return [slice(start, stop)]
        saving = torch.arange(1, len(run)) * (run[-1] - run[:-1])  # padded tokens saved by cutting after row i
        cut = int(saving.argmax()) + 1
        if saving[cut - 1] <= min_saving * len(run) * run[-1]:
            return [slice(start, stop)]
        return split(start, start + cut) + split(start + cut, stop)

    return [part for start in range(0, len(lengths), batch_size)
            for part in split(start, min(start + batch_size, len(lengths)))]


def load_official_mae(path: str, arch: MAEArchitecture = MAE_BASE) -> MaskedAutoencoderViT:
    """Load an official MAE "visualize" checkpoint (ViT-Base or ViT-Large, patch 16, 224 px) from a local file.

    The file is read with `torch.load(weights_only=True)` (no code is unpickled); its state dict is under
    "model" (as published) or at the top level. Every parameter must match `arch`.
    """
    if not Path(path).is_file():
        raise WorkbenchError(f"no MAE checkpoint at path {path}: download the official checkpoint (see the README)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state)
    mae = MaskedAutoencoderViT(arch)
    missing, unexpected = mae.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise WorkbenchError(f"{path} does not fit {arch}: missing {sorted(missing)[:4]}..., unexpected "
                             f"{sorted(unexpected)[:4]}...; pass arch=MAE_LARGE for ViT-Large checkpoints")
    return mae.eval()


def neighbours4(grid: int) -> torch.Tensor:
    """(L, L) boolean adjacency of the 4-neighbourhood on a grid x grid token raster."""
    check_positive_int(grid, "grid")
    idx = torch.arange(grid * grid)
    rows, cols = idx // grid, idx % grid
    dr = (rows.view(-1, 1) - rows.view(1, -1)).abs()
    dc = (cols.view(-1, 1) - cols.view(1, -1)).abs()
    return (dr + dc) == 1

