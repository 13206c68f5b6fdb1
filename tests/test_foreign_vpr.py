"""MixVPR, SALAD and BoQ whole networks through ``model.pretrained: FILE`` and as named sources: each
file is written here in its publisher's layout (``VPRModel``'s ``backbone.…`` and ``aggregator.…``
names and shapes, tiny sizes), loaded, and the descriptor of a fixed image compared with the one the
publisher's arithmetic gives from the written tensors (torch functional ops, not vgray's modules)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from vgray.config import load_config
from vgray.errors import BadInput
from vgray.models import build_model
from vgray.models.pretrained import cached_path, record

RESNET_NAMES = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3"]  # cropped after layer3


def _image(side: int) -> torch.Tensor:
    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(7))


def _random(shapes: dict, seed: int, scale: float = 0.1) -> dict:
    """Random tensors of the given shapes (LayerNorm weights near 1, the rest signed and small)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        u = torch.rand(shape, generator=g) - 0.5
        out[key] = 1.0 + u if key.endswith("weight") and len(shape) == 1 else u * 2 * scale  # 1-d: LayerNorm
    return out


def _config(*overrides):
    return load_config(overrides=["model.pretrained=none", *overrides])


def _descriptor(cfg, image):
    model = build_model(cfg.model, image_size=cfg.data.image_size).eval()
    with torch.no_grad():
        return model(image)


# -- the publishers' backbones, from the file's tensors ----------------------------------------


def _resnet50_state(seed: int) -> dict:
    """A torchvision ResNet-50 cropped after layer3, random weights and BatchNorm statistics, in
    torchvision's names (conv1, bn1, layer1…)."""
    with torch.device("meta"):  # the shapes only; He-initialised convolutions drawn here
        net = torchvision.models.resnet50(weights=None)
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, t in net.state_dict().items():
        if key.split(".")[0] not in RESNET_NAMES:
            continue
        if key.endswith("num_batches_tracked"):
            t = torch.tensor(0)
        elif t.dim() == 4:
            t = torch.randn(t.shape, generator=g) * math.sqrt(2.0 / t[0].numel())
        elif "running_var" in key or key.endswith("weight"):
            t = torch.rand(t.shape, generator=g) + 0.5
        else:  # running_mean, bias
            t = (torch.rand(t.shape, generator=g) - 0.5) * 0.2
        state[key] = t
    return state


def _resnet_features(state: dict, image: torch.Tensor) -> torch.Tensor:
    """The authors' backbone: torchvision's ResNet-50 run through layer3 with the written tensors."""
    with torch.device("meta"):
        net = torchvision.models.resnet50(weights=None)
    net.load_state_dict(state, strict=False, assign=True)  # layer4 and fc stay empty: not run
    net.eval()
    with torch.no_grad():
        x = image
        for name in RESNET_NAMES:
            x = getattr(net, name)(x)
    return x


def _dinov2_hub_state(dim: int, blocks: int, grid: int, seed: int) -> dict:
    """A DINOv2 in torch hub's names (``mask_token`` and the final ``norm`` included), its positional
    embedding made for a ``grid`` x ``grid`` patch grid."""
    shapes = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + grid * grid, dim),
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    for i in range(blocks):
        b = f"blocks.{i}."
        shapes.update(
            {
                b + "norm1.weight": (dim,),
                b + "norm1.bias": (dim,),
                b + "attn.qkv.weight": (3 * dim, dim),
                b + "attn.qkv.bias": (3 * dim,),
                b + "attn.proj.weight": (dim, dim),
                b + "attn.proj.bias": (dim,),
                b + "ls1.gamma": (dim,),
                b + "norm2.weight": (dim,),
                b + "norm2.bias": (dim,),
                b + "mlp.fc1.weight": (4 * dim, dim),
                b + "mlp.fc1.bias": (4 * dim,),
                b + "mlp.fc2.weight": (dim, 4 * dim),
                b + "mlp.fc2.bias": (dim,),
                b + "ls2.gamma": (dim,),
            }
        )
    state = _random(shapes, seed)
    for i in range(blocks):  # LayerScale near its trained size, not DINOv2's 1e-5 start
        state[f"blocks.{i}.ls1.gamma"] = state[f"blocks.{i}.ls1.gamma"].abs() + 0.5
        state[f"blocks.{i}.ls2.gamma"] = state[f"blocks.{i}.ls2.gamma"].abs() + 0.5
    return state


def _dinov2_tokens(s: dict, image: torch.Tensor, heads: int, final_norm: bool) -> torch.Tensor:
    """facebookresearch/dinov2's forward: patch embedding, class token, positional embedding
    interpolated as its interpolate_pos_encoding (bicubic, scale (g + 0.1) / M), the blocks (pre-norm
    attention and MLP with LayerScale), then the final norm when ``final_norm``."""
    x = F.conv2d(image, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=14)
    b, c, h, w = x.shape
    x = torch.cat([s["cls_token"].expand(b, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    pos = s["pos_embed"]
    m = int(math.sqrt(pos.shape[1] - 1))
    if m * m != h * w:
        patch = pos[:, 1:].reshape(1, m, m, c).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, scale_factor=((h + 0.1) / m, (w + 0.1) / m), mode="bicubic", antialias=False)
        pos = torch.cat([pos[:, :1], patch.permute(0, 2, 3, 1).reshape(1, h * w, c)], dim=1)
    x = x + pos
    n = x.shape[1]
    blocks = sorted({int(k.split(".")[1]) for k in s if k.startswith("blocks.")})
    for i in blocks:
        p = lambda name, i=i: s[f"blocks.{i}.{name}"]  # noqa: E731
        y = F.layer_norm(x, (c,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
        qkv = F.linear(y, p("attn.qkv.weight"), p("attn.qkv.bias")).reshape(b, n, 3, heads, c // heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) * (c // heads) ** -0.5, dim=-1) @ v
        x = x + p("ls1.gamma") * F.linear(
            a.transpose(1, 2).reshape(b, n, c), p("attn.proj.weight"), p("attn.proj.bias")
        )
        y = F.layer_norm(x, (c,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
        x = x + p("ls2.gamma") * F.linear(
            F.gelu(F.linear(y, p("mlp.fc1.weight"), p("mlp.fc1.bias"))), p("mlp.fc2.weight"), p("mlp.fc2.bias")
        )
    if final_norm:
        x = F.layer_norm(x, (c,), s["norm.weight"], s["norm.bias"], eps=1e-6)
    return x


def _under(state: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


# -- MixVPR (amaralibey/MixVPR) ------------------------------------------------------------------

MIXVPR_TINY = [
    "model.backbone=resnet50conv4",
    "model.aggregation=mixvpr",
    "data.resize=[32,32]",
    "model.mixvpr_map_size=[2,2]",
    "model.mixvpr_out_channels=8",
    "model.mixvpr_out_rows=2",
    "model.mixvpr_depth=2",
]


def _mixvpr_file(n: int, channels: int, out_channels: int, rows: int, depth: int, seed: int = 1) -> dict:
    """VPRModel(backbone=ResNet (``backbone.model.…``), aggregator=MixVPR)'s state dict."""
    shapes = {
        "channel_proj.weight": (out_channels, channels),
        "channel_proj.bias": (out_channels,),
        "row_proj.weight": (rows, n),
        "row_proj.bias": (rows,),
    }
    for i in range(depth):
        shapes.update(
            {
                f"mix.{i}.mix.0.weight": (n,),
                f"mix.{i}.mix.0.bias": (n,),
                f"mix.{i}.mix.1.weight": (n, n),
                f"mix.{i}.mix.1.bias": (n,),
                f"mix.{i}.mix.3.weight": (n, n),
                f"mix.{i}.mix.3.bias": (n,),
            }
        )
    head = _random(shapes, seed, scale=0.5)
    return {
        **{f"backbone.model.{k}": v for k, v in _resnet50_state(seed).items()},
        **{f"aggregator.{k}": v for k, v in head.items()},
    }


def _mixvpr_descriptor(state: dict, image: torch.Tensor) -> torch.Tensor:
    """MixVPR.forward: Feature-Mixer blocks over the flattened map, channel then row projection."""
    a = _under(state, "aggregator.")
    x = _resnet_features(_under(state, "backbone.model."), image).flatten(2)
    n = x.shape[-1]
    for i in range(len({k.split(".")[1] for k in a if k.startswith("mix.")})):
        y = F.layer_norm(x, (n,), a[f"mix.{i}.mix.0.weight"], a[f"mix.{i}.mix.0.bias"])
        y = F.linear(
            F.linear(y, a[f"mix.{i}.mix.1.weight"], a[f"mix.{i}.mix.1.bias"]).relu(),
            a[f"mix.{i}.mix.3.weight"],
            a[f"mix.{i}.mix.3.bias"],
        )
        x = x + y
    x = F.linear(x.permute(0, 2, 1), a["channel_proj.weight"], a["channel_proj.bias"]).permute(0, 2, 1)
    x = F.linear(x, a["row_proj.weight"], a["row_proj.bias"])
    return F.normalize(x.flatten(1), p=2, dim=-1)


def test_mixvpr_resnet50_file_gives_the_publishers_descriptor(tmp_path):
    state = _mixvpr_file(4, 1024, 8, 2, 2)
    image = _image(32)
    want = _mixvpr_descriptor(state, image)
    torch.save(state, tmp_path / "mixvpr.ckpt")  # the released file: the bare state dict
    # a Lightning checkpoint of one's own training: the state dict under "state_dict"
    torch.save({"state_dict": state, "epoch": 3, "global_step": 100}, tmp_path / "lightning.ckpt")
    for name in ("mixvpr.ckpt", "lightning.ckpt"):
        got = _descriptor(_config(*MIXVPR_TINY, f"model.pretrained={tmp_path / name}"), image)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_mixvpr_named_source_refuses_a_config_that_is_not_the_release(torch_home):
    rec = record("resnet50", "mixvpr")
    assert rec.input_size == (320, 320) and rec.whole_network and "amaralibey/MixVPR" in rec.licence
    assert cached_path(rec).name == "resnet50_MixVPR_4096_channels(1024)_rows(4).ckpt"
    # Before any download: one line naming the keys to set.
    with pytest.raises(BadInput) as refused:
        build_model(_config(*MIXVPR_TINY, "model.pretrained=mixvpr").model, image_size=(32, 32))
    message = str(refused.value)
    assert "\n" not in message and message.endswith(
        "set model.mixvpr_map_size=[20, 20], model.mixvpr_out_channels=1024, model.mixvpr_out_rows=4, "
        "model.mixvpr_depth=4"
    ), message
    assert "model.pretrained=mixvpr is a whole network released for model.backbone=resnet50conv4" in message
    assert "(input 320x320)" in message


# -- SALAD (serizba/salad) -----------------------------------------------------------------------

SALAD_TINY = [
    "model.backbone=dinov2_vits14",
    "model.trunc_te=1",
    "data.resize=[56,56]",
    "model.aggregation=salad",
    "model.salad_clusters=4",
    "model.salad_cluster_dim=8",
    "model.salad_token_dim=16",
]


def _salad_file(seed: int = 3) -> dict:
    """VPRModel(backbone=DINOv2 (torch hub's, ``backbone.model.…``), aggregator=SALAD)'s state dict:
    ViT-S/14, one block, a positional embedding made for a 3 x 3 grid (resampled to 4 x 4)."""
    c, m, l, g = 384, 4, 8, 16
    head = _random(
        {
            "token_features.0.weight": (512, c),
            "token_features.0.bias": (512,),
            "token_features.2.weight": (g, 512),
            "token_features.2.bias": (g,),
            "cluster_features.0.weight": (512, c, 1, 1),
            "cluster_features.0.bias": (512,),
            "cluster_features.3.weight": (l, 512, 1, 1),
            "cluster_features.3.bias": (l,),
            "score.0.weight": (512, c, 1, 1),
            "score.0.bias": (512,),
            "score.3.weight": (m, 512, 1, 1),
            "score.3.bias": (m,),
        },
        seed,
    )
    head["dust_bin"] = torch.tensor(0.7)
    return {
        **{f"backbone.model.{k}": v for k, v in _dinov2_hub_state(c, 1, 3, seed).items()},
        **{f"aggregator.{k}": v for k, v in head.items()},
    }


def _salad_descriptor(state: dict, image: torch.Tensor) -> torch.Tensor:
    """DINOv2 (final norm) -> SALAD.forward: the two 1x1-conv MLPs, three log-domain Sinkhorn
    iterations with the dustbin row, the plan-weighted sums, [L2(token), L2 per cluster], L2."""
    a = _under(state, "aggregator.")
    tokens = _dinov2_tokens(_under(state, "backbone.model."), image, heads=6, final_norm=True)
    side = image.shape[-1] // 14
    t, x = tokens[:, 0], tokens[:, 1:].transpose(1, 2).reshape(1, -1, side, side)

    def mlp(name, y):
        y = F.conv2d(y, a[f"{name}.0.weight"], a[f"{name}.0.bias"]).relu()
        return F.conv2d(y, a[f"{name}.3.weight"], a[f"{name}.3.bias"]).flatten(2)

    f, s = mlp("cluster_features", x), mlp("score", x)
    t = F.linear(
        F.linear(t, a["token_features.0.weight"], a["token_features.0.bias"]).relu(),
        a["token_features.2.weight"],
        a["token_features.2.bias"],
    )
    b, m, n = s.shape
    scores = torch.cat([s, a["dust_bin"].expand(b, 1, n)], dim=1)
    norm = -math.log(n + m)
    log_a = torch.full((b, m + 1), norm)
    log_a[:, -1] += math.log(n - m)
    log_b = torch.full((b, n), norm)
    u, v = torch.zeros_like(log_a), torch.zeros_like(log_b)
    for _ in range(3):
        u = log_a - torch.logsumexp(scores + v.unsqueeze(1), dim=2)
        v = log_b - torch.logsumexp(scores + u.unsqueeze(2), dim=1)
    plan = torch.exp(scores + u.unsqueeze(2) + v.unsqueeze(1) - norm)[:, :-1]
    agg = (f.unsqueeze(2) * plan.unsqueeze(1)).sum(-1)  # (B, l, m)
    out = torch.cat([F.normalize(t, p=2, dim=-1), F.normalize(agg, p=2, dim=1).flatten(1)], dim=-1)
    return F.normalize(out, p=2, dim=-1)


def test_salad_dinov2_file_gives_the_publishers_descriptor(tmp_path):
    state = _salad_file()
    image = _image(56)
    torch.save(state, tmp_path / "dino_salad.ckpt")
    got = _descriptor(_config(*SALAD_TINY, f"model.pretrained={tmp_path / 'dino_salad.ckpt'}"), image)
    torch.testing.assert_close(got, _salad_descriptor(state, image), rtol=1e-4, atol=1e-5)

    # Into other head sizes: refused in one line naming what it was made for.
    with pytest.raises(BadInput) as refused:
        build_model(
            _config(*SALAD_TINY, "model.salad_clusters=5", f"model.pretrained={tmp_path / 'dino_salad.ckpt'}").model,
            image_size=(56, 56),
        )
    message = str(refused.value)
    assert "\n" not in message and "SALAD (serizba/salad) layout" in message, message
    assert (
        "made for model.backbone=dinov2_vits14, model.trunc_te=1, model.dinov2_final_norm=true, "
        "model.aggregation=salad, model.salad_clusters=4, model.salad_cluster_dim=8"
    ) in message


# -- BoQ (amaralibey/Bag-of-Queries) -------------------------------------------------------------

BOQ_HEAD = [
    "model.aggregation=boq",
    "model.boq_proj_channels=64",
    "model.boq_queries=4",
    "model.boq_layers=2",
    "model.boq_row_dim=2",
]


def _attention_shapes(prefix: str, d: int) -> dict:
    return {
        prefix + "in_proj_weight": (3 * d, d),
        prefix + "in_proj_bias": (3 * d,),
        prefix + "out_proj.weight": (d, d),
        prefix + "out_proj.bias": (d,),
    }


def _boq_head(channels: int, d: int = 64, queries: int = 4, layers: int = 2, rows: int = 2, seed: int = 4) -> dict:
    """BoQ's aggregator: proj_c, norm_input, boqs.N.{encoder (a TransformerEncoderLayer), queries,
    self_attn, norm_q, cross_attn, norm_out}, fc."""
    shapes = {
        "proj_c.weight": (d, channels, 3, 3),
        "proj_c.bias": (d,),
        "norm_input.weight": (d,),
        "norm_input.bias": (d,),
        "fc.weight": (rows, layers * queries),
        "fc.bias": (rows,),
    }
    for i in range(layers):
        b = f"boqs.{i}."
        shapes.update(_attention_shapes(b + "encoder.self_attn.", d))
        shapes.update(
            {
                b + "encoder.linear1.weight": (4 * d, d),
                b + "encoder.linear1.bias": (4 * d,),
                b + "encoder.linear2.weight": (d, 4 * d),
                b + "encoder.linear2.bias": (d,),
                b + "encoder.norm1.weight": (d,),
                b + "encoder.norm1.bias": (d,),
                b + "encoder.norm2.weight": (d,),
                b + "encoder.norm2.bias": (d,),
                b + "queries": (1, queries, d),
                b + "norm_q.weight": (d,),
                b + "norm_q.bias": (d,),
                b + "norm_out.weight": (d,),
                b + "norm_out.bias": (d,),
            }
        )
        shapes.update(_attention_shapes(b + "self_attn.", d))
        shapes.update(_attention_shapes(b + "cross_attn.", d))
    head = _random(shapes, seed, scale=0.3)
    for i in range(layers):
        head[f"boqs.{i}.queries"] = head[f"boqs.{i}.queries"] * 10  # torch.randn-sized queries
    return head


def _mha(a: dict, prefix: str, q: torch.Tensor, kv: torch.Tensor, heads: int) -> torch.Tensor:
    """nn.MultiheadAttention(batch_first=True)'s arithmetic from its in_proj / out_proj tensors."""
    w, bias = a[prefix + "in_proj_weight"], a[prefix + "in_proj_bias"]
    d = q.shape[-1]
    qs, ks, vs = (F.linear(x, w[i * d : (i + 1) * d], bias[i * d : (i + 1) * d]) for i, x in enumerate((q, kv, kv)))
    split = lambda x: x.reshape(x.shape[0], x.shape[1], heads, d // heads).transpose(1, 2)  # noqa: E731
    att = torch.softmax(split(qs) @ split(ks).transpose(-2, -1) / math.sqrt(d // heads), dim=-1) @ split(vs)
    return F.linear(
        att.transpose(1, 2).reshape(q.shape[0], q.shape[1], d),
        a[prefix + "out_proj.weight"],
        a[prefix + "out_proj.bias"],
    )


def _boq_descriptor(a: dict, x: torch.Tensor) -> torch.Tensor:
    """BoQ.forward on local features (B, C, h, w): 3x3 projection, LayerNorm, per block a post-norm
    ReLU TransformerEncoderLayer then the queries (self-attention, norm, cross-attention, norm); the
    blocks' outputs concatenated, mixed by fc over the queries, flattened and L2-normalised."""
    d = a["proj_c.weight"].shape[0]
    heads = d // 64
    x = F.conv2d(x, a["proj_c.weight"], a["proj_c.bias"], padding=1).flatten(2).permute(0, 2, 1)
    x = F.layer_norm(x, (d,), a["norm_input.weight"], a["norm_input.bias"])
    outs = []
    for i in range(len({k.split(".")[1] for k in a if k.startswith("boqs.")})):
        p = lambda name, i=i: a[f"boqs.{i}.{name}"]  # noqa: E731
        x = F.layer_norm(
            x + _mha(a, f"boqs.{i}.encoder.self_attn.", x, x, heads),
            (d,),
            p("encoder.norm1.weight"),
            p("encoder.norm1.bias"),
        )
        ff = F.linear(
            F.linear(x, p("encoder.linear1.weight"), p("encoder.linear1.bias")).relu(),
            p("encoder.linear2.weight"),
            p("encoder.linear2.bias"),
        )
        x = F.layer_norm(x + ff, (d,), p("encoder.norm2.weight"), p("encoder.norm2.bias"))
        q = p("queries").repeat(x.shape[0], 1, 1)
        q = F.layer_norm(q + _mha(a, f"boqs.{i}.self_attn.", q, q, heads), (d,), p("norm_q.weight"), p("norm_q.bias"))
        out = _mha(a, f"boqs.{i}.cross_attn.", q, x, heads)
        outs.append(F.layer_norm(out, (d,), p("norm_out.weight"), p("norm_out.bias")))
    out = F.linear(torch.cat(outs, dim=1).permute(0, 2, 1), a["fc.weight"], a["fc.bias"])
    return F.normalize(out.flatten(1), p=2, dim=-1)


def test_boq_resnet50_file_gives_the_publishers_descriptor(tmp_path):
    # BoQ's ResNet: backbone.net = Sequential(conv1, bn1, relu, maxpool, layer1, layer2, layer3).
    index = {name: i for i, name in enumerate(RESNET_NAMES)}
    backbone = {
        f"backbone.net.{index[k.split('.', 1)[0]]}.{k.split('.', 1)[1]}": v for k, v in _resnet50_state(5).items()
    }
    head = _boq_head(1024)
    torch.save({**backbone, **{f"aggregator.{k}": v for k, v in head.items()}}, tmp_path / "resnet50_boq.pth")
    image = _image(32)
    want = _boq_descriptor(head, _resnet_features(_resnet50_state(5), image))
    got = _descriptor(
        _config(
            "model.backbone=resnet50conv4",
            "data.resize=[32,32]",
            *BOQ_HEAD,
            f"model.pretrained={tmp_path / 'resnet50_boq.pth'}",
        ),
        image,
    )
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_boq_dinov2_file_gives_the_publishers_descriptor_without_the_final_norm(tmp_path):
    dino = _dinov2_hub_state(384, 1, 3, seed=6)  # the hub model's final norm is in the file, unused
    head = _boq_head(384, seed=7)
    torch.save(
        {**{f"backbone.dino.{k}": v for k, v in dino.items()}, **{f"aggregator.{k}": v for k, v in head.items()}},
        tmp_path / "dinov2_boq.pth",
    )
    image = _image(56)
    tokens = _dinov2_tokens(dino, image, heads=6, final_norm=False)
    want = _boq_descriptor(head, tokens[:, 1:].transpose(1, 2).reshape(1, 384, 4, 4))
    tiny = [
        "model.backbone=dinov2_vits14",
        "model.trunc_te=1",
        "data.resize=[56,56]",
        *BOQ_HEAD,
        f"model.pretrained={tmp_path / 'dinov2_boq.pth'}",
    ]
    got = _descriptor(_config(*tiny, "model.dinov2_final_norm=false"), image)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)

    # With DINOv2's final norm (the default) it would compute another descriptor: refused in one line.
    with pytest.raises(BadInput) as refused:
        build_model(_config(*tiny).model, image_size=(56, 56))
    message = str(refused.value)
    assert "\n" not in message and "BoQ (amaralibey/Bag-of-Queries) layout" in message, message
    assert "model.dinov2_final_norm=false" in message and "model.boq_proj_channels=64" in message


def _boq_resnet50_release(seed: int) -> tuple:
    """resnet50_16384.pth's layout and sizes (proj 512, 64 queries, 2 blocks, 32 rows): (file, head)."""
    index = {name: i for i, name in enumerate(RESNET_NAMES)}
    backbone = {
        f"backbone.net.{index[k.split('.', 1)[0]]}.{k.split('.', 1)[1]}": v for k, v in _resnet50_state(seed).items()
    }
    head = _boq_head(1024, d=512, queries=64, layers=2, rows=32, seed=seed)
    return {**backbone, **{f"aggregator.{k}": v for k, v in head.items()}}, head


def test_boq_named_source_offline_from_the_cache_path(torch_home):
    rec = record("resnet50", "boq")
    assert rec.input_size == (384, 384) and "MIT (amaralibey/Bag-of-Queries)" in rec.licence
    target = cached_path(rec)
    assert target.name == "resnet50_16384.pth"
    target.parent.mkdir(parents=True, exist_ok=True)
    state, head = _boq_resnet50_release(8)
    torch.save(state, target)
    image = _image(32)  # any size: the release is trained at 384 x 384
    got = _descriptor(
        _config("model.backbone=resnet50conv4", "data.resize=[32,32]", "model.aggregation=boq", "model.pretrained=boq"),
        image,
    )
    assert got.shape == (1, 16384)
    want = _boq_descriptor(head, _resnet_features(_resnet50_state(8), image))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_boq_named_sources_refuse_a_config_that_is_not_the_release(torch_home):
    rec = record("vit_base_patch14_dinov2", "boq")
    assert rec.url.endswith("/v1.0/dinov2_12288.pth") and rec.input_size == (322, 322)
    assert record("resnet50", "boq").url.endswith("/v1.0/resnet50_16384.pth")
    with pytest.raises(BadInput) as refused:  # the release leaves DINOv2's final norm out
        build_model(
            _config(
                "model.backbone=dinov2_vitb14",
                "model.trunc_te=1",
                "data.resize=[56,56]",
                "model.aggregation=boq",
                "model.pretrained=boq",
            ).model,
            image_size=(56, 56),
        )
    message = str(refused.value)
    assert "\n" not in message and message.endswith("set model.trunc_te=null, model.dinov2_final_norm=false"), message
    # SALAD is released on DINOv2 ViT-B/14 only.
    with pytest.raises(
        BadInput,
        match=r"model.pretrained=salad is a whole network released for "
        r"model.backbone=dinov2_vitb14, .*; set those$",
    ):
        build_model(
            _config(
                "model.backbone=dinov2_vits14",
                "model.trunc_te=1",
                "data.resize=[56,56]",
                "model.aggregation=salad",
                "model.salad_clusters=4",
                "model.pretrained=salad",
            ).model,
            image_size=(56, 56),
        )


def test_unknown_layout_is_still_refused(tmp_path):
    torch.save({"aggregator.odd.weight": torch.zeros(2), "encoder.stem.weight": torch.zeros(2)}, tmp_path / "odd.pth")
    with pytest.raises(BadInput) as refused:
        build_model(
            _config(
                "model.backbone=resnet18conv4",
                "model.aggregation=gem",
                "data.resize=[64,64]",
                f"model.pretrained={tmp_path / 'odd.pth'}",
            ).model
        )
    message = str(refused.value)
    assert "\n" not in message and "fits no known layout" in message
    assert "MixVPR (amaralibey/MixVPR)" in message and "SALAD (serizba/salad)" in message and "BoQ" in message


def test_dinov2_without_final_norm_takes_the_official_weights(torch_home):
    """``model.dinov2_final_norm=false`` (BoQ's DINOv2): the official file's unused norm is left out."""
    target = cached_path(record("vit_small_patch14_dinov2", "dinov2"))
    target.parent.mkdir(parents=True, exist_ok=True)
    hub = _dinov2_hub_state(384, 1, 3, seed=9)
    torch.save(hub, target)
    image = _image(56)
    for final_norm in (False, True):
        cfg = _config(
            "model.backbone=dinov2_vits14",
            "model.trunc_te=1",
            "data.resize=[56,56]",
            "model.aggregation=gem",
            "model.pretrained=dinov2",
            f"model.dinov2_final_norm={final_norm}",
        )
        model = build_model(cfg.model, image_size=cfg.data.image_size).eval()
        assert any(k.startswith("backbone.vit.norm.") for k in model.state_dict()) == final_norm
        with torch.no_grad():
            got = model.backbone(image)
        torch.testing.assert_close(
            got, _dinov2_tokens(hub, image, heads=6, final_norm=final_norm), rtol=1e-4, atol=1e-5
        )
    with pytest.raises(BadInput, match="dinov2_final_norm=false is for the backbones"):
        _config("model.backbone=resnet18conv4", "model.dinov2_final_norm=false")
