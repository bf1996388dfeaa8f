"""Geo-referencing: WGS84 <-> local world frame, poses, KITTI raw files, cameras, drive logs."""
