"""Connected components of a binary mask, found through their outer contours.

``cv2.connectedComponentsWithStats`` spends about 3.7 ms on a 1242x375 mask; outer contours and
a fill of each one's bounding box take about 0.3 ms, and vectorizing must keep up with 100 frames/s.
A component's holes are filled, which is what an instance's extent needs.
"""

from __future__ import annotations

from collections.abc import Iterator

import cv2
import numpy as np


def components(
    binary: np.ndarray, min_pixels: int, min_bottom_row: int = 0
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(x0, y0, sub)`` per 8-connected component of at least ``min_pixels`` pixels.

    ``sub`` is a bool array of the component's bounding box (rows ``y0..``, columns ``x0..``).
    Components that end above row ``min_bottom_row`` are skipped before they are drawn.
    """
    binary = binary.astype(np.uint8, copy=False)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    for c in contours:
        x, y, w, h = cv2.boundingRect(c)
        if w * h < min_pixels or y + h - 1 < min_bottom_row:
            continue
        canvas = np.zeros((h, w), np.uint8)
        cv2.drawContours(canvas, [c], -1, 1, thickness=cv2.FILLED, offset=(-x, -y))
        sub = canvas.view(bool)
        if int(canvas.sum()) >= min_pixels:
            yield x, y, sub
