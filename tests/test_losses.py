import pytest
import torch
import torch.nn.functional as F

from hdmap_seg.losses import SegmentationLoss


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 9, 7, generator=g)
    target = torch.randint(0, 4, (2, 9, 7), generator=g)
    target[0, :2] = 255
    return logits, target


def test_plain_loss_is_cross_entropy_ignoring_255(batch):
    logits, target = batch
    valid = target != 255
    expected = -F.log_softmax(logits, 1).gather(1, target.clamp_max(3)[:, None])[:, 0][valid].mean()
    assert torch.allclose(SegmentationLoss()(logits, target), expected)


def test_class_weights_change_the_loss_as_torch_defines_them(batch):
    logits, target = batch
    weights = [1.0, 2.0, 0.5, 4.0]
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=255)
    got = SegmentationLoss(class_weights=weights)(logits, target)
    assert torch.allclose(got, expected)
    assert not torch.allclose(got, SegmentationLoss()(logits, target))


def test_ohem_averages_only_the_hard_pixels(batch):
    logits, target = batch
    valid = target != 255
    prob = logits.softmax(1).gather(1, target.clamp_max(3)[:, None])[:, 0]
    pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    # min_kept below the number of hard pixels: exactly the pixels under the threshold count.
    hard = valid & (prob <= 0.3)
    assert 3 < hard.sum() < valid.sum()
    got = SegmentationLoss(ohem_thresh=0.3, ohem_min_kept=3)(logits, target)
    assert torch.allclose(got, pixel[hard].mean())
    # min_kept above the hard pixels: the min_kept hardest pixels count.
    k = int(hard.sum()) + 10
    kth = prob[valid].kthvalue(k).values
    expected = pixel[valid & (prob <= kth)].mean()
    assert torch.allclose(SegmentationLoss(ohem_thresh=0.3, ohem_min_kept=k)(logits, target), expected)
    # fewer valid pixels than min_kept: all of them count.
    got_all = SegmentationLoss(ohem_thresh=0.3, ohem_min_kept=10_000)(logits, target)
    assert torch.allclose(got_all, pixel[valid].mean())


def test_all_ignored_gives_zero_with_a_gradient():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.full((1, 4, 4), 255)
    loss = SegmentationLoss(ohem_thresh=0.7, ohem_min_kept=1)(logits, target)
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None
