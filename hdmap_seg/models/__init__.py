"""Segmentation models: timm backbones (Twins first) with the light decoder.

Public API: :class:`Segmenter` (what ``conf/model/*.yaml`` builds), :func:`list_models` and
:func:`create_model`, :func:`model_config` (the registry: the files of ``conf/model/``), :class:`Backbone`, :class:`LightHead`,
:func:`read_state_dict`.
"""

from hdmap_seg.models.backbone import Backbone, read_state_dict
from hdmap_seg.models.head import LightHead
from hdmap_seg.models.segmenter import Segmenter
from hdmap_seg.models.window_attention import MaskedLocallyGroupedAttn
from hdmap_seg.models.zoo import create_model, list_models, model_config

__all__ = [
    "Backbone",
    "LightHead",
    "MaskedLocallyGroupedAttn",
    "Segmenter",
    "create_model",
    "list_models",
    "model_config",
    "read_state_dict",
]
