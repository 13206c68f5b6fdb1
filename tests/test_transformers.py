"""The transformer backbones (ViT-B/16, CCT-14/7x2) and their aggregations (cls, seqpool, and GeM /
NetVLAD on patch tokens): forward and backward, NetVLAD's k-means initialisation on tokens, trunc_te /
freeze_te where 0 means 0, the load-time refusals, the weights files, and the cost figures."""

import json

import pytest
import timm
import torch
from conftest import TINY_SET, write_image

from vgray.cli import main
from vgray.config import load_config
from vgray.data.transforms import test_transform as resize_transform
from vgray.errors import BadInput
from vgray.evaluate.extract import initialize_aggregation, sample_local_features
from vgray.models import build_model
from vgray.models.backbones.cct import CCT, source_key
from vgray.models.pretrained import RECORDS, WeightsRecord, cached_path, record
from vgray.models.profile import model_cost
from vgray.runtime import Runtime

SIZE = {"vit": 224, "cct384": 384}


def config(backbone, aggregation, *extra):
    s = SIZE[backbone]
    return load_config(
        overrides=[
            *TINY_SET,
            f"model.backbone={backbone}",
            f"model.aggregation={aggregation}",
            f"data.resize=[{s},{s}]",
            "model.netvlad_clusters=8",
            *extra,
        ]
    )


def model_for(backbone, aggregation, *extra):
    cfg = config(backbone, aggregation, *extra)
    return build_model(cfg.model, image_size=cfg.data.image_size)


@pytest.mark.parametrize(
    "backbone,aggregation,fc",
    [
        ("vit", "cls", None),
        ("vit", "gem", None),
        ("vit", "netvlad", 32),
        ("cct384", "cls", None),
        ("cct384", "seqpool", 32),
        ("cct384", "gem", None),
        ("cct384", "netvlad", None),
    ],
)
def test_forward_backward(backbone, aggregation, fc):
    torch.manual_seed(0)
    model = model_for(backbone, aggregation, "model.trunc_te=1", *([f"model.fc_output_dim={fc}"] if fc else []))
    channels = {"vit": 768, "cct384": 384}[backbone]
    expected = fc or channels * (8 if aggregation == "netvlad" else 1)
    assert model.features_dim == expected
    model.train()
    out = model(torch.rand(1, 3, SIZE[backbone], SIZE[backbone]))
    assert out.shape == (1, expected) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    for name, p in model.named_parameters():
        assert p.requires_grad, name  # freeze_te unset: everything trains
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_aggregations_take_the_right_tokens():
    torch.manual_seed(0)
    vit = model_for("vit", "cls", "model.trunc_te=1").eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        tokens = vit.backbone(x)
        assert tokens.shape == (1, 1 + 14 * 14, 768)
        assert torch.equal(vit(x), tokens[:, 0])  # the class token, unnormalised as the paper
        grid = vit.forward_local(x)  # patch tokens only, row-major on the 14 x 14 grid
        assert grid.shape == (1, 768, 14, 14)
        assert torch.equal(grid[0, :, 2, 5], tokens[0, 1 + 2 * 14 + 5])
    cct = model_for("cct384", "seqpool", "model.trunc_te=1").eval()
    x = torch.rand(1, 3, 384, 384)
    with torch.no_grad():
        tokens = cct.backbone(x)
        assert tokens.shape == (1, 24 * 24, 384)
        weights = torch.softmax(tokens[0] @ cct.aggregation.attention.weight[0] + cct.aggregation.attention.bias, 0)
        torch.testing.assert_close(cct(x)[0], (weights[:, None] * tokens[0]).sum(0))


def test_netvlad_kmeans_initialisation_on_tokens(tmp_path):
    torch.manual_seed(0)
    cfg = config("vit", "netvlad", "model.trunc_te=1", "test.batch_size=4")
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    paths = [str(write_image(tmp_path / f"{i}.jpg", seed=i, size=(60, 80))) for i in range(6)]
    transform = resize_transform(cfg.data.image_size, model.mean, model.std)
    rt = Runtime.from_config(cfg, progress=False)
    local = sample_local_features(model, paths, transform, rt, total=300, per_image=50)
    assert local.shape == (300, 768)  # 50 of the 196 patch tokens of each image
    assert model.needs_init()
    initialize_aggregation(model, paths, transform, rt)
    assert not model.needs_init()
    # The clusters are unit-norm k-means centroids of the tokens, not the random initial ones.
    norms = model.aggregation.conv.weight.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, norms[0].expand_as(norms))
    out = model(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 8 * 768) and torch.isfinite(out).all()


def trainable_blocks(blocks):
    return [all(p.requires_grad for p in b.parameters()) for b in blocks]


def any_trainable(params):
    return any(p.requires_grad for p in params)


def test_trunc_and_freeze_where_zero_means_zero():
    vit = model_for("vit", "cls", "model.trunc_te=0").backbone
    assert len(vit.vit.blocks) == 0
    cct = CCT(trunc_te=3, freeze_te=None)
    assert len(cct.blocks) == 3 and all(p.requires_grad for p in cct.parameters())
    cct = CCT(trunc_te=3, freeze_te=0)  # the embedding only
    assert not any_trainable([*cct.tokenizer.parameters(), cct.pos_embed])
    assert trainable_blocks(cct.blocks) == [True, True, True] and cct.norm.weight.requires_grad
    cct = CCT(trunc_te=3, freeze_te=2)
    assert trainable_blocks(cct.blocks) == [False, False, True]
    vit = model_for("vit", "gem", "model.trunc_te=2", "model.freeze_te=1").backbone.vit
    assert not any_trainable([vit.cls_token, vit.pos_embed, *vit.patch_embed.parameters()])
    assert trainable_blocks(vit.blocks) == [False, True] and vit.norm.weight.requires_grad


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.aggregation=cls"], "cannot pool the feature_map of model.backbone=resnet18conv4"),
        (["model.aggregation=seqpool"], "cannot pool the feature_map"),
        (["model.trunc_te=2"], "model.trunc_te applies to the transformer backbones"),
        (["model.backbone=vgg16", "model.freeze_te=0"], "model.freeze_te applies to the transformer backbones"),
        (
            ["model.backbone=vit", "data.resize=[200,200]"],
            "needs data.resize (times resize_fraction) in [(224, 224), (384, 384)]",
        ),
        (["model.backbone=vit", "data.resize=[224,320]"], "not [224, 320]"),
        (["model.backbone=cct384", "data.resize=[224,224]"], "in [(384, 384)]"),
        (
            ["model.backbone=vit", "data.resize=[224,224]", "model.aggregation=seqpool"],
            "model.aggregation=seqpool pools the tokens of a backbone trained with it (cct384)",
        ),
        (
            ["model.backbone=cct384", "data.resize=[384,384]", "model.aggregation=rmac"],
            "cannot pool the tokens of model.backbone=cct384; allowed: boq, cls, convap, gem",
        ),
        (["model.backbone=vit", "data.resize=[224,224]", "model.trunc_te=13"], "allowed: null or 0..12"),
        (["model.backbone=cct384", "data.resize=[384,384]", "model.freeze_te=15"], "allowed: null or 0..14"),
    ],
)
def test_refused_at_load(overrides, message):
    with pytest.raises(BadInput) as err:
        load_config(overrides=["model.pretrained=none", *overrides])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_resize_fraction_counts_for_the_vit_size():
    cfg = load_config(
        overrides=["model.backbone=vit", "model.aggregation=cls", "data.resize=[448,448]", "data.resize_fraction=0.5"]
    )
    assert cfg.data.image_size == (224, 224)


def test_cli_exit_status(tmp_path, capsys):
    code = main(
        ["profile", "--set", "model.backbone=vit", "--set", "model.aggregation=cls", "--set", "data.resize=[200,200]"]
    )
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "data.resize" in err
    code = main(
        [
            "profile",
            "--set",
            "model.backbone=vit",
            "--set",
            "model.aggregation=cls",
            "--set",
            "data.resize=[224,224]",
            "--set",
            "model.trunc_te=1",
            "--runs",
            "1",
            "--json",
            str(tmp_path / "p.json"),
        ]
    )
    assert code == 0
    assert json.loads((tmp_path / "p.json").read_text())["features_dim"] == 768


def test_descriptor_sizes_and_flops_of_the_paper_models():
    """Full depth, on the meta device (no weights, no real forward pass)."""

    def cost(backbone, aggregation, *extra):
        cfg = config(backbone, aggregation, "model.netvlad_clusters=64", *extra)
        with torch.device("meta"):
            return model_cost(build_model(cfg.model, image_size=cfg.data.image_size), cfg.data.image_size)

    vit = cost("vit", "cls")
    assert vit["features_dim"] == 768
    # ViT-B/16 at 224: 17.6 GMACs (as timm reports it), 2 FLOPs per MAC here.
    assert vit["gflops"] == pytest.approx(2 * 17.6, rel=0.01)
    netvlad = cost("cct384", "netvlad")
    assert netvlad["features_dim"] == 24_576
    # CCT-14/7x2 at 384, by hand: the two tokenizer convolutions, then 14 blocks over 576 tokens
    # (qkv, attention scores and values, projection, MLP with ratio 3), then NetVLAD's 1x1 conv.
    tokens, dim = 576, 384
    tokenizer = 192 * 192 * 64 * 3 * 49 + 48 * 48 * dim * 64 * 49
    block = tokens * dim * 3 * dim + 2 * tokens * tokens * dim + tokens * dim * dim + 2 * tokens * dim * 3 * dim
    macs = tokenizer + 14 * block + tokens * dim * 64
    assert netvlad["gflops"] == pytest.approx(2 * macs / 1e9, rel=0.005)
    cls = cost("cct384", "cls", "model.trunc_te=0")
    assert cls["features_dim"] == 384 and cls["gflops"] == pytest.approx(2 * tokenizer / 1e9, rel=0.005)
    assert cost("cct384", "seqpool", "model.trunc_te=0")["features_dim"] == 384


def test_vit_weights_file_and_offline_named_source(tmp_path, monkeypatch):
    """A timm ViT-B/16 state dict (deeper than kept, with a classifier head) loads into the kept blocks,
    from a file and as the cached ``imagenet`` file; a missing one says where to put it."""
    torch.manual_seed(3)
    source = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10, depth=2)
    torch.save(source.state_dict(), tmp_path / "vit.pth")
    model = model_for("vit", "cls", "model.trunc_te=1", f"model.pretrained={tmp_path / 'vit.pth'}")
    vit = model.backbone.vit
    assert torch.equal(vit.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert torch.equal(vit.pos_embed, source.pos_embed) and torch.equal(vit.norm.weight, source.norm.weight)
    assert model.mean == (0.5, 0.5, 0.5)  # the normalisation the ViT weights were trained with

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    cached = cached_path(record("vit_base_patch16_224", "imagenet"))
    assert cached.name == "jx_vit_base_patch16_224_in21k-e5005f0a.pth"
    cached.parent.mkdir(parents=True)
    (tmp_path / "vit.pth").rename(cached)
    again = model_for("vit", "cls", "model.trunc_te=1", "model.pretrained=imagenet").backbone.vit
    assert torch.equal(again.blocks[0].mlp.fc2.weight, source.blocks[0].mlp.fc2.weight)

    cached.unlink()
    rec = RECORDS[("vit_base_patch16_224", "imagenet")]
    monkeypatch.setitem(
        RECORDS,
        ("vit_base_patch16_224", "imagenet"),
        WeightsRecord("http://127.0.0.1:9/" + cached.name, rec.sha256_prefix, rec.mean, rec.std),
    )
    with pytest.raises(BadInput, match=r"put that file at .*checkpoints/jx_vit_base_patch16_224_in21k-e5005f0a.pth"):
        model_for("vit", "cls", "model.trunc_te=1", "model.pretrained=imagenet")


def test_cct_checkpoint_layout_and_seqpool_weights(tmp_path, monkeypatch):
    """A state dict in the CCT authors' layout (classifier.*, tokenizer.conv_layers.*) loads into the
    kept blocks; its SeqPool layer goes to a seqpool aggregation; its ImageNet head is dropped."""
    torch.manual_seed(4)
    fresh = CCT(trunc_te=2)
    state = {source_key(k): v for k, v in fresh.state_dict().items()}
    assert "tokenizer.conv_layers.1.0.weight" in state and "classifier.blocks.1.self_attn.qkv.weight" in state
    state["classifier.attention_pool.weight"] = torch.randn(1, 384)
    state["classifier.attention_pool.bias"] = torch.randn(1)
    state["classifier.fc.weight"], state["classifier.fc.bias"] = torch.randn(1000, 384), torch.randn(1000)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    cached = cached_path(record("cct_14_7x2_384", "imagenet"))
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    model = model_for("cct384", "seqpool", "model.trunc_te=1", "model.pretrained=imagenet")
    assert len(model.backbone.blocks) == 1
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    assert torch.equal(model.aggregation.attention.weight, state["classifier.attention_pool.weight"])
    assert torch.equal(model.aggregation.attention.bias, state["classifier.attention_pool.bias"])

    state["classifier.blocks.0.linear1.weight"] = torch.randn(5, 384)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(
        BadInput, match=r"bad.pth does not fit cct_14_7x2_384: blocks.0.mlp.fc1.weight has shape \(5, 384\)"
    ):
        model_for("cct384", "cls", "model.trunc_te=1", f"model.pretrained={tmp_path / 'bad.pth'}")
