import math

import pytest
import torch

from conftest import TINY_TWINS
from hdmap_seg.data.classes import ROAD_CLASSES
from hdmap_seg.models import Segmenter
from hdmap_seg.module import SegmentationModule, iou_from_confusion, warmup_poly_factor


def test_iou_from_confusion_matches_hand_counts():
    # rows = truth, cols = prediction
    confusion = torch.tensor([[5, 1, 0], [2, 3, 0], [0, 0, 0]])
    iou = iou_from_confusion(confusion)
    assert iou[0].item() == pytest.approx(5 / (5 + 1 + 2))
    assert iou[1].item() == pytest.approx(3 / (3 + 2 + 1))
    assert math.isnan(iou[2].item())  # absent class does not count in the mean
    assert iou.nanmean().item() == pytest.approx((5 / 8 + 3 / 6) / 2)


def test_schedule_warms_up_linearly_then_decays_polynomially():
    def f(step: int) -> float:
        return warmup_poly_factor(step, total_steps=1000, warmup_steps=100, warmup_ratio=1e-6, power=1.0)

    assert f(0) == pytest.approx(1e-6)
    assert f(50) == pytest.approx((1e-6 + (1 - 1e-6) * 0.5) * (1 - 50 / 1000))
    assert f(100) == pytest.approx(0.9)
    assert f(550) == pytest.approx(0.45)
    assert f(1000) == 0.0
    assert warmup_poly_factor(500, 1000, 0, 1e-6, 2.0) == pytest.approx(0.25)
    # Training by time alone: no poly decay after warm-up.
    assert warmup_poly_factor(10**6, math.inf, 100, 1e-6, 1.0) == 1.0


def test_param_groups_follow_the_recipe():
    model = Segmenter(num_classes=6, **TINY_TWINS)
    module = SegmentationModule(model, ROAD_CLASSES.to_dict(), lr=1e-4, weight_decay=0.01, head_lr_mult=10.0)
    groups = module.param_groups()
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert len(by_id) == sum(1 for p in model.parameters() if p.requires_grad)
    head_ids = {id(p) for p in model.decode_head.parameters()}
    pos_block = [(n, p) for n, p in model.named_parameters() if "pos_block" in n]
    assert pos_block, "Twins has positional-encoding convolutions"
    for name, p in model.named_parameters():
        g = by_id[id(p)]
        assert g["lr"] == pytest.approx(1e-3 if id(p) in head_ids else 1e-4), name
        expect_decay = p.ndim > 1 and "pos_block" not in name
        assert g["weight_decay"] == (0.01 if expect_decay else 0.0), name


def test_state_dict_mismatch_names_the_first_parameters_of_each_kind():
    from hdmap_seg.module import state_dict_mismatch

    model = {"a": torch.zeros(2, 3), "b": torch.zeros(4), "c": torch.zeros(1)}
    assert state_dict_mismatch(model, dict(model)) is None
    found = {"a": torch.zeros(3, 3), "b": torch.zeros(4), "d": torch.zeros(1), "e": torch.zeros(1)}
    assert state_dict_mismatch(model, found, limit=1) == (
        "1 parameters differ in shape (a is (3, 3) there but (2, 3) here); 1 missing (c); "
        "2 unexpected (d and 1 more)"
    )
