"""Twins' locally-grouped self-attention (LSA) with the window padding masked out.

timm's ``LocallyGroupedAttn`` zero-pads the token map to a multiple of the window size and lets every
token attend to that padding (the "padding" variant of the official code). The official segmentation
code masks the padding instead, but builds its mask with ``mask[:, -pad_b:, :]``: when ``pad_b == 0``
that slice is the whole map, so masking silently switches off whenever only one axis is padded. Here
the real tokens are marked by slicing from the start (``[:H, :W]``), which is right for any padding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.twins import LocallyGroupedAttn
from torch import nn


class MaskedLocallyGroupedAttn(nn.Module):
    """LSA whose padded tokens are never attended to; takes over the weights of a timm LSA module.

    The submodules keep timm's names (``qkv``, ``proj``), so checkpoints load unchanged. Without
    padding (H and W multiples of ``ws``) the result equals timm's.
    """

    def __init__(self, src: LocallyGroupedAttn) -> None:
        super().__init__()
        self.num_heads = src.num_heads
        self.ws = src.ws
        self.qkv = src.qkv
        self.attn_drop = src.attn_drop
        self.proj = src.proj
        self.proj_drop = src.proj_drop

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(B, H*W, C) tokens of an H x W map -> (B, H*W, C)."""
        B, N, C = x.shape
        H, W = size
        ws = self.ws
        pad_b, pad_r = -H % ws, -W % ws
        x = F.pad(x.view(B, H, W, C), (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        nh, nw = Hp // ws, Wp // ws
        # one row of ws*ws tokens per window: (B, nh*nw, ws*ws, C)
        x = x.view(B, nh, ws, nw, ws, C).transpose(2, 3).reshape(B, nh * nw, ws * ws, C)
        # q, k, v: (B*windows, heads, ws*ws, C // heads); 4-D so that CUDA's fused kernels accept them
        qkv = self.qkv(x).view(B * nh * nw, ws * ws, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        key_mask = None
        # While exporting, shapes are symbolic: the mask must be in the graph for every size.
        if pad_b or pad_r or torch.onnx.is_in_onnx_export():
            real = torch.zeros(Hp, Wp, dtype=torch.bool, device=x.device)
            real[:H, :W] = True
            # (B*windows, 1, 1, ws*ws): True where the key is a real token. Every window starts inside
            # the map (padding < ws), so no query is left without a key.
            key_mask = real.view(nh, ws, nw, ws).transpose(1, 2).reshape(1, nh * nw, 1, 1, ws * ws)
            key_mask = key_mask.expand(B, -1, -1, -1, -1).reshape(B * nh * nw, 1, 1, ws * ws)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=key_mask, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        x = x.view(B, nh, nw, self.num_heads, ws, ws, C // self.num_heads)
        x = x.permute(0, 1, 4, 2, 5, 3, 6).reshape(B, Hp, Wp, C)
        x = x[:, :H, :W].reshape(B, N, C)
        return self.proj_drop(self.proj(x))


def mask_window_padding(model: nn.Module) -> int:
    """Replace every timm ``LocallyGroupedAttn`` inside ``model`` by the masked version; return how many."""
    targets = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, LocallyGroupedAttn)
    ]
    for parent, name in targets:
        setattr(parent, name, MaskedLocallyGroupedAttn(getattr(parent, name)))
    return len(targets)
