"""Vectorization settings: which mask classes feed which map layer, ranges, fusion parameters.

``conf/vectorize/road.yaml`` is the instance for the project's taxonomy, and the dataclass defaults
below equal it. Masks in a data set's own classes (a model trained on CamVid's 11) feed the same
layers through the class map that training reads (:func:`layer_classes`, :func:`for_mask_classes`;
a model's checkpoint names its classes: :func:`model_vectorize_config`). Every field is documented
in docs/map.md.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hdmap_seg import paths
from hdmap_seg.data.class_map import ClassMap, load_class_map
from hdmap_seg.data.classes import ROAD_CLASSES
from hdmap_seg.errors import HdmapError
from hdmap_seg.io import yaml_error
from hdmap_seg.maplayers import LAYER_CLASS

#: The classes that feed a layer, keys of ``classes`` (one builder each).
FEEDING_CLASSES = tuple(LAYER_CLASS.values())
GROUND_MODELS = ("trajectory", "plane")
CONF_DIR = paths.CONF_DIR / "vectorize"


@dataclass
class PoleConfig:
    min_pixels: int = 12  # smaller connected components are noise
    min_height_px: int = 8  # a pole instance must be at least this tall in the image
    min_width_px: int = 2  # ... and this wide (the 0.1 m pole at 30 m is 2.4 px)
    split_fraction: float = 0.3  # columns with fewer pixels than this x the tallest column split instances
    split_base_jump_px: int = 4  # adjacent columns whose bottoms differ by more belong to different poles
    sigma_row_px: float = 3.0  # noise of the base row: a model's masks (decoder at 1/4 scale) put it px off
    sigma_col_px: float = 1.0  # noise of the axis column, averaged over the base rows' pixels
    # A pole's base rows may err alike in every frame (the same blur of the same mask): the final
    # fit solves for that common offset (this is its prior sigma), where the bearings can tell it.
    base_bias_px: float = 4.0
    # The drive's surface beside the path is a guess (a kerb, a level sidewalk past the cross slope):
    # the final fit solves for the base's height above it too (this is its prior sigma).
    base_height_sigma_m: float = 0.15  # a kerb's height
    sigma_floor_m: float = 0.05  # pose noise floor of one observation
    gate_m: float = 0.5  # model error added to the association gate
    min_obs: int = 5  # a pole seen in fewer frames is rejected (at 10 Hz one in range is seen in 20+)
    max_obs_kept: int = 32  # nearest views kept per pole for the final fit (bounded state)
    retire_after_frames: int = 20  # a track unseen for this many frames is finished (bounded state)
    merge_radius_m: float = 0.5  # finished poles closer than this are one (drives that loop back)


@dataclass
class SignConfig:
    min_pixels: int = 12
    size_prior_m: float = 0.9  # typical plate size, for the first guess of a sign's distance
    sigma_px: float = 1.0  # centroid noise
    sigma_floor_m: float = 0.05
    min_obs: int = 4  # a sign kept in fewer views is rejected (a model's masks flicker: one-off blobs)
    retire_after_frames: int = 10
    max_obs_kept: int = 16  # nearest views kept per sign for its facing and size (bounded state)
    min_parallax_deg: float = 2.0  # a sign's rays must span at least this angle to be triangulated
    max_rms_sigma: float = (
        3.0  # views farther from a sign's point (in sigmas) are outliers; the rest within (RMS)
    )
    merge_radius_m: float = 0.5
    # A sign whose position is less sure than this (1-sigma along its least certain direction, the
    # published sigma_m) is left out: the map promises a metre, and such tracks are mostly fragments
    # of one plate seen over a few frames, or far-ahead views with little parallax.
    max_sigma_m: float = 1.0


@dataclass
class MedianConfig:
    min_pixels: int = 20  # median parts and holes smaller than this in the image are speckle
    cell_m: float = 0.1  # vote grid resolution on the ground
    tile_cells: int = 256  # vote tiles are tile_cells x tile_cells; far-behind tiles are polygonised
    surface_height_m: float = 0.0  # height of the median's top above the road surface
    vote_fraction: float = 0.5  # a cell is median if at least this fraction of the frames that saw it say so
    min_votes: int = 2  # ... and at least this many
    retire_after_frames: int = 40
    close_m: float = 0.3  # morphological closing of the merged footprint
    simplify_m: float = 0.1
    min_area_m2: float = 2.0


@dataclass
class LaneMarkingConfig:
    # Paint farther from the camera is left out: 0.15 m of error in the ground's height beside the
    # path (a crowned far carriageway) moves a point 2.7 m along the ray at 30 m, 1.8 m at 20 m.
    max_range_m: float = 20.0
    min_pixels: int = 6  # marking parts smaller than this in the image are speckle (a far dash is a few px)
    # Finer than the medians' grid: a marking is 0.10-0.20 m wide, and its width is measured on the grid.
    cell_m: float = 0.05
    tile_cells: int = 512
    # A cell is paint if at least this fraction of the frames that saw it say so, and this many: lower
    # than the medians' since traffic hides the far lines in most frames (the grid's "seen" is the
    # ground within range, hidden or not).
    vote_fraction: float = 0.2
    min_votes: int = 3
    retire_after_frames: int = 40
    simplify_m: float = 0.05
    min_length_m: float = 0.5  # shorter painted strokes are speckle
    # Pieces up to this long are dashes, chained across gaps into one dashed line; longer ones are
    # solid lines, never joined across a gap (a solid line broken by a median opening is two lines).
    max_dash_m: float = 10.0
    max_gap_m: float = 30.0  # longest gap between the dashes of one line: one dash may be missing
    max_offset_m: float = 0.5  # a dash's end may lie this far beside the line of the one before
    max_turn_deg: float = 20.0  # ... and turn this much from it


@dataclass
class GroundConfig:
    # trajectory: the road surface from the drive's poses; plane: level under the car
    model: str = "trajectory"
    height_window_m: float = 9.0  # the path's height is smoothed over this length (quadratic: keeps crests)
    cross_window_m: float = 31.0  # the cross slope (from roll) over this length: body roll is not the road's
    cross_reach_m: float = 6.0  # the cross slope holds this far beside the path; beyond, level across
    # Past the drive's ends the ground is a guess: medians and coverage stop this far out.
    extrapolate_m: float = 10.0


@dataclass
class PoseConfig:
    smooth: bool = True  # smooth the drive's poses (GNSS with the unit's velocities) before mapping
    max_jump_m: float = 2.0  # GNSS jumps larger than this are reported and left out of the fit and the ground
    # Noise of the poses as mapping uses them, added to every view (1 sigma: metres per horizontal
    # axis, degrees of heading). With smooth: true the smoother's estimate of what it leaves replaces them.
    sigma_m: float = 0.0
    sigma_yaw_deg: float = 0.0

    @property
    def sigma_yaw_rad(self) -> float:
        return float(np.radians(self.sigma_yaw_deg))

    def floor_m(self, sigma_floor_m: float) -> float:
        """A view's position noise that no range scales: a layer's ``sigma_floor_m`` and the pose's."""
        return float(np.hypot(sigma_floor_m, self.sigma_m))

    def across_ray_sigma_m(
        self, range_m: np.ndarray, focal_px: float, sigma_px: float, sigma_floor_m: float
    ) -> np.ndarray:
        """1-sigma of a view's position across its ray at ``range_m``: the image's ``sigma_px`` and the
        heading's error grow with the range; the floor (:meth:`floor_m`) does not."""
        angular = np.hypot(sigma_px / focal_px, self.sigma_yaw_rad)
        return np.hypot(np.asarray(range_m) * angular, self.floor_m(sigma_floor_m))


@dataclass
class VectorizeConfig:
    #: layer -> mask class ids that feed it
    classes: dict[str, list[int]] = field(
        default_factory=lambda: {"pole": [4], "sign": [5], "median": [3], "lane_marking": [2]}
    )
    ignore_index: int = 255
    #: masks hold class ids 0..num_classes-1 and ignore_index, any other value is an error;
    #: None: see :meth:`mask_class_count`
    num_classes: int | None = None
    max_range_m: float = 30.0  # only ground within this distance of the camera counts
    pole: PoleConfig = field(default_factory=PoleConfig)
    sign: SignConfig = field(default_factory=SignConfig)
    median: MedianConfig = field(default_factory=MedianConfig)
    lane_marking: LaneMarkingConfig = field(default_factory=LaneMarkingConfig)
    ground: GroundConfig = field(default_factory=GroundConfig)
    pose: PoseConfig = field(default_factory=PoseConfig)

    def __post_init__(self) -> None:
        if self.ground.model not in GROUND_MODELS:
            raise HdmapError(
                f"vectorize config: ground.model must be one of {list(GROUND_MODELS)}, got {self.ground.model!r}"
            )
        unknown = sorted(set(self.classes) - set(FEEDING_CLASSES))
        if unknown:
            raise HdmapError(
                f"vectorize config: no layer builder for {unknown}; layers are {list(FEEDING_CLASSES)}"
            )
        if not 0 <= self.ignore_index <= 255:
            raise HdmapError(f"vectorize config: ignore_index must be 0..255, got {self.ignore_index}")
        for layer, ids in self.classes.items():
            if any(not 0 <= int(i) <= 254 for i in ids):
                raise HdmapError(f"vectorize config: class ids of {layer} must be 0..254, got {list(ids)}")
            if self.ignore_index in ids:
                raise HdmapError(f"vectorize config: {layer} uses the ignore index {self.ignore_index}")
        if self.max_range_m <= 0:
            raise HdmapError("vectorize config: max_range_m must be positive")
        if self.num_classes is not None:
            if not 1 <= self.num_classes <= 255:
                raise HdmapError(f"vectorize config: num_classes must be 1..255, got {self.num_classes}")
            beyond = {
                layer: ids for layer, ids in self.classes.items() if max(ids, default=0) >= self.num_classes
            }
            if beyond:
                raise HdmapError(
                    f"vectorize config: class ids {beyond} are beyond num_classes {self.num_classes}"
                )

    def mask_class_count(self) -> int | None:
        """How many classes the masks hold (ids ``0..n-1``, ``ignore_index`` besides): ``num_classes``, or
        unset, the project's taxonomy's 6 when the layers take its ids (pole 4, sign 5, median 3, lane_marking 2); None
        when not known (masks of another taxonomy through a class map): their values are not checked."""
        if self.num_classes is not None:
            return self.num_classes
        own = layer_classes(ROAD_CLASSES.names)
        if all(sorted(int(i) for i in ids) == own.get(layer) for layer, ids in self.classes.items()):
            return ROAD_CLASSES.num_classes
        return None

    @classmethod
    def from_dict(cls, data: dict, source: str = "<dict>") -> VectorizeConfig:
        """Validate a mapping (a YAML file, a Hydra node) against the dataclasses."""
        data = dict(data)
        classes = data.pop("classes", None)
        try:
            merged = OmegaConf.merge(OmegaConf.structured(cls), OmegaConf.create(data))
            if classes is not None:  # replaced, not merged: a config lists exactly the layers it feeds
                merged.classes = classes
            return OmegaConf.to_object(merged)
        except OmegaConfBaseException as err:
            raise HdmapError(f"{source}: {str(err).splitlines()[0]}") from None


def load_vectorize_config(name_or_path: str | os.PathLike, overrides: list[str] = ()) -> VectorizeConfig:
    """A config by name (``road``, ``camvid``: conf/vectorize/<name>.yaml) or path, with ``key=value`` overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONF_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        named = sorted(p.stem for p in CONF_DIR.glob("*.yaml")) if CONF_DIR.is_dir() else []
        raise HdmapError(f"{path}: vectorize config not found (named configs: {named})")
    try:
        data = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    except yaml.YAMLError as err:
        raise HdmapError(yaml_error(path, err)) from None
    except OmegaConfBaseException as err:
        raise HdmapError(f"{path}: {str(err).splitlines()[0]}") from None
    return VectorizeConfig.from_dict(OmegaConf.to_container(data), source=str(path))


def layer_classes(names: Sequence[str], class_map: ClassMap | None = None) -> dict[str, list[int]]:
    """The mask ids that feed each layer, from the masks' class names in id order.

    A class feeds the layer of its name (``pole``, ``sign``, ``median``, ``lane_marking``: the
    project's taxonomy).
    Native names (CamVid's ``Pole``, Vistas' ``object--support--pole``) go through ``class_map``
    first, the file training reads (conf/class_map/*.yaml), so that a model trained on a data set's
    own classes writes the same layers. Raises when no class feeds any layer.
    """
    if class_map is not None:
        target = class_map.target.names  # ids are contiguous; the ignore index maps to no layer
        names = [target[t] if t < len(target) else "" for t in class_map.lut[: len(names)].tolist()]
    out = {layer: [i for i, n in enumerate(names) if n == layer] for layer in FEEDING_CLASSES}
    out = {layer: ids for layer, ids in out.items() if ids}
    if not out:
        hint = "" if class_map is not None else " (masks in a data set's own classes need its class map)"
        raise HdmapError(f"no class of {list(names)} feeds a map layer {list(FEEDING_CLASSES)}{hint}")
    return out


def for_mask_classes(
    config: VectorizeConfig, names: Sequence[str], class_map: ClassMap | None = None
) -> VectorizeConfig:
    """``config`` for masks of the classes ``names`` (in id order): a model's, or a data set's own.

    The layers' ids come from the names (:func:`layer_classes`, through ``class_map`` for a data
    set's own classes) and ``num_classes`` is their count, so that a mask value that is no class
    (nor ``ignore_index``) is an error rather than background.
    """
    if config.num_classes not in (None, len(names)):
        raise HdmapError(
            f"vectorize config: num_classes is {config.num_classes}, but the masks have "
            f"{len(names)} classes {list(names)}"
        )
    return replace(config, classes=layer_classes(names, class_map), num_classes=len(names))


def model_vectorize_config(
    keys: Mapping,
    names: Sequence[str],
    class_map_path: str | os.PathLike | None = None,
    source: str = "vectorize",
) -> VectorizeConfig:
    """The vectorize config of a model's masks: ``keys`` (a config node without ``classes``) for
    the classes ``names`` of its checkpoint, through the class map at ``class_map_path`` when the
    model was trained on a data set's own classes (:func:`for_mask_classes`)."""
    keys = dict(keys)
    if keys.pop("classes", None) is not None:
        raise HdmapError(
            f"{source}.classes: inference takes the layers' class ids from the checkpoint's class names; "
            "for a model of a data set's own classes set class_map_path (its class map) instead"
        )
    class_map = load_class_map(class_map_path, source=names) if class_map_path else None
    return for_mask_classes(VectorizeConfig.from_dict(keys, source=source), names, class_map)
