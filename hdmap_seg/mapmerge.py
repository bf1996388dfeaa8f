"""The layers of many drives -> one map: ``hdmap-merge`` (docs/map.md, "Merging drives").

A map is built by adding drives one at a time to a :class:`MergeState`, so that adding drives to a
map later gives the map that merging them all at once would (the same drives in the same order).
Everything happens in the ``world`` frame of the map's origin (metres, ENU).

Poles and signs: a drive's points are matched one-to-one to the map's (Hungarian, scipy) on the
squared horizontal distance over ``sigma_drive**2 + sigma_map**2 + floor**2`` (a chi-square gate
with 2 degrees of freedom; the floor stands for what neither sigma knows, a drive's pose bias), and
never further apart than ``max_gate_m``; signs also only within ``max_facing_deg`` of facing (modulo
180 deg by default: masks do not tell a plate's face from its back, so a drive the other way maps
the back's facing) and ``max_height_diff_m`` of height. One-to-one per drive keeps a drive's second,
nearby point from being pulled into a feature it does not belong to, and the gate keeps an outlier
from dragging one. Matched points are fused by inverse-variance weights ``1 / sigma_m**2``
(position, altitude, and a sign's height and size; its facing as the weighted mean axis, turned to
the side most weight saw); the merged ``sigma_m`` is ``1 / sqrt(sum weights)``. Unmatched points
become new features.

Medians: a drive's footprint that overlaps map footprints (a shared area) is united with all of
them into one; its centre line is the longest of theirs. Coverage: the union of the drives'.
Lane lines: by curve distance, fused vertex by vertex (:mod:`hdmap_seg.lanemerge`). Change
detection (:mod:`hdmap_seg.mapchanges`) runs for every drive added to a map that has drives. Poles
and signs are merged tile by tile, as Dask tasks (:mod:`hdmap_seg.maptiles`); the rest in this process.

The map folder holds the layers (GeoJSON, GeoPackage), each tile's poles and signs (``tiles/``), the
run's ``changes.geojson`` and ``merge.json``: the manifest (drives with their origin and coverage) and
each feature's information sums at full precision, which is all that adding drives reuses. The whole new map is written into a temporary folder beside it and swapped in,
so an interrupted merge leaves the old map as it was.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import dask
import numpy as np
import shapely
from scipy.optimize import linear_sum_assignment
from scipy.stats import chi2
from shapely.geometry import LineString, Point
from shapely.geometry.base import BaseGeometry
from tqdm import tqdm

from hdmap_seg.errors import HdmapError
from hdmap_seg.export import write_layers
from hdmap_seg.export.geojson import read_geojson, to_world, write_geojson
from hdmap_seg.geo.frames import LocalFrame, angle_diff_deg
from hdmap_seg.io import read_text, write_text_atomic
from hdmap_seg.lanemerge import fuse, overlap_m, resample
from hdmap_seg.mapchanges import (
    ADDED,
    CANDIDATE,
    GONE,
    MAPPED,
    MOVED,
    REMOVED,
    Change,
    ChangeConfig,
    covered,
    inside,
    moved_pairs,
    nearest_m,
)
from hdmap_seg.maplayers import (
    CENTERLINE,
    COVERAGE,
    FOOTPRINT,
    LANE_MARKINGS,
    MEDIANS,
    POLES,
    SIGNS,
    Feature,
    MapLayers,
)
from hdmap_seg.maptiles import (
    HALO_M,
    INPUT_MARGIN_M,
    Tile,
    TileDrive,
    features_near,
    run_tiles,
    tile_box,
    tile_of,
    tiles_reached,
)

log = logging.getLogger(__name__)

MANIFEST = "merge.json"
TILES = "tiles"
#: 15: tiles of about 1.2 x 0.8 km at 48 deg latitude.
DEFAULT_TILE_ZOOM = 15
CHANGES = "changes"
FORMAT = "hdmap-merge"
VERSION = 2
#: Manifests this code reads: version 1 had no change detection (every feature mapped, none missed).
READS_VERSIONS = (1, 2)
#: What a drive's folder may record its run in (hdmap-vectorize; batch inference).
RUN_RECORDS = ("vectorize.json", "summary.json")
POINT_LAYERS = (POLES, SIGNS)
#: Sign properties fused as inverse-variance weighted means.
SIGN_MEANS = ("height_m", "width_m", "height_plate_m")


@dataclass(frozen=True)
class MergeConfig:
    """The matching rules (module docstring)."""

    gate_prob: float = 0.99
    sigma_floor_m: float = 0.3
    max_gate_m: float = 2.0
    max_facing_deg: float = 45.0
    #: Masks do not tell a plate's face from its back (docs/map.md, "Limitations"): a drive the other way
    #: maps the back's facing, so by default facings are compared modulo 180 deg.
    facing_either_side: bool = True
    #: A drive's coverage further than this from the map's origin is another place (or frame).
    max_origin_distance_m: float = 20_000.0
    max_height_diff_m: float = 1.0
    change: ChangeConfig = field(default_factory=ChangeConfig)
    #: Web-mercator zoom of the tiles poles and signs are merged in (maptiles), for a new map (a map keeps
    #: its own; None: ``DEFAULT_TILE_ZOOM``).
    tile_zoom: int | None = None
    #: Lane lines: a drive's line is a map line where it runs within this of it ...
    lane_gate_m: float = 0.5
    #: ... over at least this much of the map line's length (or half the drive line's, if shorter).
    lane_min_overlap_m: float = 5.0

    @property
    def gate_chi2(self) -> float:
        return float(chi2.ppf(self.gate_prob, df=2))


@dataclass
class Drive:
    """One drive's layers, read into the map's world frame."""

    drive_id: str
    folder: Path
    origin: LocalFrame | None
    points: dict[str, list[tuple[np.ndarray, dict]]]  # layer -> [(xyz world, properties)]
    footprints: list[tuple[BaseGeometry, BaseGeometry | None, dict]]  # (polygon, centre line, props)
    coverage: BaseGeometry
    lanes: list[tuple[LineString, dict]] = field(default_factory=list)  # world xy lane-marking lines
    classes: dict | None = None  # which mask classes fed which layer (its run record), if recorded

    @property
    def n_features(self) -> int:
        return sum(len(v) for v in self.points.values()) + len(self.footprints) + len(self.lanes)


@dataclass
class MergeState:
    """What a map knows to continue: its origin, its drives, and each feature's sums (JSON-able)."""

    origin: LocalFrame
    drives: list[dict] = field(default_factory=list)
    points: dict[str, list[dict]] = field(default_factory=lambda: {POLES: [], SIGNS: []})
    medians: list[dict] = field(default_factory=list)
    lanes: list[dict] = field(default_factory=list)
    next_id: int = 0
    tile_zoom: int = DEFAULT_TILE_ZOOM
    #: What the drives added since the map was read said changed (not kept: each run writes its own).
    changes: list[Change] = field(default_factory=list)
    #: The tiles this run recomputed (None: every tile, as for a new map).
    touched: set | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "origin": self.origin.to_dict(),
            "next_id": self.next_id,
            "drives": self.drives,
            "points": self.points,
            "medians": self.medians,
            "lanes": self.lanes,
            "tile_zoom": self.tile_zoom,
        }

    @classmethod
    def from_json(cls, data: dict, path: Path) -> MergeState:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise HdmapError(f"{path}: not a map written by hdmap-merge (no '{FORMAT}' manifest)")
        if data.get("version") not in READS_VERSIONS:
            raise HdmapError(
                f"{path}: hdmap-merge manifest version {data.get('version')}, this reads {READS_VERSIONS}"
            )
        try:
            state = cls(
                origin=LocalFrame(**data["origin"]),
                drives=list(data["drives"]),
                points={name: list(data["points"][name]) for name in POINT_LAYERS},
                medians=list(data["medians"]),
                lanes=list(data.get("lanes", [])),  # version 1 merged no lane lines
                next_id=int(data["next_id"]),
                tile_zoom=int(data.get("tile_zoom", DEFAULT_TILE_ZOOM)),
                touched=set(),
            )
            for feats in state.points.values():
                for f in feats:
                    f.setdefault("status", MAPPED)
                    f.setdefault("missed_by", [])
            return state
        except (KeyError, TypeError, ValueError) as err:
            raise HdmapError(
                f"{path}: incomplete hdmap-merge manifest ({type(err).__name__}: {err})"
            ) from None

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


# ------------------------------------------------------------------------------ reading drives


def _run_record(folder: Path) -> dict | None:
    for name in RUN_RECORDS:
        path = folder / name
        if path.is_file():
            try:
                data = json.loads(read_text(path, "run record"))
            except ValueError as err:
                raise HdmapError(f"{path}: not valid JSON ({err})") from None
            return data if isinstance(data, dict) else None
    return None


def _record_origin(record: dict | None, folder: Path) -> LocalFrame | None:
    """The world origin a run record says the drive's layers were made in, if it says."""
    if record is None or "origin" not in record:
        return None
    try:
        return LocalFrame(**record["origin"])
    except (TypeError, ValueError) as err:
        raise HdmapError(f"{folder}: its run record's origin is not lat0/lon0/alt0 ({err})") from None


def drive_origin(folder: Path) -> LocalFrame | None:
    """The world origin a drive's layers were made in (its vectorize.json or summary.json), if recorded."""
    return _record_origin(_run_record(folder), folder)


def _record_classes(record: dict | None) -> dict | None:
    """Which mask classes fed which layer when the drive was vectorized, if its run record says."""
    classes = record.get("config", {}).get("classes") if record else None
    return classes if isinstance(classes, dict) else None


def _warn_other_classes(drive: Drive, classes_ref: dict | None) -> None:
    """A warning when the drive's layers came from other mask classes than the map's first drive's: a model
    with other classes is fine, a layer fed by another kind of object is not, and only a person can tell."""
    if drive.classes is not None and classes_ref is not None and drive.classes != classes_ref:
        log.warning(
            "%s: vectorized with classes %s where the map's drives had %s; its layers are merged as the same kinds",
            next(drive.folder / n for n in RUN_RECORDS if (drive.folder / n).is_file()),
            drive.classes,
            classes_ref,
        )


def default_drive_id(folder: Path) -> str:
    """A drive's id: the name of the log its run record names, else its folder's (its parent's for ``map``)."""
    record = _run_record(folder)
    if record and isinstance(record.get("log"), str):
        return Path(record["log"]).name
    folder = folder.resolve()
    return folder.parent.name if folder.name == "map" else folder.name


def _sigma(path: Path, i: int, props: dict) -> float:
    s = props.get("sigma_m")
    if not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
        raise HdmapError(f"{path}: feature {i} has no positive sigma_m (got {s!r}); the merge weighs by it")
    return float(s)


def read_drive(folder: Path, drive_id: str, frame: LocalFrame) -> Drive:
    """A drive's layers folder -> :class:`Drive` in ``frame``'s world; one-line errors naming the file."""
    if not folder.is_dir():
        raise HdmapError(f"{folder}: drive layers folder not found")
    cov_path = folder / f"{COVERAGE}.geojson"
    if not cov_path.is_file():
        raise HdmapError(
            f"{cov_path}: missing; a drive's layers need the ground it saw (hdmap-vectorize writes it)"
        )
    coverage = shapely.union_all([to_world(g, frame) for g, _ in read_geojson(cov_path)])
    points: dict[str, list[tuple[np.ndarray, dict]]] = {}
    for name in POINT_LAYERS:
        path = folder / f"{name}.geojson"
        points[name] = []
        if not path.is_file():
            continue
        for i, (g, props) in enumerate(read_geojson(path)):
            if g.geom_type != "Point" or not g.has_z:
                raise HdmapError(f"{path}: feature {i} is a {g.geom_type}, not a Point [lon, lat, alt]")
            xyz = frame.world_from_wgs84_points(np.array([[g.x, g.y, g.z]]))[0]
            if not np.isfinite(xyz).all():
                raise HdmapError(f"{path}: feature {i} has a coordinate that is not a finite number")
            _sigma(path, i, props)
            if name == SIGNS and not all(
                isinstance(props.get(k), (int, float)) for k in ("facing_deg", "height_m")
            ):
                raise HdmapError(
                    f"{path}: feature {i} lacks facing_deg or height_m; signs are matched on them"
                )
            points[name].append((xyz, props))
    footprints = []
    path = folder / f"{MEDIANS}.geojson"
    if path.is_file():
        feats = read_geojson(path)
        lines = {p.get("id"): to_world(g, frame) for g, p in feats if p.get("kind") == CENTERLINE}
        for g, p in feats:
            if p.get("kind") == FOOTPRINT:
                poly = to_world(g, frame)
                if not poly.is_valid:
                    poly = shapely.make_valid(poly)
                footprints.append((poly, lines.get(p.get("id")), p))
    lanes = []
    path = folder / f"{LANE_MARKINGS}.geojson"
    if path.is_file():
        for i, (g, p) in enumerate(read_geojson(path)):
            if g.geom_type != "LineString" or g.length == 0:
                raise HdmapError(f"{path}: feature {i} is a {g.geom_type}, not a LineString of some length")
            lanes.append((shapely.force_2d(to_world(g, frame)), p))
    record = _run_record(folder)
    return Drive(
        drive_id,
        folder,
        _record_origin(record, folder),
        points,
        footprints,
        coverage,
        lanes,
        _record_classes(record),
    )


# -------------------------------------------------------------------------------------- merging


def _wkb(geom: BaseGeometry | None) -> str | None:
    return None if geom is None else shapely.to_wkb(geom, hex=True, include_srid=False)


def _from_wkb(text: str | None) -> BaseGeometry | None:
    return None if text is None else shapely.from_wkb(text)


def _point_sums(xyz: np.ndarray, props: dict, name: str) -> dict:
    """A point's information sums: weight ``1/sigma**2`` and weight times each fused value."""
    w = 1.0 / float(props["sigma_m"]) ** 2
    sums = {"w": w, "wx": w * xyz[0], "wy": w * xyz[1], "wz": w * xyz[2]}
    if name == SIGNS:
        facing = math.radians(float(props["facing_deg"]))
        sums |= {"wcos": w * math.cos(facing), "wsin": w * math.sin(facing)}
        # the plate's axis (facing modulo 180 deg) as a doubled angle, for drives that saw its back
        sums |= {"wcos2": w * math.cos(2 * facing), "wsin2": w * math.sin(2 * facing)}
        for k in SIGN_MEANS:
            if isinstance(props.get(k), (int, float)):
                sums[f"w_{k}"], sums[f"n_{k}"] = w * float(props[k]), w
    return {k: float(v) for k, v in sums.items()}


def _confidence(props: dict) -> float:
    c = props.get("confidence")
    return float(c) if isinstance(c, (int, float)) and math.isfinite(c) else 0.0


def _new_point(state: MergeState, name: str, xyz: np.ndarray, props: dict, drive_id: str) -> dict:
    return {
        "id": state.new_id(),
        "sums": _point_sums(xyz, props, name),
        "n_obs": int(props.get("n_obs") or 0),
        "first_seen": props.get("first_seen"),
        "last_seen": props.get("last_seen"),
        "miss": 1.0 - _confidence(props),  # product of (1 - confidence): noisy-or over drives
        "drives": [drive_id],
        "status": MAPPED,
        "missed_by": [],  # drives that covered it and did not see it, since one last did
    }


def _add_to_point(feat: dict, name: str, xyz: np.ndarray, props: dict, drive_id: str) -> None:
    for k, v in _point_sums(xyz, props, name).items():
        feat["sums"][k] = feat["sums"].get(k, 0.0) + v
    feat["n_obs"] += int(props.get("n_obs") or 0)
    seen = [t for t in (feat["first_seen"], props.get("first_seen")) if t]
    feat["first_seen"] = min(seen) if seen else None
    seen = [t for t in (feat["last_seen"], props.get("last_seen")) if t]
    feat["last_seen"] = max(seen) if seen else None
    feat["miss"] *= 1.0 - _confidence(props)
    feat["drives"].append(drive_id)


def point_estimate(feat: dict) -> tuple[np.ndarray, float]:
    """A merged point's world xyz (inverse-variance mean) and its ``sigma_m``."""
    s = feat["sums"]
    return np.array([s["wx"], s["wy"], s["wz"]]) / s["w"], 1.0 / math.sqrt(s["w"])


def _facing_deg(sums: dict) -> float:
    """The merged facing: along the plate's axis, towards the side most of the weight saw."""
    axis = math.degrees(math.atan2(sums["wsin2"], sums["wcos2"])) / 2.0
    direction = math.degrees(math.atan2(sums["wsin"], sums["wcos"]))
    return (axis if angle_diff_deg(axis, direction) <= 90.0 else axis + 180.0) % 360.0


def _facing_diff_deg(a_deg: float, b_deg: float, either_side: bool) -> float:
    d = angle_diff_deg(a_deg, b_deg)
    return min(d, 180.0 - d) if either_side else d


def _signs_alike(a: tuple[float, float | None], b: tuple[float, float | None], config: MergeConfig) -> bool:
    """Two signs' ``(facing_deg, height_m)`` within the merge's facing and height rules."""
    return _facing_diff_deg(a[0], b[0], config.facing_either_side) <= config.max_facing_deg and (
        a[1] is None or b[1] is None or abs(a[1] - b[1]) <= config.max_height_diff_m
    )


def _sign_key(props: dict) -> tuple[float, float | None]:
    return float(props["facing_deg"]), float(props["height_m"])


def _map_sign_key(feat: dict) -> tuple[float, float | None]:
    s = feat["sums"]
    return _facing_deg(s), (s["w_height_m"] / s["n_height_m"] if s.get("n_height_m") else None)


def _gate(
    a_xyz: np.ndarray, a_sigma: np.ndarray, b_xyz: np.ndarray, b_sigma: np.ndarray, config: MergeConfig
) -> tuple[np.ndarray, np.ndarray]:
    """``(len(a), len(b))`` squared horizontal distances and their chi-square values over both sigmas and
    the floor (module docstring)."""
    d2 = ((a_xyz[:, None, :2] - b_xyz[None, :, :2]) ** 2).sum(axis=2)
    return d2, d2 / (a_sigma[:, None] ** 2 + b_sigma[None, :] ** 2 + config.sigma_floor_m**2)


def _match(feats: list[dict], name: str, drive: Drive, config: MergeConfig) -> list[tuple[int, int]]:
    """One-to-one ``(drive point, index in feats)`` pairs inside the gate (module docstring)."""
    pts = drive.points[name]
    if not feats or not pts:
        return []
    est = [point_estimate(f) for f in feats]
    d2, maha = _gate(
        np.array([p[0] for p in pts]),
        np.array([float(p[1]["sigma_m"]) for p in pts]),
        np.array([e[0] for e in est]),
        np.array([e[1] for e in est]),
        config,
    )
    ok = (maha <= config.gate_chi2) & (d2 <= config.max_gate_m**2)
    if name == SIGNS:
        for i, (_, props) in enumerate(pts):
            for j, f in enumerate(feats):
                if ok[i, j]:
                    ok[i, j] = _signs_alike(_map_sign_key(f), _sign_key(props), config)
    # Every allowed pair costs less than any forbidden one, so the most pairs are made, then the closest.
    cost = np.where(ok, maha / config.gate_chi2, 1e6)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols, strict=True) if ok[r, c]]


def _add_medians(state: MergeState, drive: Drive) -> None:
    for poly, line, props in drive.footprints:
        merged = [m for m in state.medians if _from_wkb(m["footprint"]).intersection(poly).area > 0]
        rest = [m for m in state.medians if not any(m is x for x in merged)]
        lines = [_from_wkb(m["centerline"]) for m in merged] + [line]
        lines = [g for g in lines if g is not None]
        footprint = shapely.union_all([_from_wkb(m["footprint"]) for m in merged] + [poly])
        drives = list(dict.fromkeys([d for m in merged for d in m["drives"]] + [drive.drive_id]))
        state.medians = rest + [
            {
                "id": min(m["id"] for m in merged) if merged else state.new_id(),
                "footprint": _wkb(footprint),
                "centerline": _wkb(max(lines, key=lambda g: g.length)) if lines else None,
                "drives": drives,
                "conf_sum": sum(m["conf_sum"] for m in merged) + _confidence(props),
                "n_parts": sum(m["n_parts"] for m in merged) + 1,
            }
        ]


def add_points(
    state: MergeState,
    name: str,
    drive: Drive,
    config: MergeConfig,
    looked: BaseGeometry | None,
    here: BaseGeometry,
) -> list[Change]:
    """Merge one drive's points of layer ``name`` into ``state`` and say what changed (mapchanges).

    ``looked``: where the map's earlier drives could have seen (None: the map has none yet);
    ``here``: where this drive could have.
    """
    rules = config.change
    feats, pts, drive_id = state.points[name], drive.points[name], drive.drive_id
    live = [j for j, f in enumerate(feats) if f["status"] != GONE]
    pairs = [(i, live[k]) for i, k in _match([feats[j] for j in live], name, drive, config)]
    est = {j: point_estimate(feats[j]) for j in live}  # before this drive's points join them
    by_id = {f["id"]: f for f in feats}
    changes: list[Change] = []

    def report(
        change: str, f: dict, xyz, old_xyz, n_obs: int, distance_m, n_agree: int, applied: bool
    ) -> None:
        changes.append(
            Change(
                change=change,
                layer=name,
                feature_id=f["id"],
                drive_id=drive_id,
                xyz=np.asarray(xyz),
                old_xyz=old_xyz,
                n_obs=n_obs,
                distance_m=distance_m,
                sigma_m=point_estimate(f)[1],
                n_agree=n_agree,
                applied=applied,
                from_id=f.get("moved_from") if change == MOVED else None,
            )
        )

    # Seen again: a candidate is confirmed once enough drives saw it.
    confirmed: list[tuple[dict, dict]] = []
    for i, j in pairs:
        xyz, props = pts[i]
        f = feats[j]
        _add_to_point(f, name, xyz, props, drive_id)
        f["missed_by"] = []
        if f["status"] == CANDIDATE:
            if len(f["drives"]) >= rules.min_drives:
                f["status"] = MAPPED
            confirmed.append((f, props))
    continued = {f["moved_from"] for f, _ in confirmed if "moved_from" in f}  # ids a moved one replaces
    matched_drive = {i for i, _ in pairs}
    matched_map = {j for _, j in pairs}
    new = [i for i in range(len(pts)) if i not in matched_drive]
    drive_xyz = np.array([p[0] for p in pts]).reshape(-1, 3)
    new_xyz = drive_xyz[new]
    if looked is None:  # the map's first drive: everything is new ground
        for i in new:
            feats.append(_new_point(state, name, *pts[i], drive_id))
        return changes

    # A drive point within the gate of a map feature (by position alone: facings and heights are
    # noisy, a plate seen from afar or behind) is evidence that it is there, matched or not.
    unmatched = [j for j in live if j not in matched_map]
    _, maha = _gate(
        np.array([est[j][0] for j in unmatched]).reshape(-1, 3),
        np.array([est[j][1] for j in unmatched]),
        drive_xyz,
        np.array([float(p[1]["sigma_m"]) for p in pts]),
        config,
    )
    near = maha <= config.gate_chi2  # no max_gate_m here: evidence, not a match
    for j in np.asarray(unmatched)[near.any(axis=1)] if len(unmatched) else []:
        feats[j]["missed_by"] = []
    missed = [
        j
        for j, seen in zip(unmatched, near.any(axis=1), strict=True)
        if not seen and covered(here, est[j][0][None, :2])[0]
    ]
    missed_xyz = np.array([est[j][0] for j in missed]).reshape(-1, 3)
    near_map = near[:, new].any(axis=0) if len(unmatched) else np.zeros(len(new), bool)
    where_looked = covered(looked, new_xyz[:, :2]) & ~near_map
    in_looked = [k for k in range(len(new)) if where_looked[k]]
    moves = moved_pairs(
        name,
        missed_xyz,
        [_map_sign_key(feats[j]) for j in missed] if name == SIGNS else [],
        new_xyz[in_looked],
        [_sign_key(pts[new[k]][1]) for k in in_looked] if name == SIGNS else [],
        rules.max_move_m,
        lambda a, b: _signs_alike(a, b, config),
    )
    moved_to = {missed[a]: in_looked[b] for a, b in moves}  # map index -> index in new
    moved_from = {b: a for a, b in moved_to.items()}
    map_xyz = np.array([est[j][0] for j in live]).reshape(-1, 3)

    # Missed where this drive could have seen: gone once the last min_drives covering drives missed it.
    for j, nearest in zip(missed, nearest_m(missed_xyz, drive_xyz), strict=True):
        f = feats[j]
        f["missed_by"].append(drive_id)
        if len(f["missed_by"]) >= rules.min_drives:
            f["status"] = GONE
        if j in moved_to or f["id"] in continued:
            continue  # reported as moved
        report(
            REMOVED, f, est[j][0], est[j][0], f["n_obs"], nearest, len(f["missed_by"]), f["status"] == GONE
        )

    for f, props in confirmed:
        old = by_id.get(f.get("moved_from", -1))
        xyz = point_estimate(f)[0]
        old_xyz = None if old is None else point_estimate(old)[0]
        report(
            ADDED if old is None else MOVED,
            f,
            xyz,
            old_xyz,
            int(props.get("n_obs") or 0),
            None if old_xyz is None else float(np.linalg.norm(xyz[:2] - old_xyz[:2])),
            len(f["drives"]),
            f["status"] == MAPPED and (old is None or old["status"] == GONE),
        )

    # Seen for the first time: where the map had looked, a candidate (added, or moved from a missed one).
    nearest_map = nearest_m(new_xyz, map_xyz)
    for k, i in enumerate(new):
        xyz, props = pts[i]
        f = _new_point(state, name, xyz, props, drive_id)
        feats.append(f)
        if not where_looked[k]:
            continue
        f["status"] = MAPPED if rules.min_drives <= 1 else CANDIDATE
        old_j = moved_from.get(k)
        if old_j is None:
            report(
                ADDED, f, xyz, None, int(props.get("n_obs") or 0), nearest_map[k], 1, f["status"] == MAPPED
            )
            continue
        f["moved_from"] = feats[old_j]["id"]
        old_xyz = est[old_j][0]
        applied = f["status"] == MAPPED and feats[old_j]["status"] == GONE
        report(
            MOVED,
            f,
            xyz,
            old_xyz,
            int(props.get("n_obs") or 0),
            float(np.linalg.norm(np.asarray(xyz)[:2] - old_xyz[:2])),
            1,
            applied,
        )
    return changes


def _lane_sums(props: dict, length_m: float) -> dict:
    """A drive line's contribution to a merged line's properties, weighted by its length."""
    sums = {f"style_{props.get('style')}": length_m}
    for k in ("width_m", "dash_m", "gap_m"):
        if isinstance(props.get(k), (int, float)):
            sums[f"w_{k}"], sums[f"n_{k}"] = length_m * float(props[k]), length_m
    return sums


def _add_lanes(state: MergeState, drive: Drive, config: MergeConfig) -> None:
    """Fuse each of the drive's lane lines into the map line it overlaps most, else a new one (lanemerge)."""
    for line, props in drive.lanes:
        need = min(config.lane_min_overlap_m, 0.5 * line.length)
        best, best_m = None, need
        for lane in state.lanes:
            m = overlap_m(np.asarray(lane["xy"]), line, config.lane_gate_m)
            if m >= best_m:
                best, best_m = lane, m
        sums = _lane_sums(props, line.length)
        if best is None:
            xy = resample(line)
            # miss: product of (1 - confidence), a noisy-or over drives
            lane = {
                "id": state.new_id(),
                "xy": xy.tolist(),
                "w": [1.0] * len(xy),
                "sums": {},
                "drives": [],
                "miss": 1.0,
            }
            state.lanes.append(lane)
        else:
            lane = best
            xy, w = fuse(np.asarray(lane["xy"]), np.asarray(lane["w"]), line, 1.0, config.lane_gate_m)
            lane["xy"], lane["w"] = xy.tolist(), w.tolist()
        for k, v in sums.items():
            lane["sums"][k] = lane["sums"].get(k, 0.0) + v
        lane["miss"] *= 1.0 - _confidence(props)
        if drive.drive_id not in lane["drives"]:
            lane["drives"].append(drive.drive_id)


def _lane_feature(lane: dict) -> Feature:
    s = lane["sums"]
    line = LineString(lane["xy"])
    style = max((k for k in s if k.startswith("style_")), key=lambda k: s[k], default="style_None")[6:]
    props = {"id": lane["id"], "style": style}
    keys = ("width_m", "dash_m", "gap_m") if style == "dashed" else ("width_m",)
    props |= {k: round(s[f"w_{k}"] / s[f"n_{k}"], 3) for k in keys if s.get(f"n_{k}")}
    props |= {
        "length_m": round(line.length, 1),
        "n_drives": len(lane["drives"]),
        "drives": list(lane["drives"]),
        "confidence": round(1.0 - lane["miss"], 4),
    }
    return Feature(line, props)


def _add_drive_entry(state: MergeState, drive: Drive, config: MergeConfig) -> None:
    """The drive's medians and lane lines merged, and the drive recorded in the map (its poles and signs
    are merged tile by tile: :func:`_merge_points`)."""
    if any(d["id"] == drive.drive_id for d in state.drives):
        raise HdmapError(
            f"{drive.folder}: drive id {drive.drive_id!r} is already in the map; give another with --drive-id"
        )
    if drive.n_features == 0:
        log.warning(
            "%s: drive %s has no features; merged as a drive that saw nothing", drive.folder, drive.drive_id
        )
    _add_medians(state, drive)
    _add_lanes(state, drive, config)
    state.drives.append(
        {
            "id": drive.drive_id,
            "folder": str(drive.folder),
            "origin": None if drive.origin is None else drive.origin.to_dict(),
            "features": {name: len(p) for name, p in drive.points.items()}
            | {MEDIANS: len(drive.footprints), LANE_MARKINGS: len(drive.lanes)},
            "coverage": _wkb(drive.coverage),
            "classes": drive.classes,
        }
    )


def _merge_tile(
    tile: Tile,
    origin: LocalFrame,
    feats: dict[str, list[dict]],
    prior_seen: BaseGeometry | None,
    drives: list[TileDrive],
    config: MergeConfig,
) -> tuple[dict[str, list[dict]], list[Change]]:
    """One tile's Dask task (maptiles): the drives folded into its features in order, change detection
    included; returns the features and changes that lie inside the tile. New features have negative ids."""
    state = MergeState(origin=origin, points=feats, next_id=-(10**9))
    seen = prior_seen
    for d in drives:
        # Where the map's earlier drives had looked, and where this one could have seen (mapchanges).
        looked = None if seen is None else inside(seen, config.change.inside_m)
        here = inside(d.coverage, config.change.inside_m)
        drive = Drive(d.drive_id, Path(), None, d.points, [], d.coverage)
        for name in POINT_LAYERS:
            state.changes.extend(add_points(state, name, drive, config, looked, here))
        seen = d.coverage if seen is None else shapely.union(seen, d.coverage)
    owned = {}
    for name in POINT_LAYERS:
        xy = np.array([point_estimate(f)[0][:2] for f in state.points[name]]).reshape(-1, 2)
        owned[name] = [
            f for f, t in zip(state.points[name], tile_of(origin, xy, tile[2]), strict=True) if t == tile
        ]
    xy = np.array([c.xyz[:2] for c in state.changes]).reshape(-1, 2)
    changes = [c for c, t in zip(state.changes, tile_of(origin, xy, tile[2]), strict=True) if t == tile]
    return owned, changes


def _merge_points(
    state: MergeState,
    drives: list[TileDrive],
    prior_seen: BaseGeometry | None,
    config: MergeConfig,
    scheduler: str | None,
) -> None:
    """The drives' poles and signs merged into ``state`` tile by tile on Dask (maptiles)."""
    if not drives:
        return
    zoom = state.tile_zoom
    reached = tiles_reached(state.origin, shapely.union_all([d.coverage for d in drives]), zoom)
    if state.touched is not None:
        state.touched |= set(reached)
    xy = {
        name: np.array([point_estimate(f)[0][:2] for f in state.points[name]]).reshape(-1, 2)
        for name in POINT_LAYERS
    }
    drive_xy = [
        {name: np.array([p[0][:2] for p in pts]).reshape(-1, 2) for name, pts in d.points.items()}
        for d in drives
    ]
    tasks = []
    for tile in reached:
        near = tile_box(state.origin, tile).buffer(HALO_M, join_style="mitre")
        reach = near.buffer(INPUT_MARGIN_M, join_style="mitre")
        clip = reach.buffer(config.change.inside_m + 1.0, join_style="mitre")
        parts = [
            TileDrive(
                d.drive_id,
                {
                    name: [p for p, k in zip(pts, covered(reach, drive_xy[n][name]), strict=True) if k]
                    for name, pts in d.points.items()
                },
                d.coverage.intersection(clip),
            )
            for n, d in enumerate(drives)
        ]
        feats = {name: features_near(state.points[name], xy[name], near) for name in POINT_LAYERS}
        seen = None if prior_seen is None else prior_seen.intersection(clip)
        tasks.append(dask.delayed(_merge_tile)(tile, state.origin, feats, seen, parts, config))
    results = run_tiles(tasks, scheduler)
    # Untouched tiles keep their features; the tasks' come next, new ones numbered in tile order.
    reached_set = set(reached)
    for name in POINT_LAYERS:
        tiles = tile_of(state.origin, xy[name], zoom)
        state.points[name] = [
            f for f, t in zip(state.points[name], tiles, strict=True) if t not in reached_set
        ]
    order = {d.drive_id: k for k, d in enumerate(drives)}
    changes: list[tuple[int, int, Change]] = []
    for k, (owned, tile_changes) in enumerate(results):
        ids: dict[int, int] = {}
        for name in POINT_LAYERS:
            for f in owned[name]:
                if f["id"] < 0:
                    ids[f["id"]] = f["id"] = state.new_id()
                state.points[name].append(f)
        for name in POINT_LAYERS:
            for f in owned[name]:
                if "moved_from" in f:
                    f["moved_from"] = ids.get(f["moved_from"], f["moved_from"])
        for c in tile_changes:
            c.feature_id = ids.get(c.feature_id, c.feature_id)
            if c.from_id is not None:
                c.from_id = ids.get(c.from_id, c.from_id)
            changes.append((order[c.drive_id], k, c))
    state.changes.extend(c for _, _, c in sorted(changes, key=lambda t: t[:2]))


def map_layers(state: MergeState) -> MapLayers:
    """The merged map's layers in the world frame, with their properties (docs/map.md)."""
    coverages = [_from_wkb(d["coverage"]) for d in state.drives]
    for c in coverages:
        shapely.prepare(c)
    layers: MapLayers = {}
    for name in POINT_LAYERS:
        out = []
        for f in state.points[name]:
            if f["status"] != MAPPED:
                continue
            xyz, sigma_m = point_estimate(f)
            s = f["sums"]
            props = {
                "id": f["id"],
                "type": name[:-1],
                "n_drives": len(f["drives"]),
                # a drive that saw it could see it, though poles beyond the kerb lie outside the ground it saw
                "n_covered": sum(
                    d["id"] in f["drives"] or bool(c.covers(Point(xyz[0], xyz[1])))
                    for d, c in zip(state.drives, coverages, strict=True)
                ),
                "n_obs": f["n_obs"],
                "first_seen": f["first_seen"],
                "last_seen": f["last_seen"],
                "confidence": round(1.0 - f["miss"], 4),
                "sigma_m": round(sigma_m, 4),
                "drives": list(f["drives"]),
            }
            if name == SIGNS:
                props["facing_deg"] = round(_facing_deg(s), 2)
                for k in SIGN_MEANS:
                    if s.get(f"n_{k}"):
                        props[k] = round(s[f"w_{k}"] / s[f"n_{k}"], 3)
            out.append(Feature(Point(*xyz), props))
        layers[name] = out
    medians = []
    for m in state.medians:
        props = {
            "id": m["id"],
            "n_drives": len(m["drives"]),
            "drives": list(m["drives"]),
            "confidence": round(m["conf_sum"] / m["n_parts"], 4),
        }
        footprint = _from_wkb(m["footprint"])
        medians.append(Feature(footprint, {**props, "kind": FOOTPRINT, "area_m2": round(footprint.area, 2)}))
        if m["centerline"] is not None:
            line = _from_wkb(m["centerline"])
            medians.append(Feature(line, {**props, "kind": CENTERLINE, "length_m": round(line.length, 2)}))
    layers[MEDIANS] = medians
    if state.lanes:
        layers[LANE_MARKINGS] = [_lane_feature(lane) for lane in state.lanes]
    union = shapely.union_all(coverages) if coverages else shapely.Polygon()
    layers[COVERAGE] = (
        [Feature(union, {"area_m2": round(union.area, 1), "n_drives": len(coverages)})]
        if not union.is_empty
        else []
    )
    return layers


# ------------------------------------------------------------------------------------ map folders


def read_map(folder: Path) -> MergeState:
    """An hdmap-merge map folder's state; a folder that another tool wrote is a one-line error."""
    path = folder / MANIFEST
    if not folder.is_dir():
        raise HdmapError(f"{folder}: map folder not found")
    if not path.is_file():
        raise HdmapError(f"{folder}: not a map written by hdmap-merge (no {MANIFEST})")
    try:
        data = json.loads(read_text(path, "hdmap-merge manifest"))
    except ValueError as err:
        raise HdmapError(f"{path}: not valid JSON ({err})") from None
    state = MergeState.from_json(data, path)
    for name in (*POINT_LAYERS, MEDIANS, COVERAGE):
        if not (folder / f"{name}.geojson").is_file():
            raise HdmapError(f"{folder / f'{name}.geojson'}: missing from the hdmap-merge map")
    return state


def write_map(state: MergeState, folder: Path, gpkg: bool = True) -> list[Path]:
    """Write the whole map into a temporary folder beside ``folder``, then swap it in: an interrupted
    write leaves the old map as it was (at worst in ``.<name>.old-*`` if killed between the two renames)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp, old = folder.parent / f".{folder.name}.tmp-{tag}", folder.parent / f".{folder.name}.old-{tag}"
    tmp.mkdir()  # not mkdtemp: the map keeps the umask's permissions, not 0700
    moved = False
    try:
        layers = map_layers(state)
        paths = write_layers(layers, tmp, state.origin, gpkg=gpkg)
        _write_tiles(state, layers, folder / TILES, tmp / TILES)
        changes = [c.feature() for c in state.changes]
        paths.append(write_geojson(tmp / f"{CHANGES}.geojson", changes, state.origin, name=CHANGES))
        write_text_atomic(tmp / MANIFEST, json.dumps(state.to_json(), allow_nan=False) + "\n")
        if folder.exists():
            os.rename(folder, old)
            moved = True
        os.rename(tmp, folder)
    except BaseException:
        if moved and not folder.exists():
            os.rename(old, folder)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if moved:
        shutil.rmtree(old, ignore_errors=True)
    return [folder / p.name for p in paths] + [folder / MANIFEST]


def _write_tiles(state: MergeState, layers: MapLayers, old_dir: Path, new_dir: Path) -> None:
    """Each tile's poles and signs in ``TILES/z/x/y/``: the tiles this run recomputed are written, the others
    linked from the old map unchanged (so a tile's files are rewritten only when a drive reaches it)."""
    by_tile: dict[Tile, dict[str, list[Feature]]] = {}
    for name in POINT_LAYERS:
        feats = layers.get(name, [])
        xy = np.array([[f.geometry.x, f.geometry.y] for f in feats]).reshape(-1, 2)
        for f, tile in zip(feats, tile_of(state.origin, xy, state.tile_zoom), strict=True):
            by_tile.setdefault(tile, {n: [] for n in POINT_LAYERS})[name].append(f)
    for (x, y, z), tile_layers in by_tile.items():
        rel = Path(str(z)) / str(x) / str(y)
        old = [old_dir / rel / f"{name}.geojson" for name in POINT_LAYERS]
        if state.touched is not None and (x, y, z) not in state.touched and all(p.is_file() for p in old):
            (new_dir / rel).mkdir(parents=True)
            for p in old:
                try:
                    os.link(p, new_dir / rel / p.name)
                except OSError:  # a file system without hard links
                    shutil.copy2(p, new_dir / rel / p.name)
        else:
            write_layers(tile_layers, new_dir / rel, state.origin, gpkg=False)


def remove_stale_map_copies(folder: Path) -> int:
    """Delete the temporary map folders of killed merges into ``folder`` (call it holding the lock); the files
    a killed single-file writer leaves are :func:`hdmap_seg.io.remove_stale_temps`'s."""
    stale = list(folder.parent.glob(f".{glob.escape(folder.name)}.tmp-*"))
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


def merge_drives(
    folders: list[Path],
    drive_ids: list[str] | None = None,
    state: MergeState | None = None,
    config: MergeConfig | None = None,
    progress: bool = False,
    scheduler: str | None = None,
) -> MergeState:
    """Add the drives in ``folders`` (ids: ``drive_ids`` or :func:`default_drive_id`) to ``state`` (None:
    a new map in the first drive's recorded origin, else at its coverage's centre); checks ids before
    reading any drive, and each drive's place as it is read, before anything is written."""
    config = config or MergeConfig()
    if drive_ids is not None and len(drive_ids) != len(folders):
        raise HdmapError(
            f"{len(drive_ids)} --drive-id for {len(folders)} drive folders; give one each or none"
        )
    for f in folders:
        if not Path(f).is_dir():
            raise HdmapError(f"{f}: drive layers folder not found")
    ids = list(drive_ids) if drive_ids is not None else [default_drive_id(Path(f)) for f in folders]
    known = {d["id"] for d in state.drives} if state else set()
    seen: dict[str, Path] = {}
    for f, i in zip(folders, ids, strict=True):
        if i in seen or i in known:
            where = f"{seen[i]} and {f}" if i in seen else f"{f} and the map"
            raise HdmapError(f"{f}: duplicate drive id {i!r} ({where}); give unique ones with --drive-id")
        seen[i] = Path(f)
    origins = [drive_origin(Path(f)) for f in folders]
    if state is None:
        first = next((o for o in origins if o is not None), None)
        if first is None:
            # No drive records its origin: any frame serves, the layers being WGS84; the first coverage's centre.
            cov = read_geojson(Path(folders[0]) / f"{COVERAGE}.geojson") if folders else []
            c = shapely.union_all([g for g, _ in cov]).centroid if cov else None
            first = (
                LocalFrame(c.y, c.x, 0.0) if c is not None and not c.is_empty else LocalFrame(0.0, 0.0, 0.0)
            )
        state = MergeState(origin=first, tile_zoom=config.tile_zoom or DEFAULT_TILE_ZOOM)
    elif config.tile_zoom is not None and config.tile_zoom != state.tile_zoom:
        raise HdmapError(
            f"--tile-zoom {config.tile_zoom}: the map's tiles are zoom {state.tile_zoom} ({MANIFEST}); "
            "a map keeps the zoom it was made with"
        )
    # Drives are read one at a time; only their poles, signs and coverage are kept for the tiles (a bad
    # file or place further on stops the run before anything is written).
    # Where the map's drives before this run had looked (change detection).
    prior_seen = shapely.union_all([_from_wkb(d["coverage"]) for d in state.drives]) if state.drives else None
    pairs = list(zip(folders, ids, strict=True))
    # On a terminal only (None), and gone when done: an error stays one line.
    bar = tqdm(
        pairs, desc="merge", unit="drive", leave=False, disable=None if progress and len(pairs) > 1 else True
    )
    kept = []
    classes_ref = next((d.get("classes") for d in state.drives if d.get("classes") is not None), None)
    for f, i in bar:
        drive = read_drive(Path(f), i, state.origin)
        # The layers are WGS84 and each drive's origin only the frame it was computed in (its first frame's
        # position unless vectorized with --origin), so origins may differ; layers far from the map's are
        # another place, or coordinates written in another frame than their file says.
        gap_m = float(drive.coverage.distance(Point(0.0, 0.0))) if not drive.coverage.is_empty else 0.0
        if gap_m > config.max_origin_distance_m:
            raise HdmapError(
                f"{f}: layers {gap_m / 1000:.1f} km from the map's origin {state.origin.to_dict()} "
                f"(at most {config.max_origin_distance_m / 1000:g} km): another place or world frame"
            )
        _warn_other_classes(drive, classes_ref)
        if classes_ref is None:
            classes_ref = drive.classes
        _add_drive_entry(state, drive, config)
        kept.append(TileDrive(drive.drive_id, drive.points, drive.coverage))
    _merge_points(state, kept, prior_seen, config, scheduler)
    return state
