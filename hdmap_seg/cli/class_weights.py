"""``hdmap-class-weights`` / ``python tools/class_weights.py``: median-frequency class weights of a data set's training split, written as a Hydra config for the loss.

    python tools/class_weights.py data=camvid data.root=../shared/data/camvid --out conf/class_weights/camvid.yaml

The positional arguments are the overrides of ``train.py`` that select the data (data=..., data.root=...,
data.class_map=..., data.num_classes=...), so that the weights are those of the classes the model learns.
An experiment uses the file with ``- /class_weights@module: <name>`` in its defaults (conf/experiment/camvid.yaml).
"""

from __future__ import annotations

import argparse
import shlex
from datetime import date

import yaml
from hydra.utils import instantiate

from hdmap_seg.cli.hydra_app import compose_config
from hdmap_seg.data.balance import class_pixel_counts, median_frequency_weights
from hdmap_seg.errors import exit_on_user_error
from hdmap_seg.io import write_text_atomic


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="train.py overrides that select the data set")
    p.add_argument("--out", required=True, help="YAML file to write (e.g. conf/class_weights/camvid.yaml)")
    args = p.parse_args(argv)

    cfg = compose_config("train", args.overrides)
    datamodule = instantiate(cfg.data, _convert_="all")
    classes = datamodule.classes
    samples = datamodule.samples(datamodule.train_split)
    pixels, frame_pixels = class_pixel_counts(samples, datamodule.label_lut, classes.num_classes)
    weights = median_frequency_weights(pixels, frame_pixels)

    share = pixels / max(pixels.sum(), 1)
    table = "\n".join(
        f"#   {n:<16} share {100 * s:6.2f} %  weight {w:7.4f}"
        for n, s, w in zip(classes.names, share, weights, strict=True)
    )
    command = shlex.join(["python", "tools/class_weights.py", *args.overrides, "--out", args.out])
    header = (
        f"# Median-frequency class weights of {datamodule.root} ({datamodule.train_split}, "
        f"{len(samples)} frames), {date.today().isoformat()}, written by:\n#   {command}\n{table}\n"
    )
    body = yaml.safe_dump({"class_weights": [round(float(w), 4) for w in weights]}, default_flow_style=None)
    write_text_atomic(args.out, header + body)
    print(header + body, end="")


if __name__ == "__main__":
    main()
