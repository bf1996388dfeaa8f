"""Registry of named segmenters; ``conf/model/<name>.yaml`` holds the same settings for Hydra."""

from __future__ import annotations

from typing import Any

from hdmap_seg.models.segmenter import Segmenter

#: name -> Segmenter arguments (besides num_classes). tests/test_models.py checks that every
#: conf/model/<name>.yaml says the same.
MODEL_ZOO: dict[str, dict[str, Any]] = {
    "twins_svt_s": {"backbone": "twins_svt_small"},
    "twins_svt_b": {"backbone": "twins_svt_base"},
    "twins_svt_l": {"backbone": "twins_svt_large"},
    "twins_pcpvt_s": {"backbone": "twins_pcpvt_small"},
    "twins_pcpvt_b": {"backbone": "twins_pcpvt_base"},
    "twins_pcpvt_l": {"backbone": "twins_pcpvt_large"},
    # 2.5 M parameters: SVT at half of SVT-S's widths with two blocks (LSA + GSA) per stage, for CPUs
    "twins_svt_tiny": {
        "backbone": "twins_svt_small",
        "embed_dim": 64,
        "backbone_kwargs": {
            "embed_dims": [32, 64, 128, 256],
            "num_heads": [1, 2, 4, 8],
            "depths": [2, 2, 2, 2],
        },
    },
    # other timm backbones, for comparisons
    "pvt_v2_b0": {"backbone": "pvt_v2_b0"},
    "convnext_atto": {"backbone": "convnext_atto"},
    "resnet18": {"backbone": "resnet18", "backbone_kwargs": {"out_indices": [1, 2, 3, 4]}},  # strides 4..32
    "swin_t": {"backbone": "swin_tiny_patch4_window7_224", "backbone_kwargs": {"dynamic_img_size": True}},
}


def list_models() -> list[str]:
    """Names of the registered segmenters (the files in ``conf/model/``)."""
    return sorted(MODEL_ZOO)


def create_model(name: str, num_classes: int, **overrides: Any) -> Segmenter:
    """Build the registered segmenter ``name``; ``overrides`` replace its Segmenter arguments."""
    if name not in MODEL_ZOO:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    return Segmenter(num_classes=num_classes, **{**MODEL_ZOO[name], **overrides})
