"""The paper's transformer networks (HuggingFace ViT in its VitWrapper, its CCT copy) and CosPlace's
ResNet-152 through ``model.pretrained: FILE``: each file written here with random tensors in its
publisher's names and shapes, loaded, and the descriptor of a fixed image compared with the one the
publisher's arithmetic gives from the written tensors (written below with functional ops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vgray.config import load_config
from vgray.errors import BadInput
from vgray.models import build_model
from vgray.models.backbones.cct import source_key
from vgray.models.foreign import LAYOUTS
from vgray.models.foreign.paper_transformers import cct_to_vgray, vit_to_timm
from vgray.models.pretrained import RECORDS, cached_path, record

D_VIT, HEADS_VIT, MLP_VIT = 768, 12, 3072
D_CCT, HEADS_CCT, MLP_CCT = 384, 6, 1152
VIT, CCT = "backbone.vit_model.", "backbone."


def _image(size: int) -> torch.Tensor:
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(7))


def _config(backbone, aggregation, pretrained, size, *extra):
    return load_config(
        overrides=[
            f"model.backbone={backbone}",
            f"model.aggregation={aggregation}",
            f"model.pretrained={pretrained}",
            "model.netvlad_clusters=4",
            f"data.resize=[{size},{size}]",
            *extra,
        ]
    ).model


def _descriptor(path, backbone, aggregation, size, *extra) -> torch.Tensor:
    model = build_model(_config(backbone, aggregation, str(path), size, *extra)).eval()
    assert not model.needs_init()  # NetVLAD: marked initialised, no k-means over trained clusters
    with torch.no_grad():
        return model(_image(size))


class _Random:
    """Random tensors of a given shape: LayerNorm-like (around 1), biases and weights (signed)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, *shape, scale=0.05, around=0.0):
        return around + scale * torch.randn(*shape, generator=self.g)


def _linear(r, state, name, out, inp, bias=True):
    state[name + ".weight"] = r(out, inp)
    if bias:
        state[name + ".bias"] = r(out, scale=0.02)


def _norm(r, state, name, dim):
    state[name + ".weight"] = r(dim, scale=0.1, around=1.0)
    state[name + ".bias"] = r(dim, scale=0.1)


def _head(r, state, aggregation, l2, fc, dim):
    """The paper's aggregation keys: gem in Sequential(L2Norm, GeM, Flatten) or (GeM, L2Norm, Flatten),
    netvlad's Conv1d on tokens; cls/seqpool are an identity; an FC wraps it all as aggregation.0."""
    inner = "aggregation.0." if fc else "aggregation."
    if aggregation == "gem":
        state[inner + ("1.p" if l2 == "before_pool" else "0.p")] = torch.tensor([2.5])
    elif aggregation == "netvlad":
        state[inner + "conv.weight"] = r(4, dim, 1, scale=2.0)
        state[inner + "centroids"] = r(4, dim, scale=0.05)
    if fc:
        state["aggregation.1.weight"] = r(fc, dim * (4 if aggregation == "netvlad" else 1))
        state["aggregation.1.bias"] = r(fc, scale=0.02)


# -- the paper's arithmetic ---------------------------------------------------------------------


def _attention(x, q, k, v, heads):
    """Multi-head scaled dot-product attention of (B, N, C) queries, keys and values."""
    b, n, c = x.shape
    q, k, v = (t.view(b, n, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-2, -1) / math.sqrt(c // heads)).softmax(-1)
    return (weights @ v).transpose(1, 2).reshape(b, n, c)


def _hf_vit(s: dict, image: torch.Tensor, blocks: int) -> torch.Tensor:
    """HuggingFace ViTModel's last_hidden_state (LayerNorm eps 1e-12, exact GELU)."""
    p, eps = VIT, 1e-12

    def ln(x, name):
        return F.layer_norm(x, (D_VIT,), s[name + ".weight"], s[name + ".bias"], eps=eps)

    def lin(x, name):
        return F.linear(x, s[name + ".weight"], s[name + ".bias"])

    x = (
        F.conv2d(
            image,
            s[p + "embeddings.patch_embeddings.projection.weight"],
            s[p + "embeddings.patch_embeddings.projection.bias"],
            stride=16,
        )
        .flatten(2)
        .transpose(1, 2)
    )
    x = torch.cat([s[p + "embeddings.cls_token"].expand(x.shape[0], -1, -1), x], 1)
    x = x + s[p + "embeddings.position_embeddings"]
    for i in range(blocks):
        layer = f"{p}encoder.layer.{i}."
        h = ln(x, layer + "layernorm_before")
        qkv = [lin(h, f"{layer}attention.attention.{n}") for n in ("query", "key", "value")]
        x = x + lin(_attention(h, *qkv, HEADS_VIT), layer + "attention.output.dense")
        h = ln(x, layer + "layernorm_after")
        x = x + lin(F.gelu(lin(h, layer + "intermediate.dense")), layer + "output.dense")
    return ln(x, p + "layernorm")


def _paper_cct(s: dict, image: torch.Tensor, blocks: int) -> torch.Tensor:
    """The paper's CCT (model/cct): tokenizer, positional embedding, encoder layers, final norm."""
    x = image
    for i in range(2):
        x = F.max_pool2d(
            F.conv2d(x, s[f"backbone.tokenizer.conv_layers.{i}.0.weight"], stride=2, padding=3).relu(),
            3,
            stride=2,
            padding=1,
        )
    x = x.flatten(2).transpose(1, 2) + s["backbone.classifier.positional_emb"]

    def lin(x, name, bias=True):
        return F.linear(x, s[name + ".weight"], s[name + ".bias"] if bias else None)

    for i in range(blocks):
        b = f"backbone.classifier.blocks.{i}."
        h = F.layer_norm(x, (D_CCT,), s[b + "pre_norm.weight"], s[b + "pre_norm.bias"])
        q, k, v = lin(h, b + "self_attn.qkv", bias=False).chunk(3, dim=-1)
        x = x + lin(_attention(h, q, k, v, HEADS_CCT), b + "self_attn.proj")
        x = F.layer_norm(x, (D_CCT,), s[b + "norm1.weight"], s[b + "norm1.bias"])
        x = x + lin(F.gelu(lin(x, b + "linear1")), b + "linear2")
    return F.layer_norm(x, (D_CCT,), s["backbone.classifier.norm.weight"], s["backbone.classifier.norm.bias"])


def _paper_pool(s: dict, tokens: torch.Tensor, aggregation: str, l2: str, fc, cct: bool) -> torch.Tensor:
    """What the paper's network does with the tokens: VitWrapper's choice, then its aggregation."""
    a = "aggregation.0." if fc else "aggregation."
    if aggregation in ("gem", "netvlad"):
        x = tokens if cct else tokens[:, 1:]  # VitWrapper: the patch tokens
    elif aggregation == "seqpool":
        weights = F.linear(
            tokens, s["backbone.classifier.attention_pool.weight"], s["backbone.classifier.attention_pool.bias"]
        ).softmax(dim=1)
        x = (weights.transpose(-1, -2) @ tokens).squeeze(-2)
    else:
        x = tokens[:, 0]  # the class token (CCT: the first token)
    if aggregation == "gem":
        assert l2 != "before_pool"  # its L2Norm there normalised the tokens: not vgray's arithmetic
        t = x.permute(0, 2, 1)
        p = s[a + "0.p"]
        x = F.avg_pool1d(t.clamp(min=1e-6).pow(p), t.size(-1)).pow(1.0 / p)[:, :, 0]
        x = F.normalize(x, p=2, dim=1) if l2 == "after_pool" else x
    elif aggregation == "netvlad":
        t = F.normalize(x.permute(0, 2, 1), p=2, dim=1)  # (B, C, T)
        conv, centroids = s[a + "conv.weight"], s[a + "centroids"]
        soft = F.conv1d(t, conv).softmax(dim=1)
        vlad = torch.stack(
            [((t - centroids[k][None, :, None]) * soft[:, k : k + 1]).sum(-1) for k in range(conv.shape[0])], dim=1
        )
        x = F.normalize(F.normalize(vlad, p=2, dim=2).flatten(1), p=2, dim=1)
    if fc:
        x = F.normalize(F.linear(x, s["aggregation.1.weight"], s["aggregation.1.bias"]), p=2, dim=1)
    return x


# -- ViT ----------------------------------------------------------------------------------------


def _vit_state(blocks: int, size: int, aggregation: str, l2: str, fc) -> dict:
    r, s = _Random(11), {}
    p = VIT
    s[p + "embeddings.cls_token"] = r(1, 1, D_VIT, scale=0.5)
    s[p + "embeddings.position_embeddings"] = r(1, (size // 16) ** 2 + 1, D_VIT, scale=0.5)
    s[p + "embeddings.patch_embeddings.projection.weight"] = r(D_VIT, 3, 16, 16)
    s[p + "embeddings.patch_embeddings.projection.bias"] = r(D_VIT, scale=0.02)
    for i in range(blocks):
        layer = f"{p}encoder.layer.{i}."
        for n in ("query", "key", "value"):
            _linear(r, s, f"{layer}attention.attention.{n}", D_VIT, D_VIT)
        _linear(r, s, layer + "attention.output.dense", D_VIT, D_VIT)
        _linear(r, s, layer + "intermediate.dense", MLP_VIT, D_VIT)
        _linear(r, s, layer + "output.dense", D_VIT, MLP_VIT)
        _norm(r, s, layer + "layernorm_before", D_VIT)
        _norm(r, s, layer + "layernorm_after", D_VIT)
    _norm(r, s, p + "layernorm", D_VIT)
    _linear(r, s, p + "pooler.dense", D_VIT, D_VIT)  # ViTModel's pooler: in the file, never used
    _head(r, s, aggregation, l2, fc, D_VIT)
    return s


def _save_train_checkpoint(state: dict, path) -> None:
    """train.py's checkpoint: DataParallel's prefix, numpy scalars and arrays beside the weights."""
    torch.save(
        {
            "epoch_num": 3,
            "model_state_dict": {f"module.{k}": v for k, v in state.items()},
            "recalls": np.array([50.0, 60.0]),
            "best_r5": np.float64(60.0),
        },
        path,
    )


@pytest.mark.parametrize(
    "aggregation, l2, fc", [("cls", "before_pool", None), ("gem", "after_pool", 16), ("netvlad", "before_pool", None)]
)
def test_paper_vit_gives_the_papers_descriptor(tmp_path, aggregation, l2, fc):
    blocks, size = 2, 224
    state = _vit_state(blocks, size, aggregation, l2, fc)
    _save_train_checkpoint(state, tmp_path / "best_model.pth")
    want = _paper_pool(state, _hf_vit(state, _image(size), blocks), aggregation, l2, fc, cct=False)
    extra = [f"model.trunc_te={blocks}", f"model.l2={l2}"] + ([f"model.fc_output_dim={fc}"] if fc else [])
    got = _descriptor(tmp_path / "best_model.pth", "vit", aggregation, size, *extra)
    # HuggingFace's LayerNorm eps is 1e-12, timm's 1e-6.
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_vit_names_stack_query_key_value_and_drop_the_pooler():
    state = _vit_state(1, 224, "cls", "none", None)
    hf = {k[len(VIT) :]: v for k, v in state.items() if k.startswith(VIT)}
    timm_state = vit_to_timm(hf)
    assert not any(k.startswith("pooler.") for k in timm_state)
    qkv = timm_state["blocks.0.attn.qkv.weight"]
    assert qkv.shape == (3 * D_VIT, D_VIT)
    torch.testing.assert_close(qkv[D_VIT : 2 * D_VIT], hf["encoder.layer.0.attention.attention.key.weight"])
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "norm.weight", "blocks.0.mlp.fc2.bias"} <= set(
        timm_state
    )


def test_paper_vit_for_another_network_names_what_it_was_made_for(tmp_path):
    torch.save(_vit_state(2, 224, "gem", "after_pool", None), tmp_path / "vit.pth")
    with pytest.raises(
        BadInput,
        match=r"the paper's ViT.*made for model\.backbone=vit, model\.trunc_te=2, "
        r"data\.resize=\[224,224\], model\.aggregation=gem",
    ):
        build_model(_config("vit", "gem", str(tmp_path / "vit.pth"), 224, "model.trunc_te=3", "model.l2=after_pool"))
    with pytest.raises(BadInput, match="model.l2=after_pool"):  # GeM's p first: no L2Norm before it
        build_model(_config("vit", "gem", str(tmp_path / "vit.pth"), 224, "model.trunc_te=2", "model.l2=before_pool"))
    build_model(_config("vit", "gem", str(tmp_path / "vit.pth"), 224, "model.trunc_te=2", "model.l2=after_pool"))


def test_paper_transformer_gem_after_its_token_wise_l2norm_is_refused(tmp_path):
    """The paper's L2Norm before GeM normalised (B, T, C) over the tokens: not reproducible, refused."""
    torch.save(_vit_state(2, 224, "gem", "before_pool", None), tmp_path / "vit.pth")
    for l2 in ("before_pool", "after_pool"):
        with pytest.raises(BadInput, match="normalised over the tokens.*allowed"):
            build_model(_config("vit", "gem", str(tmp_path / "vit.pth"), 224, "model.trunc_te=2", f"model.l2={l2}"))


# -- CCT ----------------------------------------------------------------------------------------


def _cct_state(blocks: int, aggregation: str, l2: str, fc) -> dict:
    r, s = _Random(13), {}
    s["backbone.tokenizer.conv_layers.0.0.weight"] = r(64, 3, 7, 7, scale=0.2)
    s["backbone.tokenizer.conv_layers.1.0.weight"] = r(D_CCT, 64, 7, 7, scale=0.05)
    s["backbone.classifier.positional_emb"] = r(1, 576, D_CCT, scale=0.2)
    _linear(r, s, "backbone.classifier.attention_pool", 1, D_CCT)  # in every file of the paper's CCT
    for i in range(blocks):
        b = f"backbone.classifier.blocks.{i}."
        _norm(r, s, b + "pre_norm", D_CCT)
        _linear(r, s, b + "self_attn.qkv", 3 * D_CCT, D_CCT, bias=False)
        _linear(r, s, b + "self_attn.proj", D_CCT, D_CCT)
        _linear(r, s, b + "linear1", MLP_CCT, D_CCT)
        _norm(r, s, b + "norm1", D_CCT)
        _linear(r, s, b + "linear2", D_CCT, MLP_CCT)
    _norm(r, s, "backbone.classifier.norm", D_CCT)
    _head(r, s, aggregation, l2, fc, D_CCT)
    return s


def test_paper_cct_tokenizer_and_one_block_give_the_papers_tokens():
    state = _cct_state(1, "cls", "none", None)
    model = build_model(_config("cct384", "cls", "none", 384, "model.trunc_te=1")).eval()
    own, pool = cct_to_vgray({k[len(CCT) :]: v for k, v in state.items()})
    model.backbone.load_state_dict(own)
    assert set(pool) == {"weight", "bias"}
    with torch.no_grad():
        torch.testing.assert_close(model.backbone(_image(384)), _paper_cct(state, _image(384), 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "aggregation, l2, fc",
    [("cls", "none", None), ("seqpool", "none", 16), ("gem", "none", None), ("netvlad", "before_pool", None)],
)
def test_paper_cct_gives_the_papers_descriptor(tmp_path, aggregation, l2, fc):
    blocks, size = 1, 384
    state = _cct_state(blocks, aggregation, l2, fc)
    _save_train_checkpoint(state, tmp_path / "best_model.pth")
    want = _paper_pool(state, _paper_cct(state, _image(size), blocks), aggregation, l2, fc, cct=True)
    extra = [f"model.trunc_te={blocks}", f"model.l2={l2}"] + ([f"model.fc_output_dim={fc}"] if fc else [])
    got = _descriptor(tmp_path / "best_model.pth", "cct384", aggregation, size, *extra)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_cct_names_are_those_vgray_reads_from_the_cct_authors_files():
    state = _cct_state(1, "cls", "none", None)
    own, _ = cct_to_vgray({k[len(CCT) :]: v for k, v in state.items()})
    for name in own:
        assert f"backbone.{source_key(name)}" in state, name


def test_the_paper_transformer_layouts_are_claimed_by_their_own_layout():
    names = {"vit": "the paper's ViT", "cct": "the paper's CCT"}
    for kind, state in (("vit", _vit_state(1, 224, "cls", "none", None)), ("cct", _cct_state(1, "cls", "none", None))):
        claimed = [layout.name for layout in LAYOUTS if layout.claims({}, state)]
        assert len(claimed) == 1 and claimed[0].startswith(names[kind]), claimed


# -- ResNet-152 and CosPlace's releases ---------------------------------------------------------


def test_cosplace_resnet152_file_and_named_source(tmp_path, torch_home):
    """CosPlace's ResNet-152 layout (backbone.N…, aggregation = L2Norm, GeM, Flatten, Linear, L2Norm)."""
    torch.manual_seed(3)
    source = torchvision.models.resnet152(weights=None)
    with torch.no_grad():  # BatchNorm statistics not the identity ones
        for m in source.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    body = nn.Sequential(*list(source.children())[:-2]).eval()
    r = _Random(17)
    state = {f"backbone.{k}": v for k, v in body.state_dict().items()}
    state.update(
        {
            "aggregation.1.p": torch.tensor([2.7]),
            "aggregation.3.weight": r(32, 2048, scale=0.03),
            "aggregation.3.bias": r(32, scale=0.02),
        }
    )
    image = _image(64)
    with torch.no_grad():
        x = F.normalize(body(image), p=2, dim=1)
        x = F.avg_pool2d(x.clamp(min=1e-6).pow(2.7), x.shape[-2:]).pow(1 / 2.7).flatten(1)
        want = F.normalize(F.linear(x, state["aggregation.3.weight"], state["aggregation.3.bias"]), p=2, dim=1)
    torch.save(state, tmp_path / "ResNet152_32_cosplace.pth")
    got = _descriptor(tmp_path / "ResNet152_32_cosplace.pth", "resnet152conv5", "gem", 64, "model.fc_output_dim=32")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # The named source: offline, the release file at the cache path is used.
    target = cached_path(record("resnet152", "cosplace").for_dim(32))
    assert target.name == "ResNet152_32_cosplace.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    got = _descriptor("cosplace", "resnet152conv5", "gem", 64, "model.fc_output_dim=32")
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_resnet152_records():
    assert RECORDS[("resnet152", "cosplace")].dims == (32, 64, 128, 256, 512, 1024, 2048)
    assert ("resnet152", "eigenplaces") not in RECORDS  # EigenPlaces released no ResNet-152
    assert RECORDS[("resnet152", "imagenet")].file == "resnet152-394f9c45.pth"
    assert RECORDS[("resnet152", "imagenet")].sha256_prefix == "394f9c45"
