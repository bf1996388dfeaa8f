"""Contact sheets: a glance at what a data set or a drive log holds."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from hdmap_seg.data.classes import ROAD_CLASSES
from hdmap_seg.errors import HdmapError
from hdmap_seg.imageio import read_image, read_mask, write_image_atomic


def write_contact_sheet(
    path: str | os.PathLike, images: Iterable[Path], masks: Iterable[Path], width: int = 1600
) -> None:
    """A PNG grid: each frame beside itself with its label mask overlaid in the class colours."""
    lut = ROAD_CLASSES.palette()
    rows = []
    for ip, mp_ in zip(images, masks, strict=True):
        try:
            img, mask = read_image(ip), read_mask(mp_)
        except HdmapError:
            continue  # a glance, not a check: a pair that cannot be read is left out
        overlay = img.copy()
        labelled = mask > 0
        overlay[labelled] = (0.45 * img[labelled] + 0.55 * lut[mask[labelled]]).astype(np.uint8)
        rows.append(np.hstack([img, overlay]))
    if not rows:
        return
    sheet = np.vstack(rows)
    scale = min(1.0, width / sheet.shape[1])
    sheet = cv2.resize(sheet, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    write_image_atomic(path, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
