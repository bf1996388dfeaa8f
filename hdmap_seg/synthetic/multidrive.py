"""One world driven several times, for map building from many drives and change detection.

Drive ``k`` of a world (``--drives``) takes its own lane and direction (:func:`drive_plan`), its
own light and start; drives from ``edit_from_drive`` on see an edited version of the world
(:func:`edit_world`): poles removed, signs added, signs moved. Objects keep their ids across
versions, so the ground truth of two drives names the same pole the same way, and the list of
edits (:func:`write_edits`) says what changed between the versions in the truth's own terms.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from shapely.geometry import Point

from hdmap_seg.errors import HdmapError
from hdmap_seg.export.geojson import ALT_DECIMALS, DECIMALS, write_geojson
from hdmap_seg.geo.frames import LocalFrame
from hdmap_seg.maplayers import POLES, SIGNS, Feature
from hdmap_seg.synthetic.world import CrossSection, Pole, Sign, World, post_sign, relight

#: Extra start of a later drive along the road (m): enough to see the world from other places,
#: little enough that all drives share most of their stretch.
START_OFFSET_M = (-5.0, 5.0)
#: How far a moved sign goes along the road (m), either way.
MOVE_M = (2.0, 4.0)
REMOVED, ADDED, MOVED = "removed", "added", "moved"


@dataclass(frozen=True)
class DrivePlan:
    """How drive ``k`` of a world differs from drive 0: ``direction`` +1 drives the world's ego
    carriageway (towards increasing ``s``), -1 the other one; ``lane`` is a lane of that
    carriageway (0 = next to the median) and ``lane_d_m`` the ``d`` of its centre."""

    direction: int
    lane: int
    lane_d_m: float
    start_offset_m: float


def drivable_lanes(section: CrossSection, ego_lane: int, direction: int) -> list[int]:
    """The lanes a drive of ``direction`` may take, the world's ego lane first on its carriageway."""
    n = section.lanes_per_direction
    if direction > 0:
        return [ego_lane] + [k for k in range(n) if k != ego_lane]
    # With two lanes or more, cars are parked in the far carriageway's outer lane.
    return list(range(n - 1)) if n >= 2 else [0]


def drive_plan(world: World, index: int, rng: np.random.Generator) -> DrivePlan:
    """Drive ``index``'s lane, direction and start; drive 0 is the world's usual drive.

    Even drives go the ego way, odd drives the other way, each cycling through the lanes of its
    carriageway, so that two drives differ in direction and, where the road has more than one
    lane, later ones in lane too.
    """
    direction = 1 if index % 2 == 0 else -1
    lanes = drivable_lanes(world.section, world.ego_lane, direction)
    lane = lanes[(index // 2) % len(lanes)]
    d_m = world.section.lane_center_m(lane) * (1.0 if direction > 0 else -1.0)
    offset_m = 0.0 if index == 0 else float(rng.uniform(*START_OFFSET_M))
    return DrivePlan(direction, lane, d_m, offset_m)


def drive_world(world: World, plan: DrivePlan, index: int, rng: np.random.Generator) -> World:
    """``world`` as drive ``index`` sees it: under its own light (drive 0: the world's), without
    the cars of the lane it drives (they would drive through it)."""
    half_lane_m = 0.5 * world.section.lane_width_m
    vehicles = tuple(v for v in world.vehicles if abs(v.d_m - plan.lane_d_m) >= half_lane_m)
    style = world.style if index == 0 else relight(world.style, rng)
    return replace(world, vehicles=vehicles, style=style)


@dataclass(frozen=True)
class WorldEdit:
    """One change between two versions of a world: ``change`` (removed / added / moved) of the
    object ``id`` of ``layer`` (poles / signs); its old and new world points ``(x, y, z)`` (the
    points the ground truth holds: a pole's base, a sign plate's centre), None where it has none."""

    change: str
    layer: str
    id: int
    old_xyz_m: tuple[float, float, float] | None
    new_xyz_m: tuple[float, float, float] | None


def edit_world(
    world: World,
    remove_poles: int,
    add_signs: int,
    move_signs: int,
    s_range_m: tuple[float, float],
    rng: np.random.Generator,
) -> tuple[World, list[WorldEdit]]:
    """The world after the edits, and the edits: poles removed, signs added on their own posts,
    signs on posts moved along the road, all on the stretch ``s_range_m`` (what every drive sees).

    A removed pole takes the signs it carries with it (each listed as a removed sign). Added
    signs take new ids after the largest; nothing else changes its id.
    """
    road, sec, ground = world.road, world.section, world.terrain
    s_lo, s_hi = s_range_m

    def on_stretch(x_m: float, y_m: float) -> bool:
        s, _ = road.road_coords(np.array([x_m]), np.array([y_m]))
        return bool(s_lo <= s[0] <= s_hi)

    removable = [p for p in world.poles if on_stretch(p.x_m, p.y_m)]
    movable = [sg for sg in world.signs if sg.pole_id < 0 and on_stretch(sg.x_m, sg.y_m)]
    where = f"on the drives' common stretch (s {s_lo:.0f}-{s_hi:.0f} m)"
    if remove_poles > len(removable):
        raise HdmapError(
            f"--edits: {len(removable)} poles {where}, cannot remove {remove_poles}: "
            "drive longer (--frames-per-log) or ask for fewer"
        )
    if move_signs > len(movable):
        raise HdmapError(
            f"--edits: {len(movable)} signs on posts {where}, cannot move {move_signs}: "
            "drive longer (--frames-per-log) or ask for fewer"
        )
    edits: list[WorldEdit] = []
    gone = {removable[k].id for k in sorted(rng.choice(len(removable), remove_poles, replace=False))}
    poles = tuple(p for p in world.poles if p.id not in gone)
    for p in world.poles:
        if p.id in gone:
            edits.append(WorldEdit(REMOVED, POLES, p.id, (p.x_m, p.y_m, p.z0_m), None))

    signs = {sg.id: sg for sg in world.signs if sg.pole_id not in gone}
    for sg in world.signs:
        if sg.pole_id in gone:
            edits.append(WorldEdit(REMOVED, SIGNS, sg.id, _sign_xyz(sg), None))
    for k in sorted(rng.choice(len(movable), move_signs, replace=False)):
        sg = movable[k]
        moved = _moved_sign(world, poles, list(signs.values()), sg, rng)
        signs[sg.id] = moved
        edits.append(WorldEdit(MOVED, SIGNS, sg.id, _sign_xyz(sg), _sign_xyz(moved)))

    next_id = max((sg.id for sg in world.signs), default=-1) + 1  # a removed id stays unused
    for _ in range(add_signs):
        for _attempt in range(200):
            s_m = float(rng.uniform(s_lo, s_hi))
            side = -1 if rng.random() < 0.5 else 1
            sg = post_sign(rng, road, sec, ground, poles, s_m, side, next_id)
            if sg is not None and _clear_of_signs(sg.x_m, sg.y_m, signs.values()):
                break
        else:
            raise HdmapError(f"--edits: no free place for {add_signs} new signs {where}")
        signs[next_id] = sg
        edits.append(WorldEdit(ADDED, SIGNS, next_id, None, _sign_xyz(sg)))
        next_id += 1
    edited = replace(world, poles=poles, signs=tuple(signs[k] for k in sorted(signs)))
    return edited, edits


def _sign_xyz(sg: Sign) -> tuple[float, float, float]:
    return (sg.x_m, sg.y_m, sg.centre_z_m)


def _clear_of_signs(
    x_m: float, y_m: float, signs: Iterable[Sign], skip_id: int = -1, min_m: float = 2.0
) -> bool:
    return all(np.hypot(o.x_m - x_m, o.y_m - y_m) >= min_m for o in signs if o.id != skip_id)


def _moved_sign(
    world: World, poles: Iterable[Pole], signs: list[Sign], sg: Sign, rng: np.random.Generator
) -> Sign:
    """``sg`` moved a few metres along the road at its offset, turned with the road, on the ground there."""
    road = world.road
    s0, d0 = road.road_coords(np.array([sg.x_m]), np.array([sg.y_m]))
    _, _, h0 = road.pose_at(s0[0])
    for _attempt in range(50):
        ds_m = float(rng.uniform(*MOVE_M)) * (1.0 if rng.random() < 0.5 else -1.0)
        s1 = s0[0] + ds_m
        x, y = (float(v) for v in road.point_at(s1, d0[0]))
        clear_of_poles = all(np.hypot(p.x_m - x, p.y_m - y) >= 1.5 for p in poles)
        if clear_of_poles and _clear_of_signs(x, y, signs, skip_id=sg.id):
            _, _, h1 = road.pose_at(s1)
            z = float(world.terrain.height_m(s1, d0[0]))
            return replace(sg, x_m=x, y_m=y, facing_rad=sg.facing_rad + float(h1 - h0), ground_z_m=z)
    raise HdmapError(f"--edits: no free place to move sign {sg.id} to")


def write_edits(path: str | os.PathLike, edits: list[WorldEdit], from_drive: int, origin: LocalFrame) -> Path:
    """The edits as a GeoJSON FeatureCollection: a Point per edit where the object is afterwards
    (where it was, for a removal), with ``change``, ``layer``, ``id``, ``from_drive`` (the first
    drive that sees the edited world) and ``old``/``new`` ``[lon, lat, alt]`` (null where none)."""

    def lonlat(xyz: tuple[float, float, float] | None) -> list[float] | None:
        if xyz is None:
            return None
        lon, lat, alt = origin.wgs84_from_world_points(np.array([xyz], float))[0]
        return [round(float(lon), DECIMALS), round(float(lat), DECIMALS), round(float(alt), ALT_DECIMALS)]

    feats = [
        Feature(
            Point(e.new_xyz_m if e.new_xyz_m is not None else e.old_xyz_m),
            {
                "change": e.change,
                "layer": e.layer,
                "id": e.id,
                "from_drive": from_drive,
                "old": lonlat(e.old_xyz_m),
                "new": lonlat(e.new_xyz_m),
            },
        )
        for e in edits
    ]
    return write_geojson(path, feats, origin, name="edits")
