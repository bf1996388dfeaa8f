"""Map layers out: GeoJSON (RFC 7946) per layer and one GeoPackage."""

from hdmap_seg.export.geojson import read_geojson, write_geojson, write_geopackage, write_layers

__all__ = ["read_geojson", "write_geojson", "write_geopackage", "write_layers"]
