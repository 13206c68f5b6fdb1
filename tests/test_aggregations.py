"""The aggregations beside GeM and NetVLAD (mac, spoc, rmac, rrm, crn), model.l2 as the benchmark's
code applies it, FC after every aggregation, model.resume_from, and CRN's two-stage training."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY, TINY_SET
from torch.optim.optimizer import register_optimizer_step_pre_hook

from vgray import checkpoint
from vgray.cli import main
from vgray.config import load_config
from vgray.errors import BadInput
from vgray.models import GeoLocalizationNet, build_model
from vgray.models.aggregations import AGGREGATIONS
from vgray.models.aggregations.crn import CRN
from vgray.models.aggregations.mac import mac
from vgray.models.aggregations.netvlad import NetVLAD
from vgray.models.aggregations.rmac import rmac, rmac_regions
from vgray.models.aggregations.spoc import spoc
from vgray.train.schedule import make_optimizer

BASE = ["model.backbone=resnet18conv4", "model.pretrained=none", "model.netvlad_clusters=4"]
# The benchmark's network.py wraps these four in model.l2; the others normalise on their own.
POOLING = ["gem", "mac", "spoc", "rmac"]
SELF_NORMALISING = ["rrm", "netvlad", "crn"]
L2_MODES = ["before_pool", "after_pool", "none"]


def cfg_for(aggregation, *extra):
    return load_config(overrides=[*BASE, f"model.aggregation={aggregation}", *extra])


def save_checkpoint(path, aggregation, *extra):
    """A vgray checkpoint (as train writes it) of a fresh model; returns the model."""
    cfg = cfg_for(aggregation, *extra)
    model = build_model(cfg.model)
    torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "epoch": 0}, path)
    return model


@pytest.fixture(scope="module")
def netvlad_checkpoints(tmp_path_factory):
    """NetVLAD checkpoints (fc none / 16) for CRN to start from."""
    folder = tmp_path_factory.mktemp("netvlad")
    out = {}
    for fc in (None, 16):
        path = folder / f"netvlad_fc{fc}.pt"
        save_checkpoint(path, "netvlad", *([f"model.fc_output_dim={fc}"] if fc else []))
        out[fc] = path
    return out


def test_declared_interface():
    for name in POOLING:
        assert AGGREGATIONS.type_of(name).pooling is True, name
    for name in SELF_NORMALISING:
        assert AGGREGATIONS.type_of(name).pooling is False, name
    # A sequence of tokens has no 2-D layout: regions and context filters need one.
    assert {n for n in ("mac", "spoc", "rrm", "rmac", "crn") if "tokens" in AGGREGATIONS.type_of(n).inputs} == {
        "mac",
        "spoc",
        "rrm",
    }
    assert {n for n in AGGREGATIONS.names() if AGGREGATIONS.type_of(n).starts_from} == {"crn"}
    assert {n for n in AGGREGATIONS.names() if AGGREGATIONS.type_of(n).takes_tokens} == {"cls", "salad", "seqpool"}


def pooled_as_the_benchmark(aggregation, module, local, l2):
    """The benchmark's network.py: L2Norm before or after the pooling of gem, spoc, mac and rmac;
    the other aggregations as they are."""
    if aggregation not in POOLING:
        return module(local)
    pooled = module(F.normalize(local, dim=1) if l2 == "before_pool" else local)
    return F.normalize(pooled, dim=1) if l2 == "after_pool" else pooled


@pytest.mark.parametrize("fc", [None, 16])
@pytest.mark.parametrize("aggregation", POOLING + SELF_NORMALISING)
def test_forward_backward(aggregation, fc, netvlad_checkpoints):
    torch.manual_seed(0)
    # The config's model.l2 differs between the pooling aggregations, so that each mode goes
    # through build_model once; every mode is then checked on the same modules below.
    l2 = L2_MODES[(POOLING + SELF_NORMALISING).index(aggregation) % 3]
    extra = [f"model.l2={l2}"] + ([f"model.fc_output_dim={fc}"] if fc else [])
    if aggregation == "crn":
        extra.append(f"model.resume_from={netvlad_checkpoints[fc]}")
    model = build_model(cfg_for(aggregation, *extra).model)
    agg_dim = 256 * (4 if aggregation in ("netvlad", "crn") else 1)
    assert model.aggregation.output_dim == agg_dim
    assert model.features_dim == (fc or agg_dim)
    if fc:  # the FC takes what the aggregation gives (the benchmark's code sized it by the channels)
        assert (model.fc.in_features, model.fc.out_features) == (agg_dim, fc)

    x = torch.rand(2, 3, 64, 80)
    model.eval()
    with torch.no_grad():
        local = model.backbone(x)
        pooled = pooled_as_the_benchmark(aggregation, model.aggregation, local, l2)
        expected = F.normalize(model.fc(pooled), dim=1) if fc else pooled
        assert torch.allclose(model(x), expected, atol=1e-6)
        if fc or aggregation in SELF_NORMALISING or l2 == "after_pool":
            assert torch.allclose(model(x).norm(dim=1), torch.ones(2), atol=1e-5)
        for mode in L2_MODES:  # the same modules, joined as build_model joins them for each mode
            net = GeoLocalizationNet(model.backbone, model.aggregation, l2=mode).eval()
            assert torch.allclose(
                net(x), pooled_as_the_benchmark(aggregation, model.aggregation, local, mode), atol=1e-6
            ), mode

    model.train()
    out = model(x)
    assert out.shape == (2, model.features_dim) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for name, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient"


def test_mac_and_spoc_on_a_constructed_map():
    x = torch.tensor([[[[1.0, -2.0], [3.0, 0.0]], [[-1.0, -1.0], [-5.0, -3.0]]]])  # (1, 2, 2, 2)
    assert mac(x).tolist() == [[3.0, -1.0]]
    assert spoc(x).tolist() == [[0.5, -2.5]]


def test_rmac_region_layout():
    # 4 x 6 map: the whole map; scale 1: 4x4 squares at columns 0 and 2 (the longer side gets one
    # extra region: its overlap, 1 - 2/4 = 0.5, is the closest to 0.4); scale 2: 2x2 squares tiling
    # the map (rows 0, 2; columns 0, 2, 4); scale 3: 2x2 squares at rows 0, 1, 2 and columns
    # floor(k * 4/3) = 0, 1, 2, 4.
    expected = [(0, 0, 4, 6), (0, 0, 4, 4), (0, 2, 4, 4)]
    expected += [(t, l, 2, 2) for t in (0, 2) for l in (0, 2, 4)]
    expected += [(t, l, 2, 2) for t in (0, 1, 2) for l in (0, 1, 2, 4)]
    assert rmac_regions(4, 6) == expected
    assert sorted(rmac_regions(6, 4)) == sorted((l, t, w, h) for t, l, h, w in expected)
    # 4 x 4: the whole map, then 1, 4 and 9 squares of sides 4, 2, 2.
    assert rmac_regions(4, 4) == [(0, 0, 4, 4), (0, 0, 4, 4)] + [(t, l, 2, 2) for t in (0, 2) for l in (0, 2)] + [
        (t, l, 2, 2) for t in (0, 1, 2) for l in (0, 1, 2)
    ]


@pytest.mark.parametrize("cell,inside", [((3, 5), 4), ((1, 3), 6)])
def test_rmac_sums_normalised_region_maxima(cell, inside):
    # Channel 0 is 1 everywhere, channel 1 is 1 at one cell only: a region's MAC is (1, 1) / sqrt(2)
    # after L2 when it holds the cell, (1, 0) when not. Cell (3, 5) lies in 4 of the 21 regions of
    # the layout above (the whole map, (0,2,4), (2,4,2), (2,4,2) of scale 3); cell (1, 3) in 6 (the
    # whole map, both 4x4 squares, (0,2) of scale 2, (0,2) and (1,2) of scale 3).
    x = torch.zeros(1, 2, 4, 6)
    x[0, 0] = 1.0
    x[0, 1, cell[0], cell[1]] = 1.0
    outside = 21 - inside
    expected = torch.tensor([[outside + inside / math.sqrt(2), inside / math.sqrt(2)]])
    assert torch.allclose(rmac(x), expected, atol=1e-4)


def test_netvlad_weights_scale_each_local_feature():
    """NetVLAD with CRN's weights equals the brute-force sum_i m_i a_k(x_i) (x_i - c_k)."""
    torch.manual_seed(0)
    vlad = NetVLAD(8, clusters=3)
    x = torch.randn(2, 8, 3, 5)
    m = torch.rand(2, 1, 3, 5)
    xn = F.normalize(x, dim=1).flatten(2)  # (B, C, N)
    a = vlad.conv(F.normalize(x, dim=1)).flatten(2).softmax(dim=1)  # (B, K, N)
    w = m.flatten(2)
    ref = torch.stack(
        [
            torch.stack(
                [sum(w[b, 0, i] * a[b, k, i] * (xn[b, :, i] - vlad.centroids[k]) for i in range(15)) for k in range(3)]
            )
            for b in range(2)
        ]
    )
    ref = F.normalize(F.normalize(ref, dim=2).flatten(1), dim=1)
    assert torch.allclose(vlad(x, weights=m), ref, atol=1e-5)
    assert torch.allclose(vlad(x, weights=torch.ones_like(m)), vlad(x), atol=1e-6)


def test_crn_mask_covers_any_map():
    crn = CRN(16, clusters=4)
    for size in [(5, 7), (1, 1), (2, 9), (30, 40)]:  # odd sizes broke the reference's 2x upsampling
        mask = crn.crn(torch.rand(2, 16, *size))
        assert mask.shape == (2, 1, *size) and (mask >= 0).all()


def test_resume_from_loads_the_whole_network(tmp_path):
    torch.manual_seed(3)
    gem = save_checkpoint(tmp_path / "gem.pt", "gem")
    torch.manual_seed(4)
    again = build_model(cfg_for("gem", f"model.resume_from={tmp_path / 'gem.pt'}").model)
    for k, v in gem.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k
    with pytest.raises(
        BadInput,
        match=r"model.resume_from=.*gem.pt does not fit this network \(made for "
        r"backbone=resnet18conv4, aggregation=gem\)",
    ):
        build_model(cfg_for("mac", "model.fc_output_dim=8", f"model.resume_from={tmp_path / 'gem.pt'}").model)
    with pytest.raises(BadInput, match="no such file"):
        build_model(cfg_for("gem", f"model.resume_from={tmp_path / 'nope.pt'}").model)


def cli_error(capsys, tmp_path, *sets):
    """``vgray train`` of a CRN: refused with one line before any data is read (data.root names no
    dataset, so that reading it would fail otherwise)."""
    argv = ["train", "--out", str(tmp_path / "run"), "--set", f"data.root={tmp_path / 'no-dataset'}"]
    for s in [*BASE, "model.aggregation=crn", *sets]:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and "no-dataset" not in err, err
    return err


def test_crn_refuses_to_train_without_a_netvlad_checkpoint(tmp_path, capsys, netvlad_checkpoints):
    def error(*sets):
        return cli_error(capsys, tmp_path, *sets)

    assert "set model.resume_from to the best.pt of a vgray train run with model.aggregation=netvlad" in error()
    save_checkpoint(tmp_path / "gem.pt", "gem")
    assert "was trained with model.aggregation=gem" in error(f"model.resume_from={tmp_path / 'gem.pt'}")
    assert "no such file" in error(f"model.resume_from={tmp_path / 'missing.pt'}")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert "cannot be read as a vgray checkpoint" in error(f"model.resume_from={tmp_path / 'junk.pt'}")
    nv = netvlad_checkpoints[None]
    assert "model.backbone=resnet18conv4; crn needs a netvlad checkpoint of model.backbone=resnet50conv4" in error(
        f"model.resume_from={nv}", "model.backbone=resnet50conv4"
    )
    assert "set model.netvlad_clusters=4" in error(f"model.resume_from={nv}", "model.netvlad_clusters=8")
    assert "set model.fc_output_dim=null" in error(f"model.resume_from={nv}", "model.fc_output_dim=16")


def test_crn_builds_profiles_and_evaluates_without_a_checkpoint(tmp_path):
    """Only training starts from a NetVLAD checkpoint: the config loads and the network builds
    without one (profile and eval use it so); where it does load one, the same check applies."""
    model = build_model(cfg_for("crn").model)
    assert model.needs_init() and model.features_dim == 4 * 256
    save_checkpoint(tmp_path / "gem.pt", "gem")
    with pytest.raises(BadInput, match=r"model.resume_from=.*gem.pt was trained with model.aggregation=gem"):
        build_model(cfg_for("crn", f"model.resume_from={tmp_path / 'gem.pt'}").model)


# A few seconds an epoch on two cores (the settings of test_train's quick runs).
QUICK = [
    f"data.root={TINY}",
    *TINY_SET,
    "data.resize=[32,48]",
    "model.netvlad_clusters=4",
    "train.queries_per_epoch=10",
    "train.cache_refresh_rate=10",
    "train.negs_num_per_query=2",
    "train.neg_samples_num=60",
    "train.epochs=1",
    "test.recall_values=[1,5,10]",
]


def cli_train(out, test_set, *sets):
    # The final test on a 16-image folder: the tiny preset's own test split would triple the time.
    argv = ["train", "--out", str(out), "--set", f"test.datasets={{mini: {test_set}}}"]
    for s in [*QUICK, *sets]:
        argv += ["--set", s]
    return main(argv)


def test_crn_two_stage_training(tiny_root, vg_folder, tmp_path, monkeypatch):
    # Stage 1: NetVLAD, clusters from k-means.
    assert cli_train(tmp_path / "netvlad", vg_folder, "model.aggregation=netvlad") == 0
    best = tmp_path / "netvlad" / "best.pt"
    start = checkpoint.load(best)["model"]
    assert bool(start["aggregation.initialized"])

    # Stage 2: CRN from it. Its network holds the checkpoint's weights, the reweighting layer is new.
    sets = ["model.aggregation=crn", f"model.resume_from={best}", "train.lr_crn_layer=0.002", "train.lr_crn_net=0.0003"]
    cfg = load_config(overrides=[*QUICK, *sets])
    model = build_model(cfg.model)
    own = model.state_dict()
    assert sorted(set(own) - set(start)) == sorted(k for k in own if k.startswith("aggregation.crn.")) != []
    for k, v in start.items():
        assert torch.equal(own[k], v), k
    assert not model.needs_init()
    groups = make_optimizer(model, cfg.train).param_groups
    assert [g["lr"] for g in groups] == [0.002, 0.0003]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.aggregation.crn.parameters()}
    assert len(groups[1]["params"]) == sum(p.requires_grad for p in model.parameters()) - 6

    # The real run: k-means must not run again, and the first step starts from the checkpoint.
    def no_kmeans(*_a, **_k):
        raise AssertionError("NetVLAD was initialised again")

    monkeypatch.setattr(NetVLAD, "initialize", no_kmeans)
    first = []

    def before_step(optimizer, *_):
        if not first:
            first.append([p.detach().clone() for p in optimizer.param_groups[1]["params"]])

    handle = register_optimizer_step_pre_hook(before_step)
    try:
        assert cli_train(tmp_path / "crn", vg_folder, *sets) == 0
    finally:
        handle.remove()
    assert first, "no optimizer step ran"
    assert all(torch.equal(a, b) for a, b in zip(first[0], groups[1]["params"]))

    ck = checkpoint.load(tmp_path / "crn" / "last.pt")
    assert [g["lr"] for g in ck["optimizer"]["param_groups"]] == [0.002, 0.0003]
    assert any(not torch.equal(ck["model"][k], own[k]) for k in own if k.startswith("aggregation.crn."))

    # A trained CRN checkpoint evaluates without its NetVLAD start.
    trained = tmp_path / "crn" / "best.pt"
    cfg = load_config(
        overrides=[
            *BASE,
            f"data.root={TINY}",
            "data.resize=[32,48]",
            "model.aggregation=crn",
            f"model.pretrained={trained}",
        ]
    )
    model = build_model(cfg.model)
    for k, v in checkpoint.load(trained)["model"].items():
        assert torch.equal(model.state_dict()[k], v), k
