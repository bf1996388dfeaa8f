"""The vectorization API: feed label masks frame by frame, get map layers.

    builder = MapBuilder(log.camera, config)
    for i in range(len(log)):
        builder.add_frame(i, mask_i, log.T_world_from_cam(i), log[i].timestamp)
    layers = builder.finish()            # {"poles": [...], "signs": [...], "medians": [...], "coverage": [...]}
    write_layers(layers, out_dir, log.origin)

:func:`vectorize_log` does this for a drive log and a folder of masks. State is bounded by what
the camera sees plus the finished map (see :mod:`~hdmap_seg.vectorize.tracks`,
:mod:`~hdmap_seg.vectorize.medians`), never by the number of frames.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon
from tqdm import tqdm

from hdmap_seg.data.roads import describe_values
from hdmap_seg.data.roads import read_mask as read_label_png
from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.camera import CameraModel
from hdmap_seg.geo.drivelog import DriveLog, find_log_jumps, smooth_log
from hdmap_seg.geo.ground import LevelPlane, Raised, TrajectoryGround
from hdmap_seg.maplayers import MapLayers
from hdmap_seg.vectorize.config import VectorizeConfig
from hdmap_seg.vectorize.frame import FrameGeometry
from hdmap_seg.vectorize.medians import GroundVotes
from hdmap_seg.vectorize.poles import PoleFuser, pole_instances, pole_observations
from hdmap_seg.vectorize.signs import SignTracker, sign_instances
from hdmap_seg.vectorize.tracks import Track

_PREFETCH = 16  # masks decoded ahead of the vectorizer
_NOT_A_CLASS = 8  # the lookup table's bit of mask values that are no class
# A straight edge drawn in pixels steps by half a pixel either side of its line.
_CONTOUR_TOLERANCE_PX = 0.75


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
        # One lookup per pixel maps class ids to layer bits (1 pole, 2 sign, 4 median), and values that
        # are no class to _NOT_A_CLASS: one max() of the looked-up mask finds them.
        self._lut = np.zeros(256, np.uint8)
        for bit, layer in ((1, "pole"), (2, "sign"), (4, "median")):
            for cid in cfg.classes.get(layer, []):
                self._lut[int(cid)] |= bit
        self._num_classes = cfg.mask_class_count()
        if self._num_classes is not None:
            self._lut[self._num_classes :] |= _NOT_A_CLASS
            self._lut[cfg.ignore_index] &= ~np.uint8(_NOT_A_CLASS)
        self.poles = PoleFuser(cfg.pole, cfg.pose) if "pole" in cfg.classes else None
        self.signs = SignTracker(cfg.sign, cfg.max_range_m, cfg.pose) if "sign" in cfg.classes else None
        self.ground = GroundVotes(cfg.median)
        self._has_median = "median" in cfg.classes
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
        bits = self._layer_bits(mask, where)
        self._last_frame = frame_index
        self.n_frames += 1
        cfg = self.config
        surface = (
            self.ground_model.near(frame_index)
            if self.ground_model is not None
            else LevelPlane(self.camera.ground_z_m(T_world_from_cam))
        )
        known = self.ground_model.known_area(frame_index) if self.ground_model is not None else None
        geom = FrameGeometry(self.camera, T_world_from_cam, surface, cfg.max_range_m, known)
        sign_px = (bits & 2) > 0 if self.signs is not None else None
        if self.poles is not None:
            inst = pole_instances(
                (bits & 1) > 0, cfg.pole, blocked=sign_px, min_base_row=geom.top_ground_row_px
            )
            self.poles.add(frame_index, timestamp, *pole_observations(inst, geom, cfg.pole, cfg.pose))
        if self.signs is not None:
            self.signs.add(frame_index, timestamp, sign_instances(sign_px, cfg.sign), geom)
        median = None
        if self._has_median:
            median = geom.image_polygons_to_ground(
                _mask_polygons((bits & 4) > 0, cfg.median.min_pixels),
                Raised(surface, cfg.median.surface_height_m) if cfg.median.surface_height_m else surface,
            )
        self.ground.add(frame_index, geom.visible_ground(), median)

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

    def _ground_at(self, track: Track, xy_m: np.ndarray) -> float:
        """The ground's height at a finished feature: the drive's surface where the track was last seen;
        on the level-plane model the mean plane of the frames that saw it."""
        if self.ground_model is None:
            return track.ground_z_m
        return float(self.ground_model.near(track.last_frame).height_m(np.reshape(xy_m, (1, 2)))[0])

    def state_size(self) -> dict[str, int]:
        """Sizes of the fusion state (for the memory benchmark and logs)."""
        return {
            "pole_tracks": self.poles.n_tracks if self.poles else 0,
            "sign_tracks": self.signs.n_tracks if self.signs else 0,
            "ground_tiles": self.ground.n_tiles,
            "median_pieces": len(self.ground.median_pieces),
        }

    def finish(self) -> MapLayers:
        """Finish every track and tile; the layers in the world frame."""
        layers: MapLayers = {}
        if self.poles is not None:
            layers["poles"] = self.poles.finish(self._ground_at)
        if self.signs is not None:
            layers["signs"] = self.signs.finish(self._ground_at)
        medians, coverage = self.ground.finish()
        if self._has_median:
            layers["medians"] = medians
        layers["coverage"] = coverage
        return layers


def _mask_polygons(binary: np.ndarray, min_pixels: int) -> list[Polygon]:
    """Pixel-space polygons (with holes) of a binary mask, along the region's edge.

    OpenCV's contours run through the boundary pixels' centres, in a staircase on slanted edges:
    the staircase is straightened (Douglas-Peucker, ``_CONTOUR_TOLERANCE_PX``; a fifteenth of the
    vertices, each a ray to cast) and the result grown by the half pixel between those centres
    and the region's edge. Parts and holes smaller than ``min_pixels`` are speckle: dropped before
    they cost a polygon operation each.
    """
    contours, hierarchy = cv2.findContours(binary.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hierarchy = hierarchy[0]

    def ring(c: np.ndarray) -> np.ndarray:
        return cv2.approxPolyDP(c, _CONTOUR_TOLERANCE_PX, True).reshape(-1, 2).astype(float)

    out = []
    for i, c in enumerate(contours):
        if hierarchy[i][3] != -1 or len(c) < 3 or cv2.contourArea(c) < min_pixels:
            continue
        holes, child = [], hierarchy[i][2]
        while child != -1:
            h = contours[child]
            if len(h) >= 3 and cv2.contourArea(h) >= min_pixels:
                holes.append(ring(h))
            child = hierarchy[child][0]
        outer = ring(c)
        if len(outer) < 3:
            continue
        poly = Polygon(outer, [h for h in holes if len(h) >= 3])
        if not poly.is_valid:  # a ragged mask's contour touches itself where the region is a pixel wide
            poly = shapely.make_valid(poly)
        out.extend(shapely.get_parts(poly.buffer(0.5, join_style="mitre")))
    return out


def read_mask(path: Path) -> np.ndarray:
    """Read a PNG of class ids as the data sets read theirs (grey or palette); a missing file names the convention."""
    if not path.is_file():
        raise HdmapError(f"{path}: mask not found (masks are PNGs named like the frames)")
    return read_label_png(path)


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
