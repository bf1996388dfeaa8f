"""Segmentation models: timm backbones (Twins first) with the light decoder.

Public API: :class:`Segmenter` (what ``conf/model/*.yaml`` builds), :func:`list_models` and
:func:`create_model` (the registry of named configs), :class:`Backbone`, :class:`LightHead`,
:func:`read_state_dict`.
"""

from hdmap_seg.models.backbone import Backbone, read_state_dict
from hdmap_seg.models.head import LightHead
from hdmap_seg.models.segmenter import Segmenter
from hdmap_seg.models.window_attention import MaskedLocallyGroupedAttn
from hdmap_seg.models.zoo import MODEL_ZOO, create_model, list_models

__all__ = [
    "MODEL_ZOO",
    "Backbone",
    "LightHead",
    "MaskedLocallyGroupedAttn",
    "Segmenter",
    "create_model",
    "list_models",
    "read_state_dict",
]
