"""The ground truth of a synthetic drive: the map layers of what it saw, as GeoJSON."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from shapely.geometry import LineString, Point, Polygon

from hdmap_seg.export.geojson import write_geojson
from hdmap_seg.geo.frames import LocalFrame, invert_transform
from hdmap_seg.maplayers import CENTERLINE, FOOTPRINT, LANE_MARKINGS, MEDIANS, POLES, SIGNS, Feature
from hdmap_seg.synthetic.camera import CameraRig
from hdmap_seg.synthetic.drive import Drive
from hdmap_seg.synthetic.world import World


def write_ground_truth(
    gt_dir: str | os.PathLike,
    world: World,
    drive: Drive,
    origin: LocalFrame,
    rig: CameraRig,
    seen_counts: dict[str, dict[int, int]],
    range_m: float,
    min_frames: int = 2,
) -> None:
    """The drive's map layers as GeoJSON (RFC 7946) in ``gt_dir``: what the drive saw.

    Poles and signs seen (:func:`seen_objects`) in at least ``min_frames`` frames; medians and
    lane markings over the stretch of road the camera saw, from 5 m ahead of its first position
    to ``range_m`` ahead of its last (``side`` of a marking names the world's carriageway: "ego"
    at ``d < 0``, whichever way the drive went). Written with the export stage's GeoJSON writer, so the
    truth and the predictions share their format (properties: docs/synthetic.md).

    Altitudes are true: a pole's Point is its base on the ground, a sign's its plate's centre;
    on a terrain (not ``flat``) the line strings carry the ground's height too (3-D), while the
    median footprints stay 2-D (the map metrics are horizontal).
    """
    gt_dir = Path(gt_dir)
    # The camera looks the way the car drives: ahead is +s, or -s on a drive the other way.
    ahead = float(drive.direction)
    s_cam0 = float(drive.s_m[0]) + ahead * float(invert_transform(rig.T_cam_from_imu)[0, 3])
    s_lo, s_hi = sorted((s_cam0 + ahead * 5.0, float(drive.s_m[-1]) + ahead * range_m))

    poles = []
    for p in world.poles:
        n = seen_counts[POLES].get(p.id, 0)
        if n >= min_frames:
            props = {
                "id": p.id,
                "type": "pole",
                "kind": p.kind,
                "height_m": round(p.height_m, 3),
                "diameter_m": round(2 * p.radius_m, 3),
                "n_frames_seen": n,
            }
            poles.append(Feature(Point(p.x_m, p.y_m, p.z0_m), props))
    signs = []
    for sg in world.signs:
        n = seen_counts[SIGNS].get(sg.id, 0)
        if n >= min_frames:
            props = {
                "id": sg.id,
                "type": "sign",
                "shape": sg.shape,
                "height_m": round(sg.height_m, 3),
                "facing_deg": round(sg.bearing_deg, 2),
                "width_m": round(sg.size_m, 3),
                "height_plate_m": round(sg.plate_height_m, 3),
                "mount": "pole" if sg.pole_id >= 0 else "post",
                "pole_id": sg.pole_id,
                "n_frames_seen": n,
            }
            signs.append(Feature(Point(sg.x_m, sg.y_m, sg.centre_z_m), props))

    sec = world.section
    terrain = world.terrain

    def line(s: np.ndarray, d: np.ndarray) -> LineString:
        xy = np.column_stack(world.road.point_at(s, d))
        return LineString(xy if terrain.is_flat else np.column_stack([xy, terrain.height_m(s, d)]))

    medians = []
    for k, (a, b) in enumerate(world.median_pieces_m(s_lo, s_hi)):
        if b - a < 1.0:
            continue
        s = _samples(a, b)
        left = np.column_stack(world.road.point_at(s, np.full_like(s, sec.half_median_m)))
        right = np.column_stack(world.road.point_at(s, np.full_like(s, -sec.half_median_m)))
        props = {
            "median_id": k,
            "width_m": round(sec.median_width_m, 3),
            "s_start_m": round(a, 2),
            "s_end_m": round(b, 2),
        }
        medians.append(Feature(Polygon(np.vstack([left, right[::-1]])), {"kind": FOOTPRINT, **props}))
        medians.append(Feature(line(s, np.zeros_like(s)), {"kind": CENTERLINE, **props}))

    markings = []
    for side, sign in (("ego", -1.0), ("opposite", 1.0)):
        for k, (c, style) in enumerate(sec.marking_lines()):
            pieces = world.median_pieces_m(s_lo, s_hi) if k == 0 else [(s_lo, s_hi)]
            for a, b in pieces:
                if b - a < 1.0:
                    continue
                s = _samples(a, b)
                props = {
                    "style": style,
                    "side": side,
                    "line": k,
                    "offset_m": round(sign * c, 3),
                    "width_m": round(sec.marking_width_m, 3),
                }
                markings.append(Feature(line(s, np.full_like(s, sign * c)), props))

    for name, feats in ((POLES, poles), (SIGNS, signs), (MEDIANS, medians), (LANE_MARKINGS, markings)):
        write_geojson(gt_dir / f"{name}.geojson", feats, origin)


def _samples(a: float, b: float, step_m: float = 1.0) -> np.ndarray:
    return np.linspace(a, b, max(int(np.ceil((b - a) / step_m)) + 1, 2))
