"""From label masks to map layers: per-frame instances, multi-frame fusion, layer config."""

from hdmap_seg.vectorize.builder import MapBuilder, vectorize_log
from hdmap_seg.vectorize.config import VectorizeConfig, load_vectorize_config

__all__ = [
    "MapBuilder",
    "VectorizeConfig",
    "load_vectorize_config",
    "vectorize_log",
]
