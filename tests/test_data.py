import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from conftest import write_toy_dataset
from hdmap_seg.data.classes import ROAD_CLASSES, ClassSet, load_classes
from hdmap_seg.data.datamodule import SegDataModule
from hdmap_seg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, pad_collate
from hdmap_seg.errors import HdmapError

CROP = [
    {"_target_": "albumentations.RandomScale", "scale_limit": [-0.5, 1.0], "p": 1.0},
    {
        "_target_": "albumentations.RandomCrop",
        "height": 32,
        "width": 32,
        "pad_if_needed": True,
        "fill_mask": 255,
    },
    {"_target_": "albumentations.HorizontalFlip", "p": 0.5},
]


def make_dm(root, **kw):
    return SegDataModule(root, num_classes=6, train_transforms=CROP, batch_size=3, num_workers=0, **kw)


def test_classes_yaml_round_trip(toy_dataset):
    classes = load_classes(toy_dataset / "classes.yaml")
    assert classes == ROAD_CLASSES
    assert classes.id_of("pole") == 4
    assert tuple(classes.palette()[5]) == (220, 220, 0)
    with pytest.raises(HdmapError, match="no class named 'tree'"):
        classes.id_of("tree")


def test_class_ids_must_be_contiguous():
    with pytest.raises(HdmapError, match="0..1"):
        ClassSet.from_dict(
            {
                "classes": [
                    {"id": 0, "name": "a", "color": [0, 0, 0]},
                    {"id": 2, "name": "b", "color": [1, 1, 1]},
                ]
            }
        )


def test_batches_have_crop_size_and_valid_labels(toy_dataset):
    dm = make_dm(toy_dataset)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (3, 32, 32) and batch["mask"].dtype == torch.long
    values = set(batch["mask"].unique().tolist())
    assert values <= {0, 1, 2, 3, 4, 5, 255}
    # Validation keeps the whole odd-sized frame.
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[-2:] == (40, 56)


def test_augmentation_follows_the_seed(toy_dataset):
    """train.yaml's seed makes a run repeatable: albumentations' own generator follows torch's seed."""

    def first_batch(seed: int, num_workers: int) -> torch.Tensor:
        torch.manual_seed(seed)
        dm = make_dm(toy_dataset)
        dm.num_workers = num_workers
        dm.setup("fit")
        return next(iter(dm.train_dataloader()))["image"]

    assert torch.equal(first_batch(0, 0), first_batch(0, 0))
    assert not torch.equal(first_batch(0, 0), first_batch(1, 0))
    assert torch.equal(first_batch(0, 2), first_batch(0, 2))


def test_val_image_is_the_frame_normalised_with_imagenet_statistics(toy_dataset):
    dm = make_dm(toy_dataset)
    dm.setup("validate")
    val = next(iter(dm.val_dataloader()))
    original = cv2.cvtColor(cv2.imread(str(toy_dataset / "images/val/0000.png")), cv2.COLOR_BGR2RGB)
    expected = (original / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    got = val["image"][0].permute(1, 2, 0).numpy()
    assert np.abs(got - expected).max() < 1e-5


def test_pad_collate_pads_masks_with_ignore():
    a = {"image": torch.ones(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.long), "name": "a"}
    b = {"image": torch.ones(3, 6, 3), "mask": torch.ones(6, 3, dtype=torch.long), "name": "b"}
    batch = pad_collate([a, b], ignore_index=255)
    assert batch["image"].shape == (2, 3, 6, 5)
    assert (batch["mask"][0, 4:] == 255).all() and (batch["mask"][1, :, 3:] == 255).all()
    assert (batch["image"][0, :, 4:] == 0).all()
    assert batch["name"] == ["a", "b"]


def test_missing_mask_names_the_file(toy_dataset):
    (toy_dataset / "masks/train/0003.png").unlink()
    with pytest.raises(HdmapError, match=r"masks/train/0003\.png: mask missing"):
        make_dm(toy_dataset).check()


def test_size_mismatch_names_the_file(toy_dataset):
    cv2.imwrite(str(toy_dataset / "masks/val/0001.png"), np.zeros((39, 56), np.uint8))
    with pytest.raises(
        HdmapError, match=r"masks/val/0001\.png: mask is 56x39 but its image 0001\.png is 56x40"
    ):
        make_dm(toy_dataset).check()


def test_labels_outside_the_classes_name_the_file_and_values(toy_dataset):
    mask = cv2.imread(str(toy_dataset / "masks/train/0002.png"), cv2.IMREAD_UNCHANGED)
    mask[0, 0], mask[1, 1] = 9, 17
    cv2.imwrite(str(toy_dataset / "masks/train/0002.png"), mask)
    with pytest.raises(HdmapError, match=r"0002\.png: label values \[9, 17\]"):
        make_dm(toy_dataset).check()


def test_empty_split(toy_dataset):
    for p in (toy_dataset / "images/val").iterdir():
        p.unlink()
    with pytest.raises(HdmapError, match="split 'val' is empty"):
        make_dm(toy_dataset).check()


def test_class_count_must_match_the_config(toy_dataset):
    dm = SegDataModule(toy_dataset, num_classes=11)
    with pytest.raises(HdmapError, match="has 6 classes but the config says data.num_classes=11"):
        dm.check()


def test_atomic_writes_leave_no_temporary_and_ordinary_permissions(tmp_path):
    import os

    from hdmap_seg.io import atomic_path, write_text_atomic

    write_text_atomic(tmp_path / "a.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~umask
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "b.png") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_the_check_leaves_torch_random_state_alone(tmp_path):
    """A seeded run initialises its model after the check: the check must not draw from torch's generator."""
    root = write_toy_dataset(tmp_path / "roads", n_train=32, n_val=1)  # enough to decode in workers
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    dm = make_dm(root)
    dm.num_workers = 2
    dm.check()
    assert torch.equal(torch.rand(3), expected)


NO_NETWORK = (
    "import urllib.request, sys\n"
    "def refuse(*args, **kwargs):\n"
    "    sys.exit(3)\n"
    "urllib.request.OpenerDirector.open = refuse\n"
)


@pytest.mark.parametrize(("module", "status"), [("albumentations", 3), ("hdmap_seg.data.transforms", 0)])
def test_importing_the_package_does_not_reach_for_the_network(module, status):
    """albumentations alone asks PyPI for updates on import (status 3 here); through hdmap_seg it must not."""
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    proc = subprocess.run(
        [sys.executable, "-c", f"{NO_NETWORK}import {module}"], env=env, capture_output=True
    )
    assert proc.returncode == status, proc.stderr.decode()[-2000:]
