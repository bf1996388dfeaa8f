"""GeoJSON (RFC 7946) and GeoPackage output of map layers, and reading GeoJSON layers back.

RFC 7946: WGS84 longitude, latitude (and altitude in metres for points), exterior rings counter-
clockwise and holes clockwise, no ``crs`` member. Coordinates are snapped to 8 decimals (about 1 mm) and
the snapped geometry is checked valid; altitudes are kept to the millimetre. Files are written
atomically (:mod:`hdmap_seg.io`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pyproj
import shapely
from shapely.geometry import LineString, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from hdmap_seg.errors import HdmapError
from hdmap_seg.geo.frames import LocalFrame
from hdmap_seg.io import atomic_path, write_text_atomic
from hdmap_seg.maplayers import (
    CENTERLINE,
    FOOTPRINT,
    LANE_MARKINGS,
    MEDIANS,
    POLES,
    SIGNS,
    Feature,
    MapLayers,
)

DECIMALS = 8
GRID_DEG = 10.0**-DECIMALS
ALT_DECIMALS = 3
#: A GeoPackage layer holds one geometry type: the medians' centre lines are a layer of their own there.
MEDIAN_CENTERLINES = "median_centerlines"


def to_wgs84(geom: BaseGeometry, origin: LocalFrame) -> BaseGeometry:
    """A world-frame geometry -> WGS84 lon/lat(/alt), snapped to 8 decimals, valid, CCW exteriors.

    Lines and polygons that cross the antimeridian are cut there into a Multi- geometry (RFC 7946,
    3.1.9), never drawn the long way round the Earth. Lines stay lines and polygons polygons: what
    snapping collapses (a sliver narrower than the grid) is dropped, and the result may be empty.
    """
    if geom.geom_type in ("Point", "MultiPoint"):
        return shapely.transform(geom, origin.wgs84_from_world_points, include_z=geom.has_z)

    def lonlat_unwrapped(xyz: np.ndarray) -> np.ndarray:
        # longitudes continuous across the origin's meridian (pyproj wraps them to [-180, 180])
        out = origin.wgs84_from_world_points(xyz)
        out[:, 0] = origin.lon0 + (out[:, 0] - origin.lon0 + 180.0) % 360.0 - 180.0
        return out

    dim = 2 if geom.geom_type.endswith("Polygon") else 1
    out = _cut_at_antimeridian(shapely.transform(geom, lonlat_unwrapped, include_z=geom.has_z), dim)
    try:
        out = shapely.set_precision(out, GRID_DEG)
    except shapely.errors.GEOSException:
        # GEOS's snap-rounding gives up on some rings that nearly touch ("unable to assign free hole to
        # a shell"): round the vertices alone, then repair what the rounding made invalid.
        out = shapely.set_precision(out, GRID_DEG, mode="pointwise")
    if not out.is_valid:
        out = _collect(shapely.make_valid(out), dim)
    return shapely.orient_polygons(out, exterior_cw=False)


def to_world(geom: BaseGeometry, origin: LocalFrame) -> BaseGeometry:
    """A WGS84 lon/lat(/alt) geometry (as :func:`read_geojson` gives it) -> the ``world`` frame of
    ``origin``, metres; a 2-D geometry stays 2-D (taken at the origin's altitude)."""

    def world(lonlat: np.ndarray) -> np.ndarray:
        padded = np.c_[lonlat, np.zeros(len(lonlat))] if lonlat.shape[1] == 2 else lonlat
        return origin.world_from_wgs84_points(padded)[:, : lonlat.shape[1]]

    return shapely.transform(geom, world, include_z=geom.has_z)


def _cut_at_antimeridian(geom: BaseGeometry, dim: int) -> BaseGeometry:
    """A lon/lat line (``dim`` 1) or polygon (2) reaching past longitude +-180 -> its pieces moved into
    [-180, 180]."""
    x0, _, x1, _ = geom.bounds
    if geom.is_empty or (x0 >= -180.0 and x1 <= 180.0):
        return geom
    pieces = []
    for shift in (-360.0, 0.0, 360.0):
        piece = geom.intersection(shapely.box(-180.0 - shift, -90.0, 180.0 - shift, 90.0))
        pieces.append(shapely.transform(piece, lambda p, s=shift: p + [s, 0.0]))
    return _collect(shapely.GeometryCollection(pieces), dim)


def _collect(geom: BaseGeometry, dim: int) -> BaseGeometry:
    """The parts of ``geom`` of dimension ``dim`` (1: lines, 2: polygons) as one geometry: a single part
    as it is, several as a Multi- geometry, none as an empty one."""
    parts = [
        g
        for g in shapely.get_parts(shapely.get_parts(shapely.get_parts(geom)))  # collections, then multis
        if shapely.get_dimensions(g) == dim and not g.is_empty
    ]
    if len(parts) == 1:
        return parts[0]
    if dim == 2:
        return shapely.multipolygons(parts) if parts else Polygon()
    return shapely.multilinestrings(parts) if parts else LineString()


def _round(coords):
    if isinstance(coords, (tuple, list)) and coords and isinstance(coords[0], (int, float)):
        return [round(float(v), DECIMALS if i < 2 else ALT_DECIMALS) for i, v in enumerate(coords)]
    return [_round(c) for c in coords]


def _clean(value):
    """JSON-safe property values: numpy scalars to Python, NaN to null."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def feature_collection(features: list[Feature], origin: LocalFrame, name: str) -> dict:
    """An RFC 7946 FeatureCollection dict of world-frame features."""
    out = []
    for f in features:
        geom = to_wgs84(f.geometry, origin)
        if geom.is_empty:
            continue
        g = mapping(geom)
        g = {"type": g["type"], "coordinates": _round(g["coordinates"])}
        out.append(
            {"type": "Feature", "geometry": g, "properties": {k: _clean(v) for k, v in f.properties.items()}}
        )
    return {"type": "FeatureCollection", "name": name, "features": out}


def write_geojson(
    path: str | os.PathLike, features: list[Feature], origin: LocalFrame, name: str | None = None
) -> Path:
    """Write one layer as a GeoJSON FeatureCollection, atomically."""
    path = Path(path)
    fc = feature_collection(features, origin, name or path.stem)
    write_text_atomic(path, json.dumps(fc, allow_nan=False, separators=(",", ":")) + "\n")
    return path


def read_geojson(path: str | os.PathLike) -> list[tuple[BaseGeometry, dict]]:
    """Read a FeatureCollection: ``[(shapely geometry in lon/lat(/alt), properties)]``."""
    path = Path(path)
    if not path.is_file():
        raise HdmapError(f"{path}: GeoJSON file not found")
    try:
        data = json.loads(path.read_text())
        if data.get("type") != "FeatureCollection":
            raise ValueError("not a FeatureCollection")
        crs = _named_crs(data.get("crs"))
        features = [(shape(f["geometry"]), dict(f.get("properties") or {})) for f in data["features"]]
    except (ValueError, KeyError, TypeError, AttributeError, shapely.errors.GEOSException) as err:
        raise HdmapError(f"{path}: not a GeoJSON FeatureCollection ({err})") from None
    if crs is not None and not _is_wgs84(crs):
        raise HdmapError(
            f"{path}: coordinates in {crs}; GeoJSON layers here are WGS84 lon/lat (RFC 7946): reproject them "
            "(e.g. ogr2ogr -t_srs EPSG:4326) or write them again with hdmap-vectorize"
        )
    return features


def _named_crs(member) -> str | None:
    """The name in a (pre-RFC 7946) ``crs`` member, None when there is none."""
    if member is None:
        return None
    return str(member["properties"]["name"])


def _is_wgs84(name: str) -> bool:
    """Whether a CRS name is WGS84 longitude/latitude (axis order aside: GeoJSON is always lon, lat)."""
    try:
        crs = pyproj.CRS.from_user_input(name)
    except pyproj.exceptions.CRSError:
        return False
    return crs.is_geographic and crs.equals(pyproj.CRS.from_epsg(4326), ignore_axis_order=True)


def _gpkg_layers(layers: MapLayers) -> dict[str, list[Feature]]:
    """GeoPackage layers hold one geometry type each: medians split into footprints and centre lines."""
    out: dict[str, list[Feature]] = {}
    for name, feats in layers.items():
        if name == MEDIANS:
            out[MEDIANS] = [f for f in feats if f.properties.get("kind") == FOOTPRINT]
            out[MEDIAN_CENTERLINES] = [f for f in feats if f.properties.get("kind") == CENTERLINE]
        else:
            out[name] = feats
    return out


def write_geopackage(path: str | os.PathLike, layers: MapLayers, origin: LocalFrame) -> Path:
    """Write every layer into one GeoPackage (EPSG:4326), atomically; empty layers are kept, typed."""
    import pyogrio.raw

    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.unlink()
        for name, feats in _gpkg_layers(layers).items():
            geoms = [to_wgs84(f.geometry, origin) for f in feats]
            keys = list(dict.fromkeys(k for f in feats for k in f.properties))
            columns = []
            for k in keys:
                vals = [_clean(f.properties.get(k)) for f in feats]
                kinds = {type(v) for v in vals if v is not None}
                if kinds <= {int} and None not in vals:
                    columns.append(np.array(vals, np.int64))
                elif kinds <= {int, float} and kinds:
                    columns.append(np.array([np.nan if v is None else v for v in vals], np.float64))
                else:
                    columns.append(np.array(["" if v is None else str(v) for v in vals], object))
            geom_type = _layer_geometry_type(name, geoms)
            pyogrio.raw.write(
                str(tmp),
                np.array(shapely.to_wkb(geoms), dtype=object) if geoms else np.array([], dtype=object),
                columns,
                keys,
                layer=name,
                driver="GPKG",
                geometry_type=geom_type,
                crs="EPSG:4326",
                promote_to_multi=False,
                append=False,
            )
    return path


def _layer_geometry_type(name: str, geoms: list[BaseGeometry]) -> str:
    types = {g.geom_type for g in geoms}
    if len(types) == 1:
        t = types.pop()
        return f"{t} Z" if geoms[0].has_z else t
    if not types:
        lines = {MEDIAN_CENTERLINES: "LineString", LANE_MARKINGS: "LineString"}
        return {POLES: "Point Z", SIGNS: "Point Z", **lines}.get(name, "Polygon")
    return "Unknown"


def write_layers(
    layers: MapLayers, out_dir: str | os.PathLike, origin: LocalFrame, gpkg: bool = True
) -> list[Path]:
    """Write ``<layer>.geojson`` for every layer (and ``map.gpkg`` with all of them) into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [
        write_geojson(out_dir / f"{name}.geojson", feats, origin, name) for name, feats in layers.items()
    ]
    if gpkg:
        paths.append(write_geopackage(out_dir / "map.gpkg", layers, origin))
    return paths
