"""The demo's report: one HTML page with frame overlays, the learning curve, the map plot and the
metrics table, beside the PNGs it shows."""

from __future__ import annotations

import html
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from hdmap_seg.imageio import read_image, write_image_atomic
from hdmap_seg.io import write_text_atomic

#: The demo's bar (README, "The two commands"): metric path in eval_map's metrics.json -> minimum.
DEMO_BAR = {
    ("poles", "@1m", "f1"): 0.8,
    ("signs", "@2m", "f1"): 0.7,
    ("medians", "footprints", "AP@1m"): 0.7,
    ("lane_markings", "AP@1m"): 0.6,
}


def check_bar(metrics: dict, bar: dict = DEMO_BAR) -> list[tuple[str, float | None, float, bool]]:
    """``(name, value, minimum, passed)`` for every bar entry; a missing value fails."""
    rows = []
    for path, minimum in bar.items():
        value = metrics
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        name = " ".join(path)
        rows.append((name, value, minimum, value is not None and value >= minimum))
    return rows


def overlay_strip(images: Sequence[Path], out_png: Path, width: int = 900) -> Path:
    """Stack a few overlay frames vertically into one PNG, each resized to ``width``."""
    rows = []
    for p in images:
        img = read_image(p)
        rows.append(
            cv2.resize(img, (width, round(img.shape[0] * width / img.shape[1])), interpolation=cv2.INTER_AREA)
        )
    write_image_atomic(out_png, cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return out_png


def _chamfer_aps(m: dict) -> str:
    """``"0.875 / 1.000 / -"``: a layer's Chamfer AP at 0.5 / 1.0 / 1.5 m (- where it has none)."""
    return " / ".join("-" if m[k] is None else f"{m[k]:.3f}" for k in ("AP@0.5m", "AP@1m", "AP@1.5m"))


def _metrics_rows(metrics: dict) -> list[tuple[str, str, str]]:
    rows = []
    for layer in ("poles", "signs"):
        m = metrics.get(layer)
        if m:
            for t in ("@0.5m", "@1m", "@2m"):
                rows.append(
                    (
                        layer,
                        f"P / R / F1 {t}",
                        f"{m[t]['precision']:.3f} / {m[t]['recall']:.3f} / {m[t]['f1']:.3f}",
                    )
                )
            rows.append((layer, "mean / p90 error (m)", f"{m['mean_error_m']} / {m['p90_error_m']}"))
            rows.append((layer, "predicted / true", f"{m['n_pred']} / {m['n_gt']}"))
    for kind, m in (metrics.get("medians") or {}).items():
        rows.append((f"medians {kind}", "Chamfer AP @0.5 / 1.0 / 1.5 m", _chamfer_aps(m)))
        if m.get("iou") is not None:
            rows.append((f"medians {kind}", "polygon IoU", f"{m['iou']:.3f}"))
    lanes = metrics.get("lane_markings")
    if lanes:
        rows.append(("lane markings", "Chamfer AP @0.5 / 1.0 / 1.5 m", _chamfer_aps(lanes)))
        rows.append(("lane markings", "predicted / true", f"{lanes['n_pred']} / {lanes['n_gt']}"))
    return rows


def write_report(
    out_dir: str | os.PathLike,
    metrics: dict,
    pictures: dict[str, Path],
    facts: dict[str, str],
) -> Path:
    """Write ``out_dir/index.html``; ``pictures`` (caption -> PNG) are copied beside it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    for caption, src in pictures.items():
        dst = out_dir / Path(src).name
        if Path(src).resolve() != dst.resolve():
            shutil.copyfile(src, dst)
        figures.append(
            f'<figure><img src="{html.escape(dst.name)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
        )
    bar_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{'-' if value is None else f'{value:.3f}'}</td>"
        f"<td>&ge; {minimum}</td><td class={'ok' if ok else 'bad'}>{'pass' if ok else 'FAIL'}</td></tr>"
        for name, value, minimum, ok in check_bar(metrics)
    )
    metric_rows = "".join(
        f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
        for a, b, c in _metrics_rows(metrics)
    )
    fact_rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items()
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>hdmap_seg demo</title>
<style>
body {{ font-family: sans-serif; max-width: 1000px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }} td, th {{ border: 1px solid #ccc; padding: 4px 10px; }}
.ok {{ color: #080; font-weight: bold; }} .bad {{ color: #c00; font-weight: bold; }}
img {{ max-width: 100%; border: 1px solid #ddd; }} figure {{ margin: 1.5em 0; }}
</style></head><body>
<h1>hdmap_seg demo: image to map</h1>
<h2>The bar (from predicted masks)</h2>
<table><tr><th>metric</th><th>value</th><th>needed</th><th></th></tr>{bar_rows}</table>
<h2>Map metrics</h2>
<table><tr><th>layer</th><th>metric</th><th>value</th></tr>{metric_rows}</table>
<h2>Run</h2>
<table>{fact_rows}</table>
{"".join(figures)}
</body></html>
"""
    path = out_dir / "index.html"
    write_text_atomic(path, page)
    return path
