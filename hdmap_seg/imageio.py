"""Image files in and out, for every stage: frames and masks read from disk, image sizes read from
the header or checked by a full decode, and PNG/JPEG written atomically.

One module, so that a file that cannot be read is the same one-line :class:`HdmapError` wherever it
is met, and no image is written with ``cv2.imwrite``, whose False on failure is easily lost: images
are encoded in memory, checked, and published by :func:`hdmap_seg.io.write_bytes_atomic`.
In memory, arrays are RGB (:func:`read_image`); the writers take OpenCV's channel order.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import PIL.Image

from hdmap_seg.errors import HdmapError
from hdmap_seg.io import write_bytes_atomic

#: The suffixes of the frames the data sets and drive logs hold (any case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: What PIL raises for a file it cannot decode in full (a truncated PNG or JPEG raises OSError).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, PIL.Image.DecompressionBombError)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise HdmapError(f"{path}: cannot be read as an image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """``(H, W)`` uint8 label values of a grey or palette PNG (a read-only array).

    PIL, not OpenCV: OpenCV expands palette PNGs (Mapillary Vistas) to colours, PIL keeps the indices.
    """
    try:
        with PIL.Image.open(path) as img:
            if img.mode not in ("L", "P"):
                raise HdmapError(
                    f"{path}: a mask must be a single-channel 8-bit PNG of class ids, got PIL mode {img.mode}"
                )
            return np.asarray(img)
    except FileNotFoundError:
        raise HdmapError(f"{path}: mask not found") from None
    except DECODE_ERRORS as err:
        raise HdmapError(f"{path}: cannot be read as a mask ({err})") from None


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` from the image's header alone: fast, but a truncated file passes
    (:func:`decoded_image_size` catches those)."""
    try:
        with PIL.Image.open(path) as img:
            width, height = img.size
    except DECODE_ERRORS:  # PIL.UnidentifiedImageError is an OSError
        raise HdmapError(f"{path}: cannot be read as an image") from None
    return height, width


def decoded_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(height, width)`` of an image file that decodes in full.

    The header alone does not tell a truncated file (a copy cut short, a full disk), and OpenCV, which
    training reads with, returns a truncated JPEG with grey rows and only a warning: PIL raises. A JPEG
    is decoded at 1/8 scale (every byte of it is still read and entropy-decoded), a third faster.
    """
    try:
        with PIL.Image.open(path) as img:
            width, height = img.size
            if img.format == "JPEG":
                img.draft(img.mode, (max(width // 8, 1), max(height // 8, 1)))
            img.load()
    except DECODE_ERRORS as err:
        raise HdmapError(f"{path}: cannot be decoded as an image ({err})") from None
    return height, width


def encode_image(image: np.ndarray, suffix: str, params: Sequence[int] = ()) -> bytes:
    """``image`` (OpenCV's channel order) encoded in memory as ``suffix`` (``.png``, ``.jpg``)."""
    ok, buf = cv2.imencode(suffix, image, list(params))
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {image.dtype} image as {suffix}")
    return buf.tobytes()


def write_image_atomic(path: str | os.PathLike, image: np.ndarray, params: Sequence[int] = ()) -> None:
    """Encode ``image`` (BGR or single channel) in the format of ``path``'s suffix and write it atomically.

    Encoding in memory first means a failed write is an exception, never a half file (``cv2.imwrite``
    only returns False).
    """
    write_bytes_atomic(path, encode_image(image, Path(path).suffix, params))
