"""Class balance of a data set: pixel frequencies and median-frequency class weights for the loss."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from rich.progress import track

from hdmap_seg.data.dataset import Sample
from hdmap_seg.imageio import read_mask


def class_pixel_counts(
    samples: list[Sample], lut: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Count pixels per class over ``samples`` (masks read through ``lut``, file value -> training id).

    Returns ``(pixels, frame_pixels)``, both ``(num_classes,)`` int64: the pixels of each class, and
    the labelled (not ignored) pixels of the frames in which the class occurs at all.
    """

    def count(sample: Sample) -> np.ndarray:
        ids = lut[read_mask(sample.mask_path)].ravel()
        return np.bincount(ids[ids < num_classes], minlength=num_classes)[:num_classes]

    pixels = np.zeros(num_classes, np.int64)
    frame_pixels = np.zeros(num_classes, np.int64)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for c in track(
            pool.map(count, samples), description="counting pixels", total=len(samples), transient=True
        ):
            pixels += c
            frame_pixels += (c > 0) * c.sum()
    return pixels, frame_pixels


def median_frequency_weights(pixels: np.ndarray, frame_pixels: np.ndarray) -> np.ndarray:
    """Median-frequency balancing (Eigen & Fergus, ICCV 2015; SegNet's CamVid weights).

    ``freq_c = pixels_c / frame_pixels_c`` (the class's share of the frames it occurs in) and
    ``w_c = median(freq) / freq_c``: a class at the median frequency weighs 1, rarer classes more.
    A class that never occurs gets weight 0 (it cannot contribute to the loss anyway).
    """
    pixels = np.asarray(pixels, np.float64)
    present = pixels > 0
    freq = np.where(present, pixels / np.maximum(frame_pixels, 1), np.nan)
    return np.where(present, np.nanmedian(freq) / freq, 0.0)
