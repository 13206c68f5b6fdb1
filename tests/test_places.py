"""Place-batched training (train.regime=places): the sampler, places from the UTM grid, the GSV-Cities
reader on the synthetic world's GSV-Cities output, a short run that checkpoints and resumes, bad inputs."""

import csv
import json
from collections import defaultdict

import numpy as np
import pytest
from conftest import TINY, TINY_SET

from vgray.cli import main
from vgray.config import load_config
from vgray.data.gsv_cities import COLUMNS, image_name, read_gsv_cities
from vgray.errors import BadInput
from vgray.train.places import (
    PLACE_LOSSES,
    PLACE_MINERS,
    PROXY_DIM,
    PlaceProxies,
    grid_neighbours,
    grid_places,
    proxy_place_batches,
    sample_batches,
)

RUN = [
    f"data.root={TINY}",
    *TINY_SET,
    "data.resize=[48,64]",
    "model.aggregation=gem",
    "train.regime=places",
    "train.places_per_batch=8",
    "train.batches_per_epoch=3",
    "train.lr=0.001",
    "test.recall_values=[1,5]",
]


def sets(*extra):
    return [a for kv in [*RUN, *extra] for a in ("--set", kv)]


@pytest.fixture(scope="module")
def gsv_root(tmp_path_factory):
    out = tmp_path_factory.mktemp("gsv") / "tiny"
    assert main(["synth", str(out), "--preset", "tiny", "--layout", "gsv_cities"]) == 0
    return out


def test_sampler_yields_p_distinct_places_of_k_distinct_images():
    rng = np.random.default_rng(0)
    sizes = rng.integers(4, 9, 30)
    labels = np.repeat(np.arange(30), sizes)
    members = [np.flatnonzero(labels == p) for p in range(30)]
    draws = sample_batches(members, 8, 4, 20, rng)
    assert draws.shape == (20, 8, 4)
    for batch in draws:
        places = labels[batch]
        assert (places == places[:, :1]).all()  # K images of one place per row
        assert len(set(places[:, 0])) == 8  # P distinct places
        assert all(len(set(row)) == 4 for row in batch)  # K distinct images
    # Every place is used before any repeats (30 places, 8 a batch: the first 3 batches are distinct).
    assert len(set(labels[draws[:3, :, 0]].ravel())) == 24


@pytest.mark.parametrize("reach, n_bins", [(1, 0), (1, 4), (3, 5)])
def test_grid_neighbours_match_a_brute_force_reference(reach, n_bins):
    rng = np.random.default_rng(reach + n_bins)
    keys = rng.integers(-6, 6, (150, 2))
    if n_bins:
        keys = np.concatenate([keys, rng.integers(0, n_bins, (150, 1))], axis=1)
    keys = np.unique(keys, axis=0)  # a place is one cell (and bin)
    got = grid_neighbours(keys, reach, n_bins)
    for i, a in enumerate(keys):
        want = [
            j
            for j, b in enumerate(keys)
            if j != i
            and np.abs(a[:2] - b[:2]).max() <= reach
            and (not n_bins or min((a[2] - b[2]) % n_bins, (b[2] - a[2]) % n_bins) <= 1)
        ]
        assert sorted(got[i].tolist()) == want, i


def test_batches_hold_no_two_neighbouring_places():
    """The next cell along a street looking the same way would be a negative that looks like a
    positive: no batch, random or by proxy, holds two such places while P places apart remain."""
    rng = np.random.default_rng(5)
    utm = np.stack([rng.uniform(0, 300, 3000), rng.uniform(0, 50, 3000)], axis=1)
    headings = rng.choice([0.0, 90.0, 180.0, 270.0], len(utm)) + rng.uniform(-20, 20, len(utm))
    places = grid_places([f"i{i}" for i in range(len(utm))], utm, 10.0, 25.0, 4, heading_deg=90.0, headings=headings)
    assert all(len(n) for n in places.neighbours)  # reach 3 cells, same and next bins
    members = places.members()
    proxies = rng.standard_normal((places.n_places, 8))
    proxies /= np.linalg.norm(proxies, axis=1, keepdims=True)
    for prox in (None, proxies):
        draws = sample_batches(members, 6, 4, 20, rng, prox, places.neighbours)
        for batch in places.labels[draws[:, :, 0]]:
            assert len(set(batch)) == 6
            assert not any(set(places.neighbours[a].tolist()) & set(batch.tolist()) for a in batch)
    # Without neighbours (GSV-Cities' places) nothing changes: the shuffled places in turn.
    draws = sample_batches(members, 6, 4, 3, np.random.default_rng(0))
    want = np.random.default_rng(0).permutation(len(members))[:18].reshape(3, 6)
    assert (places.labels[draws[:, :, 0]] == want).all()


def test_proxy_batches_are_nearest_places_and_use_every_place_once():
    """GPM's batches: a place and its P-1 nearest places by proxy among those not yet taken."""
    rng = np.random.default_rng(3)
    groups, p = 6, 8
    centres = rng.standard_normal((groups, 32))
    group = np.repeat(np.arange(groups), p)
    proxies = centres[group] + 0.05 * rng.standard_normal((groups * p, 32))
    proxies /= np.linalg.norm(proxies, axis=1, keepdims=True)
    shuffle = rng.permutation(len(proxies))  # groups' places spread over the labels
    proxies, group = proxies[shuffle], group[shuffle]
    batches = proxy_place_batches(proxies, p, 2 * groups, rng)
    for batch in batches:
        assert len(set(group[batch])) == 1 and len(set(batch)) == p  # one group a batch
    assert sorted(batches[:groups].ravel().tolist()) == list(range(groups * p))  # all before repeats
    # Against a brute-force replay on random proxies: each batch's places are its anchor's nearest
    # among the available ones (ties aside), and no place repeats before all are used.
    proxies = rng.standard_normal((40, 16))
    proxies /= np.linalg.norm(proxies, axis=1, keepdims=True)
    batches = proxy_place_batches(proxies, 5, 8, np.random.default_rng(4))
    available = np.ones(40, dtype=bool)

    def nearest(a, batch, rest):  # every other place of the batch at least as near to a as any left
        others = [b for b in batch if b != a]
        return (proxies[others] @ proxies[a]).min() >= (proxies[rest] @ proxies[a]).max(initial=-2.0) - 1e-9

    for batch in batches:  # 8 x 5 = the 40 places: no reset
        rest = np.flatnonzero(available & ~np.isin(np.arange(40), batch))
        assert available[batch].all() and any(nearest(a, batch, rest) for a in batch)
        available[batch] = False
    draws = sample_batches([np.arange(4 * i, 4 * i + 4) for i in range(40)], 5, 2, 8, np.random.default_rng(4), proxies)
    assert (draws[:, :, 0] // 4 == batches).all()  # sample_batches takes these places, K images each


def test_place_proxies_are_mean_descriptors_projected_and_kept():
    torch = pytest.importorskip("torch")
    proxies = PlaceProxies(n_places=5, seed=0)
    f = torch.nn.functional.normalize(torch.randn(6, 32), dim=1)
    y = torch.tensor([0, 0, 1, 1, 1, 3])
    proxies.start_epoch()
    proxies.add(f * 3.0, y)  # scale: descriptors are normalised first
    proxies.end_epoch(np.random.default_rng(0))
    want = torch.nn.functional.normalize(torch.stack([f[:2].mean(0), f[2:5].mean(0), f[5]]), dim=1).numpy()
    np.testing.assert_allclose(proxies.proxies[[0, 1, 3]], want, atol=1e-6)
    unseen = proxies.proxies[[2, 4]].copy()  # random unit proxies: joined at random
    np.testing.assert_allclose(np.linalg.norm(unseen, axis=1), 1.0, atol=1e-6)
    proxies.start_epoch()
    proxies.add(f[:1], torch.tensor([4]))
    proxies.end_epoch(np.random.default_rng(1))
    np.testing.assert_allclose(proxies.proxies[[0, 1, 3]], want, atol=1e-6)  # not drawn: kept
    np.testing.assert_allclose(proxies.proxies[4], f[0].numpy(), atol=1e-6)
    np.testing.assert_allclose(proxies.proxies[2], unseen[0])
    restored = PlaceProxies(n_places=5, seed=0)
    restored.load_state_dict(proxies.state_dict())
    np.testing.assert_array_equal(restored.proxies, proxies.proxies)
    with pytest.raises(BadInput, match="for 5 places, the training data has 6"):
        PlaceProxies(n_places=6, seed=0).load_state_dict(proxies.state_dict())
    # Wide descriptors are projected to PROXY_DIM; cosines survive the projection.
    wide = PlaceProxies(n_places=40, seed=0)
    g = torch.nn.functional.normalize(torch.randn(40, 4096), dim=1)
    g[1] = torch.nn.functional.normalize(g[0] + 0.5 * g[1], dim=0)
    wide.start_epoch()
    wide.add(g, torch.arange(40))
    wide.end_epoch(np.random.default_rng(0))
    assert wide.proxies.shape == (40, PROXY_DIM)
    cos, got = (g @ g.T).numpy(), wide.proxies @ wide.proxies.T
    assert np.abs(got - cos).max() < 0.35 and abs(got[0, 1] - cos[0, 1]) < 0.2 and cos[0, 1] > 0.8


def test_grid_places_match_a_brute_force_reference():
    rng = np.random.default_rng(1)
    utm = rng.uniform([500000, 4600000], [500100, 4600080], (600, 2))
    paths = [f"img{i}.jpg" for i in range(len(utm))]
    size, radius, k = 15.0, 9.0, 4
    cells = defaultdict(list)
    for i, (e, n) in enumerate(utm):
        ce, cn = int(np.floor(e / size)), int(np.floor(n / size))
        if np.hypot(e - (ce + 0.5) * size, n - (cn + 0.5) * size) <= radius:
            cells[(ce, cn)].append(paths[i])
    want = {frozenset(v) for v in cells.values() if len(v) >= k}
    got = grid_places(paths, utm, size, radius, k)
    groups = defaultdict(set)
    for p, label in zip(got.paths, got.labels):
        groups[label].add(p)
    assert {frozenset(g) for g in groups.values()} == want
    assert got.dropped == sum(len(v) < k for v in cells.values())
    assert got.n_places == len(want) and all(len(m) >= k for m in got.members())


def test_grid_places_split_by_heading_bins():
    """With train.place_heading_deg, a place is a cell and a heading bin: views looking apart never share one."""
    rng = np.random.default_rng(2)
    utm = rng.uniform([500000, 4600000], [500060, 4600060], (800, 2))
    headings = rng.choice([0.0, 10.0, 95.0, 180.0, 275.0, 359.0, 365.0], len(utm))
    paths = [f"/d/@{e:.2f}@{n:.2f}@33@T@0@0@p{i}@@{h:g}@@@@@@.jpg" for i, ((e, n), h) in enumerate(zip(utm, headings))]
    size, alpha, k = 20.0, 90.0, 3
    groups_want = defaultdict(list)
    for path, (e, n), h in zip(paths, utm, headings):
        ce, cn = int(np.floor(e / size)), int(np.floor(n / size))
        if np.hypot(e - (ce + 0.5) * size, n - (cn + 0.5) * size) <= 25.0:
            groups_want[(ce, cn, int(((h + alpha / 2) % 360) // alpha))].append(path)
    want = {frozenset(v) for v in groups_want.values() if len(v) >= k}
    got = grid_places(paths, utm, size, 25.0, k, heading_deg=alpha, headings=headings)
    groups = defaultdict(set)
    for p, label in zip(got.paths, got.labels):
        groups[label].add(p)
    assert {frozenset(g) for g in groups.values()} == want and len(want) > 10
    assert got.n_places > grid_places(paths, utm, size, 25.0, k).n_places  # the bins split the cells
    # Bins are centred on 0, 90, 180, 270: views 5 degrees either side of north share a place (bins
    # starting at 0 would split them, as a capture along a north-aligned street grid looks), and the
    # edge is north-east: 44 degrees joins them, 46 does not.
    one = grid_places(
        [f"v{i}" for i in range(4)],
        np.full((4, 2), 10.0),
        size,
        25.0,
        2,
        heading_deg=alpha,
        headings=np.array([355.0, 5.0, 44.0, 46.0]),
    )
    assert [sorted(m.tolist()) for m in one.members()] == [[0, 1, 2]] and one.dropped == 1
    with pytest.raises(BadInput, match="heading field"):
        grid_places(
            ["/d/@1@2@.jpg"] * 4, np.zeros((4, 2)), size, 25.0, 2, heading_deg=alpha, headings=np.full(4, np.nan)
        )  # what the index gives a name without a heading


def test_gsv_cities_reader_on_the_synthetic_world(gsv_root, tiny_root):
    frames = list((gsv_root / "Dataframes").glob("*.csv"))
    assert len(frames) == 1
    rows = list(csv.DictReader(frames[0].open()))
    assert list(rows[0]) == list(COLUMNS)
    city = rows[0]["city_id"]
    # The publisher's naming, and every listed image on disk.
    for row in rows:
        name = image_name(row)
        assert name.startswith(f"{city}_{int(row['place_id']):07d}_{int(row['year']):04d}_")
        assert (gsv_root / "Images" / city / name).is_file()
    places = read_gsv_cities(gsv_root, 4)
    vg_train = sorted((tiny_root / "images" / "train").rglob("*.jpg"))
    assert len(rows) == len(vg_train)  # every train image, database and queries
    assert (np.bincount(places.labels) >= 4).all()
    # The same pixels as the VG layout's train split: a database view, byte for byte.
    vg = next(p for p in vg_train if "@synthtrainp000003@@90@" in p.name)
    gsv = next((gsv_root / "Images" / city).glob(f"{city}_0000003_2020_06_090_*_synthtrainp000003.jpg"))
    assert vg.read_bytes() == gsv.read_bytes()
    by_place = defaultdict(int)
    for row in rows:
        by_place[row["place_id"]] += 1
    assert places.n_places == sum(c >= 4 for c in by_place.values())
    assert places.dropped == sum(c < 4 for c in by_place.values())
    # A place's images are one place's: the same place_id in their names.
    for m in places.members():
        assert len({p.split("/")[-1].split("_")[1] for p in (places.paths[i] for i in m)}) == 1
    # Writing again into the finished folder is a no-op.
    assert main(["synth", str(gsv_root), "--preset", "tiny", "--layout", "gsv_cities"]) == 0


def test_losses_and_miners_from_pytorch_metric_learning():
    import torch

    cfg = load_config(overrides=["train.regime=places"]).train
    x = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    y = torch.arange(4).repeat_interleave(4)
    ms = PLACE_LOSSES.create("multi_similarity", cfg)
    assert (ms.alpha, ms.beta, ms.base) == (1.0, 50.0, 0.0)
    assert PLACE_MINERS.create("multi_similarity", cfg).epsilon == 0.1
    for loss in PLACE_LOSSES.names():
        for miner in PLACE_MINERS.names():
            fn, m = PLACE_LOSSES.create(loss, cfg), PLACE_MINERS.create(miner, cfg)
            value = fn(x, y, m(x, y)) if m is not None else fn(x, y)
            assert torch.isfinite(value), (loss, miner)


@pytest.mark.slow
def test_places_regime_trains_checkpoints_and_resumes(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *sets("train.epochs=1", "train.patience=5"), "--out", str(out)]) == 0
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
    first = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(first) == 1 and np.isfinite(first[0]["loss"]) and first[0]["places"] > 8
    assert main(["train", "--resume", "--set", "train.epochs=2", "--out", str(out)]) == 0
    both = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in both] == [1, 2] and both[0] == first[0]


@pytest.mark.slow
def test_proxy_batching_resumes_exactly(tiny_root, tmp_path):
    """train.place_batching=proxy: the proxies are the regime's state, saved with the checkpoint, so a
    run resumed after epoch 2 batches epoch 3 as the straight run does."""
    import torch

    from vgray.checkpoint import load
    from vgray.train.loop import train

    def cfg(epochs):
        return load_config(
            overrides=[
                *RUN,
                "model.fc_output_dim=32",
                "train.place_batching=proxy",
                "train.patience=5",
                f"train.epochs={epochs}",
            ]
        )

    silent = lambda line: None  # noqa: E731
    train(cfg(3), tmp_path / "a", progress=False, log=silent)
    train(cfg(2), tmp_path / "b", progress=False, log=silent)
    assert load(tmp_path / "b" / "last.pt")["mining"]["proxies"].shape[0] > 8
    train(cfg(3), tmp_path / "b", resume=True, progress=False, log=silent)
    ha, hb = [[json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in "ab"]
    assert len(ha) == len(hb) == 3
    for a, b in zip(ha, hb):
        assert {k: v for k, v in a.items() if k != "train_time_s"} == pytest.approx(
            {k: v for k, v in b.items() if k != "train_time_s"}, abs=1e-6
        )
    wa, wb = (load(tmp_path / r / "last.pt")["model"] for r in "ab")
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)


@pytest.mark.slow
def test_warmup_and_milestones_resume_exactly(tiny_root, tmp_path):
    """train.warmup_steps and train.lr_milestones (AdamW with weight decay): the schedule's base rates
    and step counts ride in the optimizer state of last.pt, so a run resumed after epoch 2 trains
    epoch 3 at the rate the straight run does; the last step's rate is the closed form's."""
    import torch

    from vgray.checkpoint import load
    from vgray.train.loop import train
    from vgray.train.schedule import STEPS, lr_factor

    extra = [
        "train.optimizer=adamw",
        "train.weight_decay=0.05",
        "train.warmup_steps=5",
        "train.lr_milestones=[2]",
        "train.lr_gamma=0.5",
        "train.patience=5",
    ]
    silent = lambda line: None  # noqa: E731
    train(load_config(overrides=[*RUN, *extra, "train.epochs=3"]), tmp_path / "a", progress=False, log=silent)
    train(load_config(overrides=[*RUN, *extra, "train.epochs=2"]), tmp_path / "b", progress=False, log=silent)
    (group,) = load(tmp_path / "b" / "last.pt")["optimizer"]["param_groups"]
    assert group[STEPS] == 6 and group["initial_lr"] == 0.001 and group["weight_decay"] == 0.05
    assert group["lr"] == pytest.approx(0.001 * lr_factor(5, 1, 5, [2], 0.5)) == pytest.approx(0.001)
    train(
        load_config(overrides=[*RUN, *extra, "train.epochs=3"]), tmp_path / "b", resume=True, progress=False, log=silent
    )
    for run in "ab":
        (group,) = load(tmp_path / run / "last.pt")["optimizer"]["param_groups"]
        assert group[STEPS] == 9 and group["lr"] == pytest.approx(0.0005)  # epoch 3: past milestone 2
    ha, hb = [[json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in "ab"]
    for a, b in zip(ha, hb):
        assert {k: v for k, v in a.items() if k != "train_time_s"} == pytest.approx(
            {k: v for k, v in b.items() if k != "train_time_s"}, abs=1e-6
        )
    wa, wb = (load(tmp_path / r / "last.pt")["model"] for r in "ab")
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)


@pytest.mark.slow
def test_places_regime_on_the_gsv_cities_layout(gsv_root, tmp_path):
    out = tmp_path / "gsv"
    assert (
        main(
            [
                "train",
                *sets(
                    f"data.root={gsv_root}",
                    "data.layout=gsv_cities",
                    f"data.val_root={TINY}",
                    f"test.datasets={{tiny: '{TINY}'}}",
                    "train.epochs=1",
                    "train.batches_per_epoch=2",
                ),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert (out / "best.pt").is_file() and (out / "metrics.jsonl").is_file()


def one_line_exit_2(argv, capsys, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err


def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, capsys):
    empty = tmp_path / "nodataframes"
    (empty / "Images").mkdir(parents=True)
    out = tmp_path / "out"
    common = ["data.layout=gsv_cities", f"data.val_root={TINY}", f"test.datasets={{tiny: '{TINY}'}}"]
    one_line_exit_2(["train", *sets(f"data.root={empty}", *common), "--out", str(out)], capsys, "Dataframes")
    one_line_exit_2(
        ["train", *sets("train.places_per_batch=1000"), "--out", str(out)],
        capsys,
        "train.places_per_batch=1000",
        "places",
    )
    one_line_exit_2(
        ["train", *sets("train.places_per_batch=50"), "--out", str(out)],
        capsys,  # 113 places, 20 apart
        "train.places_per_batch=50",
        "test.positive_dist_threshold=25 m",
        "at most 20",
    )
    one_line_exit_2(["train", *sets("data.layout=gsv_cities"), "--out", str(out)], capsys, "data.val_root")
    one_line_exit_2(["train", *sets("train.pml_loss=nope"), "--out", str(out)], capsys, "multi_similarity")
    one_line_exit_2(["synth", str(out), "--layout", "nope"], capsys, "--layout")
    assert not out.exists()


def test_evaluating_a_gsv_cities_folder_says_what_it_is(gsv_root, tmp_path, capsys):
    """A GSV-Cities folder given as a VG dataset: the message names the layout and what to do."""
    out = tmp_path / "eval.json"
    one_line_exit_2(
        ["eval", *sets(f"data.root={gsv_root}"), "--json", str(out)],
        capsys,
        "GSV-Cities layout",
        "data.layout=gsv_cities",
        "VG-format",
    )
    assert not out.exists()
    with pytest.raises(BadInput, match="images_per_place"):
        load_config(overrides=["train.images_per_place=1"])
