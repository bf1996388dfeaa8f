"""Models: shapes at any size, the masked window attention, parameter parity, weights, overfitting."""

from __future__ import annotations

import copy
import inspect
import logging
from pathlib import Path

import hydra
import pytest
import safetensors.torch
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from timm.models.twins import LocallyGroupedAttn
from torchmetrics.classification import MulticlassJaccardIndex

from hdmap_seg.errors import HdmapError
from hdmap_seg.models import (
    LightHead,
    MaskedLocallyGroupedAttn,
    Segmenter,
    create_model,
    list_models,
    model_config,
)
from hdmap_seg.paths import CONF_DIR

CONF_MODEL = CONF_DIR / "model"

# Tiny widths; two blocks per stage so that SVT has both its LSA (window) and GSA (global) blocks.
TINY = {
    "twins_svt_small": {"embed_dims": [16, 32, 48, 64], "num_heads": [1, 2, 3, 4], "depths": [2, 2, 2, 2]},
    "twins_pcpvt_small": {
        "embed_dims": [16, 32, 48, 64],
        "num_heads": [1, 2, 3, 4],
        "depths": [2, 2, 2, 2],
        "mlp_ratios": [2, 2, 2, 2],
    },
}

# Published parameter counts of the ImageNet classifiers (M), Chu et al. 2021.
PUBLISHED_PARAMS_M = {
    "twins_svt_small": 24.0,
    "twins_svt_base": 56.0,
    "twins_svt_large": 99.2,
    "twins_pcpvt_small": 24.1,
    "twins_pcpvt_base": 43.8,
    "twins_pcpvt_large": 60.9,
}


@pytest.fixture(autouse=True)
def one_torch_thread():
    # With other jobs on the two cores, two OpenMP threads spin-wait for each other and a tiny
    # model's step gets 10x slower; one thread is as fast on tiny models and immune to that.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_segmenter(backbone: str = "twins_svt_small", **kwargs) -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(backbone, num_classes=6, embed_dim=16, backbone_kwargs=TINY[backbone], **kwargs).eval()


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- shapes


SIZES = {
    "camvid": (360, 480),
    "kitti": (375, 1242),
    "cityscapes": (512, 1024),
    "lsa-pads-width-only": (224, 160),
    "lsa-pads-height-only": (160, 224),
    "odd": (67, 93),
}


@pytest.mark.parametrize(
    "backbone,size",
    [("twins_svt_small", size) for size in SIZES]
    + [("twins_pcpvt_small", size) for size in ("kitti", "odd")],
)
def test_logits_come_back_at_the_input_size(backbone: str, size: str) -> None:
    height, width = SIZES[size]
    model = tiny_segmenter(backbone)
    features = []
    model.backbone.register_forward_hook(lambda mod, args, out: features.extend(out))
    with torch.inference_mode():
        logits = model(torch.randn(1, 3, height, width))
    padded = (height + -height % 32, width + -width % 32)
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, padded[0] // r, padded[1] // r)
        for c, r in zip(model.backbone.channels, [4, 8, 16, 32], strict=True)
    ]
    assert logits.shape == (1, 6, height, width)
    assert torch.isfinite(logits).all()


def test_padding_is_zeros_on_the_right_and_bottom_and_cropped_back() -> None:
    # The segmenter pads internally; padding the image by hand the same way must give the same logits.
    model = tiny_segmenter()
    x = torch.randn(2, 3, 75, 101)
    with torch.no_grad():
        logits = model(x)
        by_hand = model(F.pad(x, (0, 128 - 101, 0, 96 - 75)))[..., :75, :101]
    torch.testing.assert_close(logits, by_hand)


def test_an_input_that_pads_only_one_axis_reaches_the_window_attention() -> None:
    model = tiny_segmenter()
    seen: list[tuple[int, int]] = []
    lsa = [m for m in model.modules() if isinstance(m, MaskedLocallyGroupedAttn)]
    assert lsa and not any(isinstance(m, LocallyGroupedAttn) for m in model.modules())
    for m in lsa:
        m.register_forward_hook(lambda mod, args, out: seen.append(args[1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 160))
    # 224/4 = 56 = 8 windows of 7 rows, 160/4 = 40 columns: only the width is padded, at every stage
    assert seen == [(56, 40), (28, 20), (14, 10), (7, 5)]


# ------------------------------------------------------------------------------ masked window attention


def per_window_reference(attn: LocallyGroupedAttn, x: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """LSA computed window by window over the real tokens only: nothing to pad, nothing to mask."""
    B, N, C = x.shape
    ws, heads = attn.ws, attn.num_heads
    grid = x.view(B, H, W, C)
    out = torch.empty_like(grid)
    for top in range(0, H, ws):
        for left in range(0, W, ws):
            window = grid[:, top : top + ws, left : left + ws]
            h, w = window.shape[1:3]
            q, k, v = (
                attn.qkv(window.reshape(B, h * w, C))
                .view(B, h * w, 3, heads, C // heads)
                .permute(2, 0, 3, 1, 4)
            )
            weights = (q @ k.transpose(-2, -1) * (C // heads) ** -0.5).softmax(-1)
            out[:, top : top + h, left : left + w] = (weights @ v).transpose(1, 2).reshape(B, h, w, C)
    return attn.proj(out.reshape(B, N, C))


def make_lsa() -> LocallyGroupedAttn:
    torch.manual_seed(0)
    return LocallyGroupedAttn(dim=16, num_heads=2, ws=7).eval()


@pytest.mark.parametrize("H,W", [(14, 10), (10, 14), (10, 12), (14, 21)])
def test_masked_lsa_equals_attention_over_the_real_tokens_of_each_window(H: int, W: int) -> None:
    timm_lsa = make_lsa()
    x = torch.randn(2, H * W, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            MaskedLocallyGroupedAttn(timm_lsa)(x, (H, W)), per_window_reference(timm_lsa, x, H, W)
        )


def test_timm_lsa_lets_the_padding_leak_into_the_border_windows() -> None:
    # Why the masked version exists: timm's zero-padding changes the border windows (only there).
    timm_lsa = make_lsa()
    H, W = 14, 10  # the width alone is padded (to 14)
    x = torch.randn(1, H * W, 16)
    with torch.no_grad():
        leaky = timm_lsa(x, (H, W)).view(1, H, W, 16)
        exact = MaskedLocallyGroupedAttn(timm_lsa)(x, (H, W)).view(1, H, W, 16)
    torch.testing.assert_close(leaky[:, :, :7], exact[:, :, :7])  # full windows agree
    # every token of a padded window differs
    assert (leaky[:, :, 7:] - exact[:, :, 7:]).norm(dim=-1).min() > 1e-3


# ----------------------------------------------------------------------------------- backbone and head


def test_extra_norm_normalises_every_stage_over_channels() -> None:
    plain, normed = tiny_segmenter(), tiny_segmenter(extra_norm=True)
    assert n_params(normed.backbone) - n_params(plain.backbone) == 2 * sum(plain.backbone.channels)
    with torch.no_grad():
        features = normed.backbone(torch.randn(1, 3, 64, 96))
    for f in features:
        torch.testing.assert_close(f.mean(dim=1), torch.zeros_like(f[:, 0]), atol=1e-4, rtol=0)
        torch.testing.assert_close(f.var(dim=1, unbiased=False), torch.ones_like(f[:, 0]), atol=1e-2, rtol=0)


def test_light_head_shapes_and_size() -> None:
    channels, E, K = [64, 128, 256, 512], 256, 6
    head = LightHead(channels, K, embed_dim=E)
    # 1x1 projections, 1x1 fuse conv without bias + BN, 1x1 classifier (SVT-S: about 0.5 M, anchors.md)
    assert n_params(head) == sum(c * E + E for c in channels) + 4 * E * E + 2 * E + E * K + K
    assert 0.45e6 < n_params(head) < 0.55e6
    features = [torch.randn(2, c, 16 // 2**i, 24 // 2**i) for i, c in enumerate(channels)]
    assert head(features, out_size=(64, 96)).shape == (2, K, 64, 96)


def _plain_light_head(
    head: LightHead, features: list[torch.Tensor], out_size: tuple[int, int]
) -> torch.Tensor:
    """The head in its published order: project, resize to the finest stage, concatenate, fuse, classify."""
    size = features[0].shape[-2:]
    x = torch.cat(
        [
            F.interpolate(proj(f), size=size, mode="bilinear", align_corners=False)
            for proj, f in zip(head.proj, features, strict=True)
        ],
        dim=1,
    )
    x = head.classifier(head.dropout(head.fuse(x)))
    return F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("train", [False, True])
def test_light_head_computes_the_concatenating_head(train: bool) -> None:
    # The head folds the fuse convolution into the projections and resizes after it; it must be the
    # same function, with the same gradients, at an odd size where every resize interpolates.
    torch.manual_seed(0)
    channels, E, K = [8, 16, 32, 64], 16, 5
    head = LightHead(channels, K, embed_dim=E, dropout=0.0).train(train)
    with torch.no_grad():  # BN statistics that are not the identity
        head.fuse.bn.running_mean.normal_()
        head.fuse.bn.running_var.uniform_(0.5, 2.0)
        for p in head.parameters():
            p.normal_(0, 0.3)
    features = [
        torch.randn(2, c, 13 // 2**i + 1, 19 // 2**i + 1, requires_grad=True) for i, c in enumerate(channels)
    ]
    plain = copy.deepcopy(head)
    out, want = head(features, out_size=(51, 77)), _plain_light_head(plain, features, out_size=(51, 77))
    torch.testing.assert_close(out, want, atol=1e-4, rtol=1e-4)
    assert want.abs().max() > 1.0  # not a comparison of near-zero maps
    grad_out = torch.randn_like(out)
    got_grads = torch.autograd.grad(out, [head.proj[3].weight, head.fuse.conv.weight, features[2]], grad_out)
    want_grads = torch.autograd.grad(
        want, [plain.proj[3].weight, plain.fuse.conv.weight, features[2]], grad_out
    )
    for got, expected in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-3)


def test_optimiser_can_find_the_head_and_the_position_convolutions() -> None:
    model = tiny_segmenter()
    names = [n for n, _ in model.named_parameters()]
    assert {n.split(".")[0] for n in names} == {"backbone", "decode_head"}
    assert any("pos_block" in n for n in names if n.startswith("backbone."))


@pytest.mark.parametrize(
    "backbone,backbone_kwargs",
    [
        (model_config(n)["backbone"], model_config(n)["backbone_kwargs"])
        for n in ("pvt_v2_b0", "convnext_atto", "swin_t")
    ]
    + [("resnet18", {"out_indices": [1, 2, 3, 4]}), ("efficientnet_b0", {"out_indices": [1, 2, 3, 4]})],
)
def test_other_timm_backbones(backbone: str, backbone_kwargs: dict | None) -> None:
    torch.manual_seed(0)
    model = Segmenter(backbone, num_classes=6, embed_dim=16, backbone_kwargs=backbone_kwargs).eval()
    assert model.backbone.reductions == [4, 8, 16, 32]
    with torch.no_grad():
        features = model.backbone(torch.randn(1, 3, 64, 96))
        logits = model(torch.randn(1, 3, 67, 93))
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 64 // r, 96 // r) for c, r in zip(model.backbone.channels, [4, 8, 16, 32], strict=True)
    ]
    assert logits.shape == (1, 6, 67, 93)


@pytest.mark.slow
@pytest.mark.parametrize("timm_name", sorted(PUBLISHED_PARAMS_M))
def test_parameter_count_parity_with_timm(timm_name: str) -> None:
    # The meta device builds the full-size models without allocating or initialising weights.
    classifier = timm.create_model(timm_name, device="meta")
    headless = timm.create_model(timm_name, num_classes=0, device="meta")
    model = Segmenter(timm_name, num_classes=6, backbone_kwargs={"device": "meta"})
    # features_only keeps everything but the head and the final LayerNorm, which only the
    # classifier's pooled last stage uses
    assert n_params(model.backbone) == n_params(headless) - n_params(headless.norm)
    assert n_params(classifier) / 1e6 == pytest.approx(PUBLISHED_PARAMS_M[timm_name], abs=0.1)
    if timm_name == "twins_svt_small":
        assert (
            round(n_params(classifier) / 1e6, 1) == 24.1 and round(n_params(model.backbone) / 1e6, 1) == 23.5
        )


# ---------------------------------------------------------------------------------------------- weights


def tiny_classifier(widths: list[int] | None = None) -> torch.nn.Module:
    torch.manual_seed(1)
    kwargs = {**TINY["twins_svt_small"], "embed_dims": widths or TINY["twins_svt_small"]["embed_dims"]}
    return timm.create_model("twins_svt_small", num_classes=10, **kwargs).eval()


@pytest.mark.parametrize("layout", ["official.pth", "timm.safetensors", "timm.pt"])
def test_loaded_weights_are_the_ones_used(tmp_path: Path, layout: str, caplog) -> None:
    source = tiny_classifier()
    path = tmp_path / layout
    if layout == "official.pth":
        torch.save({"model": source.state_dict()}, path)  # Meituan-AutoML/Twins layout
    elif layout.endswith(".safetensors"):
        safetensors.torch.save_file(source.state_dict(), path)
    else:
        torch.save(source.state_dict(), path)
    with caplog.at_level(logging.INFO, logger="hdmap_seg.models"):
        model = Segmenter(
            "twins_svt_small", 6, backbone_kwargs=TINY["twins_svt_small"], weights=str(path)
        ).eval()
    assert "head.weight" in caplog.text and "missing keys" not in caplog.text
    x = torch.randn(1, 3, 224, 224)  # stages 56/28/14/7: no window padding, so timm's LSA is exact too
    with torch.no_grad():
        expected = source.forward_intermediates(x, intermediates_only=True)
        for got, want in zip(model.backbone(x), expected, strict=True):
            torch.testing.assert_close(got, want)
        assert not torch.allclose(tiny_segmenter().backbone(x)[0], expected[0])  # not equal by chance
    # timm's pretrained config held a copy of the state dict; the backbone drops it
    assert not any("state_dict" in getattr(m, "pretrained_cfg", {}) for m in model.modules())


def test_missing_and_unexpected_keys_are_logged(tmp_path: Path, caplog) -> None:
    state = tiny_classifier().state_dict()
    state.pop("pos_block.0.proj.0.bias")
    state["decoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "partial.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="hdmap_seg.models"):
        Segmenter("twins_svt_small", 6, backbone_kwargs=TINY["twins_svt_small"], weights=str(path))
    missing = [r for r in caplog.records if "missing keys" in r.message]
    unexpected = [r for r in caplog.records if "unexpected keys" in r.message]
    assert missing and "pos_block.0.proj.0.bias" in missing[0].message and str(path) in missing[0].message
    assert unexpected and "decoder.extra.weight" in unexpected[0].message


def write_bad(kind: str, path: Path) -> Path:
    if kind == "text":
        path.write_text("not a checkpoint\n")
    elif kind == "garbage-safetensors":
        path = path.with_suffix(".safetensors")
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json}")
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "strings":
        torch.save({"epoch": "3", "note": "no weights"}, path)
    elif kind == "other-width":
        torch.save({"model": tiny_classifier([32, 32, 48, 64]).state_dict()}, path)
    elif kind == "other-model":
        torch.save(timm.create_model("resnet10t").state_dict(), path)
    return path


@pytest.mark.parametrize(
    "kind,message",
    [
        ("missing", "not found"),
        ("text", "is no checkpoint"),
        ("garbage-safetensors", "is no checkpoint"),
        ("list", "is no checkpoint"),
        ("strings", "is no state dict"),
        ("other-width", "do not fit twins_svt_small"),
        ("other-model", "no tensor of twins_svt_small"),
    ],
)
def test_bad_weight_files_are_clear_errors(tmp_path: Path, kind: str, message: str) -> None:
    path = write_bad(kind, tmp_path / "weights.pth")
    with pytest.raises(HdmapError, match=message) as err:
        Segmenter("twins_svt_small", 6, backbone_kwargs=TINY["twins_svt_small"], weights=str(path))
    assert str(path) in str(err.value)


def test_pretrained_offline_is_a_clear_error(monkeypatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HdmapError, match="model.weights=PATH"):
        Segmenter("twins_svt_small", 6, pretrained=True, backbone_kwargs=TINY["twins_svt_small"])


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(HdmapError, match="twins_svt_smol"):
        Segmenter("twins_svt_smol", 6)


# ------------------------------------------------------------------------------------------- learning


def test_tiny_model_overfits_one_batch() -> None:
    torch.manual_seed(0)
    K = 6
    # two 64x64 frames of 16x16 blocks, one colour per class plus noise
    blocks = torch.stack([torch.randperm(16) % K for _ in range(2)]).view(2, 4, 4)
    mask = blocks.repeat_interleave(16, 1).repeat_interleave(16, 2)
    palette = torch.rand(K, 3) * 2 - 1
    images = palette[mask].permute(0, 3, 1, 2) + 0.1 * torch.randn(2, 3, 64, 64)
    model = create_model("twins_svt_tiny", K)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(images), mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        miou = MulticlassJaccardIndex(num_classes=K)(model(images).argmax(1), mask)
    assert losses[-1] < losses[0] / 10
    assert miou > 0.9


# -------------------------------------------------------------------------------------------- configs


def test_every_model_file_is_a_registry_entry_of_segmenter_arguments() -> None:
    assert list_models() == sorted(p.stem for p in CONF_MODEL.glob("*.yaml"))
    arguments = set(inspect.signature(Segmenter).parameters)
    for name in list_models():
        cfg = OmegaConf.to_container(OmegaConf.load(CONF_MODEL / f"{name}.yaml"))
        assert cfg["_target_"] == "hdmap_seg.models.Segmenter"
        assert cfg["num_classes"] == "${data.num_classes}", name  # the data set's, not the model's
        assert set(model_config(name)) <= arguments, name
        assert model_config(name)["backbone"] == cfg["backbone"]
    with pytest.raises(KeyError, match="unknown model 'twins_svt_xl'; registered: convnext_atto"):
        model_config("twins_svt_xl")


def test_the_tiny_config_instantiates_with_hydra() -> None:
    cfg = OmegaConf.create(
        {"data": {"num_classes": 6}, "model": OmegaConf.load(CONF_MODEL / "twins_svt_tiny.yaml")}
    )
    model = hydra.utils.instantiate(cfg.model)
    assert isinstance(model, Segmenter) and model.num_classes == 6
    assert 2.4e6 < n_params(model) < 2.6e6  # the figure docs/models.md quotes
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 90, 120)).shape == (1, 6, 90, 120)
