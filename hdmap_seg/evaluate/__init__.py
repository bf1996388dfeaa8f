"""Map metrics: predicted GeoJSON layers against ground truth (points F1, Chamfer AP, IoU)."""

from hdmap_seg.evaluate.map_metrics import evaluate_maps, plot_map

__all__ = ["evaluate_maps", "plot_map"]
