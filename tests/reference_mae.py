"""An independently written MAE with the official parameter names and the official forward structure
(random masking by sorted noise, fixed number of kept tokens, un-shuffling by ids_restore). Used only to
check that `workbench.core.mae.MaskedAutoencoderViT` loads such a state dict and computes the same thing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block


def _sincos_1d(dim: int, positions: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.einsum("m,d->md", positions.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid: int) -> np.ndarray:
    cols, rows = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    emb = np.concatenate([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], axis=1)
    return np.concatenate([np.zeros((1, dim)), emb], axis=0)


class ReferenceMAE(nn.Module):
    def __init__(self, img: int, patch: int, dim: int, depth: int, heads: int, ddim: int, ddepth: int,
                 dheads: int) -> None:
        super().__init__()
        self.patch, self.grid = patch, img // patch
        norm = lambda d, **kw: nn.LayerNorm(d, eps=1e-6, **kw)  # noqa: E731
        self.patch_embed = PatchEmbed(img, patch, 3, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.from_numpy(sincos_2d(dim, self.grid)).float().unsqueeze(0),
                                      requires_grad=False)
        self.blocks = nn.ModuleList([Block(dim, heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(depth)])
        self.norm = norm(dim)
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, ddim) * 0.02)
        self.decoder_pos_embed = nn.Parameter(torch.from_numpy(sincos_2d(ddim, self.grid)).float().unsqueeze(0),
                                              requires_grad=False)
        self.decoder_blocks = nn.ModuleList([Block(ddim, dheads, 4.0, qkv_bias=True, norm_layer=norm)
                                             for _ in range(ddepth)])
        self.decoder_norm = norm(ddim)
        self.decoder_pred = nn.Linear(ddim, patch * patch * 3)

    def forward(self, imgs: torch.Tensor, noise: torch.Tensor, keep: int) -> torch.Tensor:
        """Official-style forward: keep the `keep` tokens with the smallest noise."""
        n = imgs.shape[0]
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        x = torch.gather(x, 1, ids_shuffle[:, :keep].unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([(self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1), x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))
        fill = self.mask_token.repeat(n, ids_restore.shape[1] + 1 - x.shape[1], 1)
        rest = torch.cat([x[:, 1:, :], fill], dim=1)
        rest = torch.gather(rest, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], rest], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]
