"""The vectorization API: feed label masks frame by frame, get map layers.

    builder = MapBuilder(log.camera, config)
    for i in range(len(log)):
        builder.add_frame(i, mask_i, log.T_world_from_cam(i), log[i].timestamp)
    layers = builder.finish()            # {"poles": [...], ..., "lane_markings": [...], "coverage": [...]}
    write_layers(layers, out_dir, log.origin)

Each layer the config feeds has its builder (:mod:`~hdmap_seg.vectorize.layer_builder`):
:data:`BUILDERS` makes them, :meth:`MapBuilder.add_frame` hands each frame to each in turn.
:func:`vectorize_log` does this for a drive log and a folder of masks. State is bounded by what
the camera sees plus the finished map (see :mod:`~hdmap_seg.vectorize.tracks`,
:mod:`~hdmap_seg.vectorize.medians`), never by the number of frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from hdmap_seg.data.dataset import describe_values
from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.camera import CameraModel
from hdmap_seg.geo.drivelog import DriveLog, find_log_jumps, smooth_log
from hdmap_seg.geo.ground import LevelPlane, TrajectoryGround
from hdmap_seg.imageio import read_mask
from hdmap_seg.maplayers import COVERAGE, LANE_MARKINGS, LAYER_CLASS, MEDIANS, POLES, SIGNS, MapLayers
from hdmap_seg.vectorize.config import VectorizeConfig
from hdmap_seg.vectorize.frame import FrameGeometry
from hdmap_seg.vectorize.lanes import LaneMarkingBuilder
from hdmap_seg.vectorize.layer_builder import FrameStamp, LayerBuilder, LayerMasks
from hdmap_seg.vectorize.medians import GroundVotes, MedianBuilder
from hdmap_seg.vectorize.poles import PoleBuilder
from hdmap_seg.vectorize.signs import SignBuilder
from hdmap_seg.vectorize.tracks import Track

_PREFETCH = 16  # masks decoded ahead of the vectorizer
# The lookup table's bit of mask values that are no class; the bits below it are the layers'.
_NOT_A_CLASS = 128

#: The builder of each layer, from the config and the map builder: the ground under finished tracks, how far
#: beside the path that ground is measured rather than extrapolated, and the vote grid that counts what each
#: frame saw; in file order. A layer gets its builder when a class feeds it.
BUILDERS: dict[str, Callable[[VectorizeConfig, MapBuilder], LayerBuilder]] = {
    POLES: lambda cfg, mb: PoleBuilder(cfg.pole, cfg.pose, mb.ground_at),
    SIGNS: lambda cfg, mb: SignBuilder(
        cfg.sign, cfg.max_range_m, cfg.pose, mb.ground_at, mb.measured_reach_m
    ),
    MEDIANS: lambda cfg, mb: MedianBuilder(cfg.median, mb.ground),
    LANE_MARKINGS: lambda cfg, mb: LaneMarkingBuilder(cfg.lane_marking),
}


class MapBuilder:
    """Streaming vectorizer for one camera. Not thread-safe; one per drive."""

    def __init__(
        self,
        camera: CameraModel,
        config: VectorizeConfig | None = None,
        ground: TrajectoryGround | None = None,
    ) -> None:
        """``ground`` is the drive's road surface (:func:`drive_ground`); None: a level plane under the car."""
        self.camera = camera
        self.ground_model = ground
        self.config = config or VectorizeConfig()
        cfg = self.config
        # The coverage: every frame's visible ground, whether or not a layer is built from it.
        self.ground = GroundVotes(cfg.median)
        # The drive's surface holds the cross slope its roll measured this far beside the path; the level
        # plane under the car is a guess everywhere but under it.
        self.measured_reach_m = cfg.ground.cross_reach_m if ground is not None else 0.0
        self.builders: dict[str, LayerBuilder] = {
            layer: make(cfg, self) for layer, make in BUILDERS.items() if LAYER_CLASS[layer] in cfg.classes
        }
        # One lookup per pixel maps class ids to layer bits, and values that are no class to
        # _NOT_A_CLASS: one max() of the looked-up mask finds them.
        self._bit_of = {layer: 1 << i for i, layer in enumerate(self.builders)}
        self._lut = np.zeros(256, np.uint8)
        for layer, bit in self._bit_of.items():
            for cid in cfg.classes[LAYER_CLASS[layer]]:
                self._lut[int(cid)] |= bit
        self._num_classes = cfg.mask_class_count()
        if self._num_classes is not None:
            self._lut[self._num_classes :] |= _NOT_A_CLASS
            self._lut[cfg.ignore_index] &= ~np.uint8(_NOT_A_CLASS)
        self._last_frame: int | None = None
        self.n_frames = 0

    def add_frame(
        self,
        frame_index: int,
        mask: np.ndarray,
        T_world_from_cam: np.ndarray,
        timestamp: np.datetime64 | None = None,
        source: str | None = None,
    ) -> None:
        """Add one frame's ``(H, W)`` uint8 class-id mask seen from ``T_world_from_cam``.

        Frames must come in increasing ``frame_index`` (tracks retire by frame gaps).
        """
        where = source or f"frame {frame_index}"
        self.camera.check_mask(mask, where)
        if self._last_frame is not None and frame_index <= self._last_frame:
            raise HdmapError(
                f"{where}: frames must be added in increasing order ({frame_index} after {self._last_frame})"
            )
        if not np.all(np.isfinite(T_world_from_cam)):
            raise HdmapError(f"{where}: NaN or inf in the camera pose")
        masks = LayerMasks(self._layer_bits(mask, where), self._bit_of)
        self._last_frame = frame_index
        self.n_frames += 1
        surface = (
            self.ground_model.near(frame_index)
            if self.ground_model is not None
            else LevelPlane(self.camera.ground_z_m(T_world_from_cam))
        )
        known = self.ground_model.known_area(frame_index) if self.ground_model is not None else None
        geom = FrameGeometry(self.camera, T_world_from_cam, surface, self.config.max_range_m, known)
        self.ground.see(frame_index, geom.visible_ground)
        frame = FrameStamp(frame_index, timestamp)
        for builder in self.builders.values():
            builder.add(frame, masks, geom)

    def _layer_bits(self, mask: np.ndarray, where: str) -> np.ndarray:
        """The mask's layer bits (``_lut``); a clear error for values that are no class."""
        if mask.dtype != np.uint8 and mask.size and (mask.min() < 0 or mask.max() > 255):
            raise HdmapError(f"{where}: mask values must be class ids 0..255, got {mask.min()}..{mask.max()}")
        bits = cv2.LUT(mask.astype(np.uint8, copy=False), self._lut)
        if self._num_classes is not None and bits.max(initial=0) >= _NOT_A_CLASS:
            bad = np.unique(mask[bits >= _NOT_A_CLASS])
            raise HdmapError(
                f"{where}: mask holds the value{'s' if len(bad) > 1 else ''} {describe_values(bad)}, "
                f"which no class has (class ids 0..{self._num_classes - 1}, ignore {self.config.ignore_index})"
            )
        return bits

    def ground_at(self, track: Track, xy_m: np.ndarray) -> float:
        """The ground's height at a finished feature: the drive's surface where the track was last seen;
        on the level-plane model the mean plane of the frames that saw it."""
        if self.ground_model is None:
            return track.ground_z_m
        return float(self.ground_model.near(track.last_frame).height_m(np.reshape(xy_m, (1, 2)))[0])

    def state_size(self) -> dict[str, int]:
        """Sizes of the fusion state (for the memory benchmark and logs)."""
        sizes = {"ground_tiles": self.ground.n_tiles}
        for builder in self.builders.values():
            sizes.update(builder.state_size())
        return sizes

    def finish(self) -> MapLayers:
        """Finish every track and tile; the layers in the world frame."""
        layers: MapLayers = {layer: builder.finish() for layer, builder in self.builders.items()}
        self.ground.close()
        layers[COVERAGE] = self.ground.coverage()
        return layers


def vectorize_log(
    log: DriveLog,
    masks_dir: str | os.PathLike | None = None,
    config: VectorizeConfig | None = None,
    progress: bool = True,
) -> MapLayers:
    """Vectorize a whole drive log from its masks (default: the log's own label folder)."""
    masks_dir = Path(masks_dir) if masks_dir is not None else log.default_masks_dir
    if not masks_dir.is_dir():
        raise HdmapError(f"{masks_dir}: masks folder not found")
    first = log.mask_path(masks_dir, 0)
    if not first.is_file():
        raise HdmapError(
            f"{first}: mask of frame {log[0].stem} not found (masks are PNGs named like the frames)"
        )
    config = config or VectorizeConfig()
    log, config, good = prepare_poses(log, config)
    builder = MapBuilder(log.camera, config, drive_ground(log, config, good))
    paths = [log.mask_path(masks_dir, i) for i in range(len(log))]
    with tqdm(total=len(log), desc="vectorize", unit="frame", disable=not progress) as bar:
        for i, mask in enumerate(_prefetch(paths)):
            builder.add_frame(i, mask, log.T_world_from_cam(i), log[i].timestamp, source=str(paths[i]))
            bar.update()
    return builder.finish()


def prepare_poses(log: DriveLog, config: VectorizeConfig) -> tuple[DriveLog, VectorizeConfig, np.ndarray]:
    """The log with the poses mapping uses, the config with their noise, and the frames without GNSS jumps.

    With ``pose.smooth`` the poses are smoothed (:func:`~hdmap_seg.geo.drivelog.smooth_log`) and the
    noise the smoother leaves becomes ``pose.sigma_m`` and ``pose.sigma_yaw_deg``, which every view's
    noise includes; without, the poses and those two are used as given. Either way frames of GNSS jumps are reported and left out of the ground.
    """
    if not config.pose.smooth:
        return log, config, find_log_jumps(log, config.pose.max_jump_m)
    smoothed, report = smooth_log(log, config.pose.max_jump_m)
    if report.smoothed:
        pose = replace(
            config.pose, sigma_m=report.sigma_pos_m, sigma_yaw_deg=float(np.degrees(report.sigma_yaw_rad))
        )
        config = replace(config, pose=pose)
    return smoothed, config, report.good


def drive_ground(
    log: DriveLog, config: VectorizeConfig, good: np.ndarray | None = None
) -> TrajectoryGround | None:
    """The log's road surface as ``config.ground`` says; None for the level plane (or a drive too short)."""
    cfg = config.ground
    if cfg.model == "plane":
        return None
    return TrajectoryGround.from_poses(
        log.T_world_from_vehicle,
        log.camera.ground_offset_m,
        good,
        height_window_m=cfg.height_window_m,
        cross_window_m=cfg.cross_window_m,
        cross_reach_m=cfg.cross_reach_m,
        extrapolate_m=cfg.extrapolate_m,
        reach_m=2.0 * config.max_range_m + 20.0,
        source=str(log.root),
    )


def _prefetch(paths: list[Path], chunk: int = _PREFETCH) -> Iterator[np.ndarray]:
    """Masks in order, decoded a chunk ahead in a thread (PNG decoding releases the GIL); memory: two chunks."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(lambda c: [read_mask(p) for p in c], paths[:chunk])
        for start in range(0, len(paths), chunk):
            masks = pending.result()
            nxt = paths[start + chunk : start + 2 * chunk]
            pending = pool.submit(lambda c: [read_mask(p) for p in c], nxt)
            yield from masks
