"""Real data-set layouts (CamVid, Cityscapes, Mapillary Vistas), class maps, class balance.

Every format gets a tiny fixture written here in its own layout; expected ids are written out by hand
from the formats' documentation (CamVid README, cityscapesScripts' labels.py, the Vistas config).
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import PIL.Image
import pytest
import torch
import yaml

from conftest import REPO_ROOT
from hdmap_seg.data.balance import class_pixel_counts, median_frequency_weights
from hdmap_seg.data.class_map import ClassMap, load_class_map
from hdmap_seg.data.classes import ROAD_CLASSES
from hdmap_seg.data.datamodule import SegDataModule
from hdmap_seg.data.layouts import (
    CAMVID_CLASSES,
    CITYSCAPES_CLASSES,
    CamVidLayout,
    CityscapesLayout,
    VistasLayout,
)
from hdmap_seg.errors import HdmapError
from hdmap_seg.imageio import read_mask
from hdmap_seg.module import load_segmenter

CLASS_MAPS = REPO_ROOT / "conf" / "class_map"
H, W = 6, 8


def write_rgb(path: Path, height: int = H, width: int = W) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(len(str(path))).integers(0, 255, (height, width, 3), np.uint8)
    cv2.imwrite(str(path), rgb)


def write_grey(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), values.astype(np.uint8))


def write_palette(path: Path, values: np.ndarray) -> None:
    """A palette PNG as Vistas ships its labels: pixel = label index, colours in the palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = PIL.Image.fromarray(values.astype(np.uint8), mode="P")
    img.putpalette(np.random.default_rng(0).integers(0, 255, 768).astype(np.uint8).tolist())
    img.save(path)


def mask_with_row(row: list[int], fill: int) -> np.ndarray:
    """An ``H x W`` mask whose first row starts with ``row``; the rest is ``fill``."""
    mask = np.full((H, W), fill, np.uint8)
    mask[0, : len(row)] = row
    return mask


# --- CamVid -------------------------------------------------------------------------------------

CAMVID_ROW = [0, 2, 3, 6, 11, 10, 4]
CAMVID_NATIVE = [0, 2, 3, 6, 255, 10, 4]  # 11 (Unlabelled) -> ignore
CAMVID_ROADS = [0, 4, 1, 5, 255, 0, 0]  # Pole -> pole, Road -> road, SignSymbol -> sign, rest background


def write_camvid(root: Path) -> Path:
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            write_rgb(root / split / f"0001TP_{i:06d}.png")
            write_grey(root / f"{split}annot" / f"0001TP_{i:06d}.png", mask_with_row(CAMVID_ROW, 1))
    return root


# --- Cityscapes ---------------------------------------------------------------------------------

# labelIds: road 7, sidewalk 8, pole 17, traffic sign 20, unlabeled 0, bicycle 33, polegroup 18, ego 1
CITYSCAPES_ROW = [7, 8, 17, 20, 0, 33, 18, 1]
CITYSCAPES_NATIVE = [0, 1, 5, 7, 255, 18, 255, 255]
CITYSCAPES_ROADS = [1, 0, 4, 5, 255, 0, 255, 255]


def write_cityscapes(root: Path) -> Path:
    for split, cities in (("train", ("aachen", "bochum")), ("val", ("lindau",))):
        for city in cities:
            stem = f"{city}_000000_000019"
            write_rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            gt = root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png"
            write_grey(gt, mask_with_row(CITYSCAPES_ROW, 21))  # 21 = vegetation
            write_grey(gt.with_name(f"{stem}_gtFine_color.png"), np.zeros((H, W)))  # ignored
    return root


# --- Mapillary Vistas ---------------------------------------------------------------------------

# Real names of each version; "evaluate": false ones are ignored (as the benchmark does).
VISTAS_LABELS = {
    "v1.2": [
        ("construction--barrier--curb", True),
        ("construction--flat--road", True),
        ("marking--general", True),
        ("nature--sky", True),
        ("object--street-light", True),
        ("object--traffic-sign--back", True),
        ("object--traffic-sign--front", True),
        ("void--ego-vehicle", True),
        ("void--unlabeled", False),
    ],
    "v2.0": [
        ("construction--barrier--ambiguous", False),
        ("construction--flat--road", True),
        ("construction--flat--traffic-island", True),
        ("marking--continuous--solid", True),
        ("marking-only--discrete--text", True),
        ("object--support--pole", True),
        ("object--support--pole-group", False),
        ("object--traffic-sign--direction-front", True),
        ("object--traffic-sign--front", True),
        ("object--traffic-sign--temporary-back", True),
        ("void--unlabeled", False),
    ],
}
VISTAS_ROW = {"v1.2": [0, 1, 2, 3, 4, 5, 6, 7, 8], "v2.0": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]}
VISTAS_NATIVE = {
    "v1.2": [0, 1, 2, 3, 4, 5, 6, 7, 255],
    "v2.0": [255, 0, 1, 2, 3, 4, 255, 5, 6, 7, 255],
}
VISTAS_ROADS = {
    # curb -> median, road, marking -> lane_marking, sky -> background, street light -> pole,
    # sign back -> background, sign front -> sign, ego vehicle -> ignore, unlabeled -> ignore
    "v1.2": [3, 1, 2, 0, 4, 0, 5, 255, 255],
    # ambiguous barrier (not evaluated) -> ignore, road, traffic island -> median, markings,
    # pole, pole group (not evaluated) -> ignore, direction-front and front -> sign, temporary back
    "v2.0": [255, 1, 3, 2, 2, 4, 255, 5, 5, 0, 255],
}


def write_vistas(root: Path, version: str) -> Path:
    labels = [
        {"name": n, "readable": n, "color": [i, 2 * i, 3 * i], "instances": False, "evaluate": e}
        for i, (n, e) in enumerate(VISTAS_LABELS[version])
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / f"config_{version}.json").write_text(json.dumps({"labels": labels, "version": version}))
    row = VISTAS_ROW[version]
    width = max(W, len(row))
    for split, n in (("training", 2), ("validation", 1)):
        for i in range(n):
            write_rgb(root / split / "images" / f"key{i:03d}.jpg", width=width)
            mask = np.full((H, width), 1, np.uint8)
            mask[0, : len(row)] = row
            write_palette(root / split / version / "labels" / f"key{i:03d}.png", mask)
    return root


# --- the data module over each format -----------------------------------------------------------

FORMATS = {
    "camvid": (CamVidLayout, {}, "train", "val", write_camvid, "camvid_to_roads"),
    "cityscapes": (CityscapesLayout, {}, "train", "val", write_cityscapes, "cityscapes_to_roads"),
    "vistas-v1.2": (VistasLayout, {"version": "v1.2"}, "training", "validation", None, "vistas_to_roads"),
    "vistas-v2.0": (VistasLayout, {"version": "v2.0"}, "training", "validation", None, "vistas_to_roads"),
}
EXPECTED = {
    "camvid": (CAMVID_ROW, CAMVID_NATIVE, CAMVID_ROADS, 11),
    "cityscapes": (CITYSCAPES_ROW, CITYSCAPES_NATIVE, CITYSCAPES_ROADS, 19),
    "vistas-v1.2": (VISTAS_ROW["v1.2"], VISTAS_NATIVE["v1.2"], VISTAS_ROADS["v1.2"], 8),
    "vistas-v2.0": (VISTAS_ROW["v2.0"], VISTAS_NATIVE["v2.0"], VISTAS_ROADS["v2.0"], 8),
}


def make_format(name: str, tmp_path: Path, mapped: bool) -> SegDataModule:
    layout_cls, kwargs, train, val, writer, class_map = FORMATS[name]
    root = tmp_path / name
    if writer is None:
        write_vistas(root, kwargs["version"])
    else:
        writer(root)
    num_classes = 6 if mapped else EXPECTED[name][3]
    return SegDataModule(
        root,
        num_classes,
        layout=layout_cls(**kwargs),
        class_map=CLASS_MAPS / f"{class_map}.yaml" if mapped else None,
        train_split=train,
        val_split=val,
        num_workers=0,
    )


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("mapped", [False, True], ids=["native", "roads"])
def test_masks_come_out_in_the_expected_ids(name, mapped, tmp_path):
    dm = make_format(name, tmp_path, mapped)
    dm.check()
    row, native, roads, _ = EXPECTED[name]
    expected = roads if mapped else native
    for split in (dm.train_split, dm.val_split):
        for i in range(len(dm.samples(split))):
            mask = dm.dataset(split)[i]["mask"].numpy()
            assert mask[0, : len(row)].tolist() == expected
    assert dm.classes.num_classes == (6 if mapped else EXPECTED[name][3])
    if mapped:
        assert dm.classes == ROAD_CLASSES


def test_split_sizes_and_names(tmp_path):
    camvid = make_format("camvid", tmp_path, False)
    assert [len(camvid.samples(s)) for s in ("train", "val")] == [3, 2]
    assert camvid.classes == CAMVID_CLASSES
    cityscapes = make_format("cityscapes", tmp_path, False)
    train = cityscapes.samples("train")
    assert [s.mask_path.name for s in train] == [
        "aachen_000000_000019_gtFine_labelIds.png",
        "bochum_000000_000019_gtFine_labelIds.png",
    ]
    assert cityscapes.classes == CITYSCAPES_CLASSES
    assert CITYSCAPES_CLASSES.id_of("traffic sign") == 7
    vistas = make_format("vistas-v2.0", tmp_path, False)
    assert vistas.classes.names[0] == "construction--flat--road"
    assert "object--support--pole-group" not in vistas.classes.names


def test_palette_masks_are_read_as_indices_not_colours(tmp_path):
    values = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    write_palette(tmp_path / "p.png", values)
    assert np.array_equal(read_mask(tmp_path / "p.png"), values)
    cv2.imwrite(str(tmp_path / "rgb.png"), np.zeros((H, W, 3), np.uint8))
    with pytest.raises(HdmapError, match=r"rgb\.png: a mask must be a single-channel 8-bit PNG"):
        read_mask(tmp_path / "rgb.png")
    with pytest.raises(HdmapError, match=r"gone\.png: mask not found$"):
        read_mask(tmp_path / "gone.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "p.png").read_bytes()[:40])
    with pytest.raises(HdmapError, match=r"cut\.png: cannot be read as a mask"):
        read_mask(tmp_path / "cut.png")


# --- bad data: every format names the file ------------------------------------------------------


def first_mask(dm: SegDataModule) -> Path:
    return dm.layout.list_split(dm.root, dm.train_split)[0].mask_path


@pytest.mark.parametrize("name", FORMATS)
def test_missing_mask_names_the_file(name, tmp_path):
    dm = make_format(name, tmp_path, False)
    mask = first_mask(dm)
    mask.unlink()
    with pytest.raises(HdmapError, match=f"{mask.name}: mask missing for frame"):
        dm.check()


@pytest.mark.parametrize("name", FORMATS)
def test_size_mismatch_names_the_file(name, tmp_path):
    dm = make_format(name, tmp_path, False)
    mask = first_mask(dm)
    write_palette(mask, np.zeros((H + 1, 3), np.uint8))
    with pytest.raises(HdmapError, match=rf"{mask.name}: mask is 3x{H + 1} but its image"):
        dm.check()


# A value the format does not have: CamVid's ids end at 11, Cityscapes' label ids at 33, the Vistas
# fixtures have 9 and 11 labels.
BAD_VALUE = {"camvid": 12, "cityscapes": 34, "vistas-v1.2": 9, "vistas-v2.0": 11}


@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("mapped", [False, True], ids=["native", "roads"])
def test_label_values_outside_the_format_name_the_file(name, mapped, tmp_path):
    dm = make_format(name, tmp_path, mapped)
    mask = first_mask(dm)
    values = read_mask(mask).copy()
    values[-1, -1] = BAD_VALUE[name]
    write_palette(mask, values)
    with pytest.raises(HdmapError, match=rf"{mask.name}: label values \[{BAD_VALUE[name]}\] are outside"):
        dm.check()


@pytest.mark.parametrize("name", FORMATS)
def test_empty_split(name, tmp_path):
    dm = make_format(name, tmp_path, False)
    for p in dm.layout.list_split(dm.root, dm.val_split):
        p.image_path.unlink()
    with pytest.raises(HdmapError, match=f"split '{dm.val_split}' is empty"):
        dm.check()


def test_num_classes_must_equal_the_classes_after_mapping(tmp_path):
    dm = make_format("camvid", tmp_path, True)
    dm.num_classes = 11
    with pytest.raises(
        HdmapError, match=r"camvid_to_roads\.yaml has 6 classes but the config says data\.num_classes=11"
    ):
        dm.check()


def test_vistas_without_its_config(tmp_path):
    dm = make_format("vistas-v1.2", tmp_path, False)
    dm.layout.version = "v2.0"
    with pytest.raises(HdmapError, match=r"config_v2\.0\.json: Mapillary Vistas config not found"):
        dm.check()


# --- class maps ---------------------------------------------------------------------------------


def test_shipped_class_maps_target_the_project_taxonomy():
    for path in sorted(CLASS_MAPS.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        assert ClassMap.from_dict(data, source=data.get("source") or ["x"]).target == ROAD_CLASSES, path
    assert yaml.safe_load((CLASS_MAPS / "camvid_to_roads.yaml").read_text())["source"] == CAMVID_CLASSES.names
    assert (
        yaml.safe_load((CLASS_MAPS / "cityscapes_to_roads.yaml").read_text())["source"]
        == CITYSCAPES_CLASSES.names
    )


def test_load_class_map_maps_a_native_prediction_for_vectorization():
    """A model trained on CamVid's own classes writes ids 0..10; the map turns them into the project's."""
    class_map = load_class_map(CLASS_MAPS / "camvid_to_roads.yaml")
    prediction = np.array([[2, 6, 3], [0, 10, 255]], np.uint8)  # Pole, SignSymbol, Road / Sky, Bicyclist
    assert class_map.apply(prediction).tolist() == [[4, 5, 1], [0, 0, 255]]
    assert class_map.target.id_of("pole") == 4
    assert class_map.lut.shape == (256,) and class_map.lut.dtype == np.uint8
    assert (class_map.lut[11:] == 255).all()


def test_vistas_map_needs_the_native_names(tmp_path):
    with pytest.raises(HdmapError, match="native class names are unknown"):
        load_class_map(CLASS_MAPS / "vistas_to_roads.yaml")
    names = [n for n, e in VISTAS_LABELS["v2.0"] if e]
    class_map = load_class_map(CLASS_MAPS / "vistas_to_roads.yaml", source=names)
    assert class_map.lut[: len(names)].tolist() == [1, 3, 2, 2, 4, 5, 5, 0]


TINY_TARGET = {
    "classes": [{"id": 0, "name": "bg", "color": [0, 0, 0]}, {"id": 1, "name": "pole", "color": [1, 1, 1]}]
}


def test_class_map_errors_name_the_problem(tmp_path):
    with pytest.raises(HdmapError, match=r"m\.yaml: no class named 'sign'"):
        ClassMap.from_dict({"target": TINY_TARGET, "map": {"sign": ["a"]}}, ["a", "b"], origin="m.yaml")
    with pytest.raises(HdmapError, match="'b' is mapped to both 'pole' and 'ignore'"):
        ClassMap.from_dict({"target": TINY_TARGET, "map": {"pole": ["b"], "ignore": ["b"]}}, ["a", "b"])
    with pytest.raises(HdmapError, match=r"written for the classes \['x'\], but the data set has \['a'\]"):
        ClassMap.from_dict({"source": ["x"], "target": TINY_TARGET, "map": {}}, ["a"])
    with pytest.raises(HdmapError, match=r"missing\.yaml: class map not found"):
        load_class_map(tmp_path / "missing.yaml")
    with pytest.raises(HdmapError, match="needs 'target' and 'map'"):
        ClassMap.from_dict({"map": {}}, ["a"])


def test_class_map_patterns_unmapped_and_warnings(caplog):
    data = {"target": TINY_TARGET, "map": {"pole": ["object--*pole", "no-such-class"]}, "unmapped": "ignore"}
    with caplog.at_level(logging.WARNING):
        class_map = ClassMap.from_dict(data, ["object--support--pole", "object--utility-pole", "sky"])
    assert class_map.lut[:4].tolist() == [1, 1, 255, 255]
    assert "'no-such-class' matches none" in caplog.text


# --- class balance ------------------------------------------------------------------------------


def test_median_frequency_weights_by_hand(tmp_path):
    root = tmp_path / "camvid"
    # frame a: Sky, Sky, Building, Unlabelled; frame b: Sky, Pole, Pole, Pole
    for name, values in (("a", [[0, 0], [1, 11]]), ("b", [[0, 2], [2, 2]])):
        write_rgb(root / "train" / f"{name}.png", 2, 2)
        write_grey(root / "trainannot" / f"{name}.png", np.array(values))
    dm = SegDataModule(root, 11, layout=CamVidLayout(), num_workers=0)
    pixels, frame_pixels = class_pixel_counts(dm.samples("train"), dm.label_lut, 11)
    assert pixels[:3].tolist() == [3, 1, 3] and pixels[3:].sum() == 0
    # Sky is in both frames (3 + 4 labelled pixels), Building in a (3), Pole in b (4).
    assert frame_pixels[:3].tolist() == [7, 3, 4]
    weights = median_frequency_weights(pixels, frame_pixels)
    # freq = 3/7, 1/3, 3/4; median 3/7
    assert weights[:3] == pytest.approx([1.0, (3 / 7) / (1 / 3), (3 / 7) / (3 / 4)])
    assert (weights[3:] == 0).all()


def test_class_weights_tool_writes_a_config_the_experiment_can_use(tmp_path):
    from hdmap_seg.cli.class_weights import main as class_weights_main

    root = write_camvid(tmp_path / "camvid")
    out = tmp_path / "w.yaml"
    class_weights_main(["data=camvid", f"data.root={root}", "--out", str(out)])
    weights = yaml.safe_load(out.read_text())["class_weights"]
    # Every fixture frame has 47 labelled pixels: one each of Sky, Pole, Road, Pavement, SignSymbol and
    # Bicyclist (median frequency 1/47), 41 of Building; no Tree, Fence, Car, Pedestrian.
    assert weights == pytest.approx([1, 1 / 41, 1, 1, 1, 0, 1, 0, 0, 0, 1], abs=1e-4)
    assert "python tools/class_weights.py data=camvid" in out.read_text()


def test_camvid_recipe_crops_around_pole_and_sign():
    """The experiment's rare-class crop skips every id but Pole and SignSymbol."""
    recipe = yaml.safe_load((REPO_ROOT / "conf/experiment/camvid.yaml").read_text())
    (crop,) = [
        t for t in recipe["data"]["train_transforms"] if t["_target_"].endswith("CropNonEmptyMaskIfExists")
    ]
    kept = set(range(11)) - set(crop["ignore_values"]) - {0}  # albumentations always skips 0
    assert kept == {CAMVID_CLASSES.id_of("Pole"), CAMVID_CLASSES.id_of("SignSymbol")}
    assert 255 in crop["ignore_values"]
    weights = yaml.safe_load((REPO_ROOT / "conf/class_weights/camvid.yaml").read_text())["class_weights"]
    assert len(weights) == CAMVID_CLASSES.num_classes
    assert weights[CAMVID_CLASSES.id_of("Pole")] > 1 > weights[CAMVID_CLASSES.id_of("Road")]


# --- the real CamVid in ../shared ---------------------------------------------------------------


@pytest.fixture
def camvid_root(shared_dir) -> Path:
    root = shared_dir / "data" / "camvid"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    return root


def test_real_camvid_splits_shares_and_ignore(camvid_root):
    dm = SegDataModule(camvid_root, 11, layout=CamVidLayout(), num_workers=0)
    dm.check()
    assert len(dm.samples("train")) == 367 and len(dm.samples("val")) == 101
    # Shares of all pixels (the README's: Pole 0.98 %, SignSymbol 1.17 %, Fence 1.13 %).
    lut_with_ignore_counted = dm.label_lut.copy()
    pixels, _ = class_pixel_counts(dm.samples("train"), lut_with_ignore_counted.clip(0), 256)
    share = pixels / pixels.sum()
    for name, readme in (("Pole", 0.0098), ("SignSymbol", 0.0117), ("Fence", 0.0113)):
        assert share[CAMVID_CLASSES.id_of(name)] == pytest.approx(readme, abs=0.001), name
    assert share[255] == pytest.approx(0.0395, abs=0.005)  # Unlabelled, now ignored
    # A frame with Unlabelled pixels: exactly those become 255.
    sample = next(s for s in dm.samples("val") if (read_mask(s.mask_path) == 11).any())
    raw = read_mask(sample.mask_path)
    index = dm.samples("val").index(sample)
    mask = dm.dataset("val")[index]["mask"].numpy()
    assert np.array_equal(mask == 255, raw == 11)
    assert np.array_equal(mask[raw != 11], raw[raw != 11])


@pytest.mark.slow
def test_train_cli_on_a_camvid_layout_through_the_class_map(tmp_path):
    """The whole path: train.py, a non-default layout, a class map, the recipe's crops, 6 outputs."""
    root = write_camvid(tmp_path / "camvid")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            "experiment=camvid",
            f"data.root={root}",
            f"data.class_map={CLASS_MAPS / 'camvid_to_roads.yaml'}",
            "data.num_classes=6",
            "module.class_weights=null",
            "model=twins_svt_tiny",
            "trainer=cpu",
            "data.batch_size=2",
            "data.num_workers=0",
            "trainer.max_steps=1",
            "trainer.check_val_every_n_epoch=1",
            "callbacks.progress_bar=null",
            f"hydra.run.dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, classes = load_segmenter(tmp_path / "run/checkpoints/last.ckpt")
    assert classes == ROAD_CLASSES
    assert model(torch.zeros(1, 3, H, W)).shape == (1, 6, H, W)


def test_train_cli_stops_on_a_bad_camvid_mask(tmp_path):
    root = write_camvid(tmp_path / "camvid")
    write_grey(root / "valannot" / "0001TP_000001.png", mask_with_row([12], 1))
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "train.py"),
            "data=camvid",
            f"data.root={root}",
            f"hydra.run.dir={tmp_path}/run",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 2
    assert "valannot/0001TP_000001.png: label values [12] are outside the classes" in proc.stderr
    assert "Traceback" not in proc.stderr
