"""The backbone: a timm feature extractor (``features_only=True``) and optional per-stage LayerNorm."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import timm
import torch
from timm.layers import LayerNorm2d
from torch import nn

from hdmap_seg.errors import HdmapError
from hdmap_seg.models.window_attention import mask_window_padding

log = logging.getLogger(__name__)

#: keyword arguments of timm's feature wrapper that the plain (classifier) model does not take
_FEATURE_ONLY_KWARGS = ("out_indices", "feature_cls", "output_fmt")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a .pth / .pt / .safetensors file, official Twins layout (``{"model": sd}``) or timm's plain one.

    timm's reader unwraps ``model`` / ``state_dict`` / EMA entries and ``module.`` prefixes and loads
    with ``weights_only=True``. Raises :class:`HdmapError` naming the file when it is missing or holds
    no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise HdmapError(f"{path}: weights file not found")
    try:
        state_dict = timm.models.load_state_dict(str(path), weights_only=True)
    # torch.load, safetensors and timm raise many types for a file that is no checkpoint
    except Exception as err:
        raise HdmapError(
            f"{path}: is no checkpoint; expected a state dict, plain or under 'model' or 'state_dict', in a "
            f".pth, .pt or .safetensors file ({type(err).__name__}: {err})"
        ) from None
    not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise HdmapError(
            f"{path}: is no state dict (entries that are no tensors: {', '.join(not_tensors[:5])})"
        )
    if not state_dict:
        raise HdmapError(f"{path}: is no state dict (it is empty)")
    return state_dict


def check_state_dict(
    state_dict: dict[str, torch.Tensor], backbone: str, backbone_kwargs: dict[str, Any], path: str | Path
) -> dict[str, torch.Tensor]:
    """Compare a checkpoint with timm's ``backbone`` (built on the meta device); return it without the head.

    Logs missing and unexpected keys. Raises :class:`HdmapError` naming ``path`` on mismatched shapes or
    when no key matches (a checkpoint of another model).
    """
    kwargs = {k: v for k, v in backbone_kwargs.items() if k not in _FEATURE_ONLY_KWARGS}
    reference = timm.create_model(backbone, device="meta", **kwargs)
    classifier = reference.pretrained_cfg.get("classifier") or ()
    head_prefixes = tuple(
        f"{name}." for name in ((classifier,) if isinstance(classifier, str) else classifier)
    )
    expected = {k: v.shape for k, v in reference.state_dict().items() if not k.startswith(head_prefixes)}

    dropped = [k for k in state_dict if k.startswith(head_prefixes)]
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head_prefixes)}
    mismatched = [
        f"{k} {tuple(v.shape)} (model {tuple(expected[k])})"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k]
    ]
    if mismatched:
        raise HdmapError(
            f"{path}: {len(mismatched)} tensors do not fit {backbone}: {'; '.join(mismatched[:3])}"
            " (a checkpoint of another width or variant?)"
        )
    if not expected.keys() & state_dict.keys():
        raise HdmapError(
            f"{path}: no tensor of {backbone} found (first keys: {', '.join(list(state_dict)[:3])})"
        )
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    if dropped:
        log.info("%s: dropped the classifier head (%s)", path, ", ".join(dropped))
    if missing:
        log.warning("%s: %d missing keys keep their random init: %s", path, len(missing), ", ".join(missing))
    if unexpected:
        log.warning("%s: %d unexpected keys ignored: %s", path, len(unexpected), ", ".join(unexpected))
    return state_dict


class Backbone(nn.Module):
    """timm's ``features_only`` model for ``name`` and, with ``extra_norm``, a LayerNorm on every stage output.

    ``forward``: (B, 3, H, W) -> [(B, C_i, H / r_i, W / r_i)] with ``C_i = self.channels[i]`` and
    ``r_i = self.reductions[i]``; H and W must be multiples of ``max(self.reductions)`` (the Segmenter pads).
    timm's window attention (Twins LSA) is replaced by :class:`MaskedLocallyGroupedAttn`.

    Weights: ``pretrained`` asks timm's hub; ``weights`` is a local file (see :func:`read_state_dict`).
    The extra norms are not in ImageNet checkpoints and start fresh, as in the official code.
    """

    def __init__(
        self,
        name: str,
        extra_norm: bool = False,
        pretrained: bool = False,
        weights: str | Path | None = None,
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        if not timm.is_model(name):
            raise HdmapError(f"unknown timm model {name!r} (see timm.list_models())")
        if pretrained and weights:
            raise HdmapError("choose one of pretrained=true (timm's hub) and weights=PATH (a local file)")
        if weights:
            state_dict = check_state_dict(read_state_dict(weights), name, timm_kwargs, weights)
            # timm loads into the classifier model before wrapping it, dropping the head and running
            # the model's own checkpoint filter, exactly as for its hub weights
            timm_kwargs = {**timm_kwargs, "pretrained_cfg_overlay": {"state_dict": state_dict}}
        try:
            self.encoder = timm.create_model(
                name, features_only=True, pretrained=pretrained or bool(weights), **timm_kwargs
            )
        except OSError as err:  # no connection to the hub, or its cache is missing
            raise HdmapError(
                f"could not fetch pretrained weights for {name} from timm's hub ({err}); offline, download "
                "them elsewhere and pass model.weights=PATH"
            ) from None
        except RuntimeError as err:
            if weights:
                raise HdmapError(f"{weights}: cannot be loaded into {name}: {err}") from None
            raise
        if weights:
            # timm keeps its pretrained config, here with a copy of the whole state dict: let it go
            for module in self.encoder.modules():
                getattr(module, "pretrained_cfg", {}).pop("state_dict", None)
        mask_window_padding(self.encoder)
        self.channels: list[int] = self.encoder.feature_info.channels()
        self.reductions: list[int] = self.encoder.feature_info.reduction()
        # swin returns NHWC maps; some feature wrappers (EfficientNet's) have no output_fmt: NCHW
        self.channels_last = getattr(self.encoder, "output_fmt", "NCHW") == "NHWC"
        self.norms = nn.ModuleList([LayerNorm2d(c) if extra_norm else nn.Identity() for c in self.channels])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = self.encoder(x)
        if self.channels_last:
            features = [f.permute(0, 3, 1, 2) for f in features]
        return [norm(f) for norm, f in zip(self.norms, features, strict=True)]
