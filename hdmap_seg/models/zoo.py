"""Registry of named segmenters: the files of ``conf/model/``, so Hydra and Python build the same models."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from hdmap_seg.models.segmenter import Segmenter
from hdmap_seg.paths import CONF_DIR

MODEL_CONF_DIR = CONF_DIR / "model"
# Keys of a model file that are Hydra's or come from elsewhere (num_classes is the data set's).
_NOT_ARGUMENTS = ("_target_", "_convert_", "num_classes")


def list_models() -> list[str]:
    """Names of the registered segmenters (the files in ``conf/model/``)."""
    return sorted(p.stem for p in MODEL_CONF_DIR.glob("*.yaml"))


def model_config(name: str) -> dict[str, Any]:
    """The Segmenter arguments (besides num_classes) of ``conf/model/<name>.yaml``."""
    path = MODEL_CONF_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(list_models())}")
    config = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    return {k: v for k, v in config.items() if k not in _NOT_ARGUMENTS}


def create_model(name: str, num_classes: int, **overrides: Any) -> Segmenter:
    """Build the registered segmenter ``name``; ``overrides`` replace its Segmenter arguments."""
    return Segmenter(num_classes=num_classes, **{**model_config(name), **overrides})
