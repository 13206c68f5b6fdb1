"""DINOv2 backbones, SALAD and BoQ: tiny forward/backward with frozen blocks, the published descriptor
sizes, the Sinkhorn marginals, the official DINOv2 weights layout, and the load-time refusals."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from vgray.cli import main
from vgray.config import load_config
from vgray.models import build_model
from vgray.models.aggregations.salad import assignment, log_sinkhorn
from vgray.models.backbones.dinov2 import nearest_multiples


def model_for(*sets, meta=False):
    cfg = load_config(overrides=["model.pretrained=none", *sets])
    if meta:
        with torch.device("meta"):
            return build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size)
    return build_model(cfg.model, image_size=cfg.data.image_size)


TINY = ["model.backbone=dinov2_vits14", "data.resize=[42,56]", "model.trunc_te=3", "model.train_blocks=1"]


@pytest.mark.parametrize(
    "head,sets,dim",
    [
        ("salad", ["model.salad_clusters=4", "model.salad_cluster_dim=8", "model.salad_token_dim=16"], 4 * 8 + 16),
        ("boq", ["model.boq_queries=4", "model.boq_row_dim=2"], 192 * 2),
        ("gem", [], 384),
        ("cls", [], 384),
        ("netvlad", ["model.netvlad_clusters=4"], 4 * 384),
    ],
)
def test_dinov2_heads_train_only_the_last_blocks(head, sets, dim):
    torch.manual_seed(0)
    model = model_for(*TINY, f"model.aggregation={head}", *sets)
    assert model.features_dim == dim
    model.train()
    out = model(torch.rand(2, 3, 42, 56))
    assert out.shape == (2, dim) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    vit = model.backbone.vit
    frozen = {
        id(p)
        for p in [
            vit.cls_token,
            vit.pos_embed,
            *vit.patch_embed.parameters(),
            *vit.blocks[0].parameters(),
            *vit.blocks[1].parameters(),
        ]
    }
    for name, p in model.named_parameters():
        if id(p) in frozen:
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name


def test_salad_on_the_papers_vit_takes_its_class_token():
    """timm's ViT-B/16 gives its class token first, as DINOv2 does: SALAD takes it (14 x 14 patches)."""
    torch.manual_seed(0)
    model = model_for(
        "model.backbone=vit",
        "model.trunc_te=1",
        "data.resize=[224,224]",
        "model.aggregation=salad",
        "model.salad_clusters=4",
        "model.salad_cluster_dim=8",
        "model.salad_token_dim=16",
    )
    model.eval()
    images = torch.rand(2, 3, 224, 224)
    out = model(images)
    assert out.shape == (2, 4 * 8 + 16) and torch.allclose(out.norm(dim=1), torch.ones(2))
    tokens = model.backbone(images)
    token = model.aggregation.token_features(tokens[:, 0])
    assert torch.allclose(out[:, :16] / out[:, :16].norm(dim=1, keepdim=True), F.normalize(token, dim=1), atol=1e-6)


def test_train_blocks_null_trains_everything():
    model = model_for(
        "model.backbone=dinov2_vits14", "data.resize=[28,28]", "model.trunc_te=1", "model.aggregation=gem"
    )
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize(
    "backbone,head,size,dim",
    [
        ("dinov2_vitb14", "salad", 322, 64 * 128 + 256),  # SALAD (CVPR 2024): 8,448
        ("resnet50conv4", "boq", 320, 16384),  # BoQ ResNet-50: 512 x 32
        ("dinov2_vitb14", "boq", 322, 12288),  # BoQ DINOv2-B: 384 x 32
    ],
)
def test_published_descriptor_sizes(backbone, head, size, dim):
    model = model_for(
        f"model.backbone={backbone}", f"model.aggregation={head}", f"data.resize=[{size},{size}]", meta=True
    )
    assert model.features_dim == dim


def test_published_layer_shapes():
    salad = model_for(
        "model.backbone=dinov2_vitb14", "model.aggregation=salad", "data.resize=[322,322]", meta=True
    ).aggregation
    shapes = {k: tuple(v.shape) for k, v in salad.state_dict().items()}
    assert shapes["score.3.weight"] == (64, 512, 1, 1) and shapes["cluster_features.0.weight"] == (512, 768, 1, 1)
    assert shapes["token_features.2.weight"] == (256, 512) and shapes["dust_bin"] == ()
    boq = model_for(
        "model.backbone=resnet50conv4", "model.aggregation=boq", "data.resize=[320,320]", meta=True
    ).aggregation
    assert boq.proj_c.weight.shape == (512, 1024, 3, 3) and boq.fc.weight.shape == (32, 128)
    assert len(boq.boqs) == 2 and boq.boqs[0].queries.shape == (1, 64, 512)
    assert boq.boqs[0].cross_attn.num_heads == 8


@pytest.mark.parametrize("seed", range(6))
def test_sinkhorn_marginals(seed):
    g = torch.Generator().manual_seed(seed)
    b, m, n = 2, 1 + seed, 8 + 3 * seed
    scores = 3 * torch.randn(b, m, n, generator=g)
    log_a, log_b = torch.log_softmax(torch.randn(m, generator=g), 0), torch.log_softmax(torch.randn(n, generator=g), 0)
    for iters in (1, 3):  # columns are exact after every iteration
        plan = log_sinkhorn(scores, log_a, log_b, iters).exp()
        assert torch.allclose(plan.sum(1), log_b.exp().expand(b, n), atol=1e-5)
    plan = log_sinkhorn(scores, log_a, log_b, 500).exp()
    assert torch.allclose(plan.sum(2), log_a.exp().expand(b, m), atol=1e-4)
    # SALAD's plan: each token's mass 1, each cluster's 1, the dustbin's n - m
    plan = assignment(scores, torch.tensor(1.0), iters=500)
    assert torch.allclose(plan.sum(1), torch.ones(b, n), atol=1e-4)
    assert torch.allclose(plan.sum(2), torch.tensor([1.0] * m + [n - m]).expand(b, m + 1), atol=1e-3)
    assert (plan >= 0).all()


def _official_layout(vit):
    """A timm DINOv2 state dict written as facebookresearch/dinov2 lays its files out."""
    state = {k: v.clone() for k, v in vit.state_dict().items()}
    state["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return state


def test_official_dinov2_file_loads_and_gives_the_official_tokens(tmp_path, monkeypatch):
    """A file in the official layout (518 x 518, 37 x 37 positions) at the path the dinov2 record
    prints -> model.pretrained=dinov2 loads it offline; the class token equals the one the official
    arithmetic gives (positions resampled bicubic, scale (h + 0.1) / 37, no antialiasing)."""
    import timm

    torch.manual_seed(0)
    source = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, depth=2)
    assert source.pos_embed.shape == (1, 1 + 37 * 37, 384)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from vgray.models.pretrained import cached_path, record

    rec = record("vit_small_patch14_dinov2", "dinov2")
    assert rec.url == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vits14/dinov2_vits14_pretrain.pth"
    assert "Apache-2.0" in rec.licence and rec.mean == (0.485, 0.456, 0.406)
    path = cached_path(rec)
    path.parent.mkdir(parents=True)
    torch.save(_official_layout(source), path)
    model = model_for(
        "model.backbone=dinov2_vits14",
        "model.pretrained=dinov2",
        "model.trunc_te=2",
        "model.aggregation=cls",
        "data.resize=[42,56]",
    ).eval()
    x = torch.rand(1, 3, 42, 56)
    with torch.no_grad():
        pos = source.pos_embed
        grid = F.interpolate(
            pos[:, 1:].reshape(1, 37, 37, 384).permute(0, 3, 1, 2),
            mode="bicubic",
            scale_factor=(3.1 / 37, 4.1 / 37),
            antialias=False,
        )
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 12, 384)], 1)
        tokens = torch.cat([source.cls_token, source.patch_embed.proj(x).flatten(2).transpose(1, 2)], 1) + pos
        expected = source.norm(source.blocks(tokens))[:, 0]
        assert torch.allclose(model(x), expected, atol=1e-5)
    # A model.pretrained file in that layout loads the same way.
    torch.save(_official_layout(source), tmp_path / "official.pth")
    again = model_for(
        "model.backbone=dinov2_vits14",
        f"model.pretrained={tmp_path / 'official.pth'}",
        "model.trunc_te=2",
        "model.aggregation=cls",
        "data.resize=[42,56]",
    ).eval()
    with torch.no_grad():
        assert torch.allclose(again(x), expected, atol=1e-5)


def test_vitg_swiglu_keys_convert():
    from vgray.models.pretrained import dinov2_to_timm

    out = dinov2_to_timm({"blocks.0.3.mlp.w12.weight": 1, "blocks.3.mlp.w3.bias": 2, "mask_token": 0, "norm.weight": 3})
    assert out == {"blocks.3.mlp.fc1.weight": 1, "blocks.3.mlp.fc2.bias": 2, "norm.weight": 3}


def test_nearest_multiples():
    assert nearest_multiples(320) == "308 or 322" and nearest_multiples(5) == "14"


@pytest.mark.parametrize(
    "sets,message",
    [
        (["model.backbone=dinov2_vitb14", "data.resize=[320,320]"], "multiples of 14 .*308 or 322"),
        (
            ["model.backbone=resnet50conv4", "model.aggregation=salad", "data.resize=[320,320]"],
            "salad needs a class token.*allowed: dinov2_vitb14, dinov2_vitg14",
        ),
        (
            ["model.backbone=cct384", "model.aggregation=salad", "data.resize=[384,384]"],
            "needs a class token.*dinov2_vitb14.*vit",
        ),
        (
            ["model.backbone=dinov2_vits14", "model.train_blocks=13", "data.resize=[224,224]"],
            r"train_blocks=13 .*0\.\.12",
        ),
        (["model.backbone=resnet50conv4", "model.train_blocks=2"], "train_blocks is for the backbones"),
        (
            ["model.backbone=dinov2_vits14", "data.resize=[28,42]", "test.method=five_crops"],
            "test.method=five_crops feeds queries at another size",
        ),
        (
            ["model.backbone=dinov2_vits14", "model.aggregation=salad", "data.resize=[98,98]"],
            "salad_clusters=64 needs more patch tokens",
        ),
        (
            ["model.backbone=resnet50conv4", "model.aggregation=boq", "model.boq_proj_channels=129"],
            "boq_proj_channels=129 must split into 2",
        ),
    ],
)
def test_refusals_exit_2_with_one_line(sets, message, tmp_path, capsys):
    import re

    argv = ["profile", "--json", str(tmp_path / "p.json"), "--set", "model.pretrained=none"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "p.json").exists()


def test_profile_dinov2_salad(tmp_path):
    argv = ["profile", "--runs", "1", "--json", str(tmp_path / "p.json")]
    for s in (
        "model.backbone=dinov2_vits14",
        "model.aggregation=salad",
        "model.pretrained=none",
        "data.resize=[126,126]",
        "model.trunc_te=1",
    ):
        argv += ["--set", s]
    assert main(argv) == 0
    figures = json.loads((tmp_path / "p.json").read_text())
    assert figures["features_dim"] == 8448 and figures["gflops"] > 0
    assert math.isfinite(figures["model_size_mb"])
