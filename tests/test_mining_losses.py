"""Losses against plain loops of the paper's formulas; mining against brute-force references on a
constructed split with known descriptors; augmentations."""

import numpy as np
import pytest
import torch

from vgray.config import load_config
from vgray.data.dataset import ImageSet, Split
from vgray.errors import BadInput
from vgray.train.losses import LOSSES
from vgray.train.mining import TrainingQueries, create_miner, msls_weights

# -- losses -------------------------------------------------------------------------------------


def _batch(seed=0, b=3, n=5, d=8):
    g = torch.Generator().manual_seed(seed)
    q, p, neg = torch.randn(b, d, generator=g), torch.randn(b, d, generator=g), torch.randn(b, n, d, generator=g)
    return q, p, neg


def test_triplet_equals_the_papers_loop():
    q, p, n = _batch()
    ref = torch.nn.TripletMarginLoss(margin=0.1, p=2, reduction="sum")
    total = sum(ref(q[i : i + 1], p[i : i + 1], n[i, j : j + 1]) for i in range(3) for j in range(5))
    assert LOSSES.create("triplet", q, p, n, margin=0.1).item() == pytest.approx(total.item() / 15, rel=1e-5)


def test_sare_losses_equal_their_formulas():
    q, p, n = _batch(1)
    dp = ((q - p) ** 2).sum(1).numpy()
    dn = ((q[:, None] - n) ** 2).sum(2).numpy()
    joint = sum(-np.log(np.exp(-dp[i]) / (np.exp(-dp[i]) + np.exp(-dn[i]).sum())) for i in range(3)) / 15
    ind = sum(-np.log(np.exp(-dp[i]) / (np.exp(-dp[i]) + np.exp(-dn[i, j]))) for i in range(3) for j in range(5)) / 15
    assert LOSSES.create("sare_joint", q, p, n).item() == pytest.approx(joint, rel=1e-4)
    assert LOSSES.create("sare_ind", q, p, n).item() == pytest.approx(ind, rel=1e-4)


@pytest.mark.parametrize("name", ["triplet", "sare_joint", "sare_ind"])
def test_losses_have_gradients(name):
    q, p, n = (t.requires_grad_() for t in _batch(2))
    LOSSES.create(name, q, p, n, margin=10.0).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, p, n))


# -- mining -------------------------------------------------------------------------------------

D = 6


def _world(seed=0, notes=None):
    """Database on a 5 m grid line, queries near it; descriptors known in advance."""
    rng = np.random.default_rng(seed)
    db_utm = np.stack([np.arange(200) * 5.0, np.zeros(200)], 1) + [500000.0, 4100000.0]
    q_utm = db_utm[rng.choice(200, 40, replace=False)] + rng.normal(0, 2, size=(40, 2))
    q_utm[0] = [400000.0, 4100000.0]  # far away: no hard positive, dropped
    split = Split(
        root="constructed",
        name="train",
        database=ImageSet([f"db{i}" for i in range(200)], db_utm),
        queries=ImageSet([f"q{i}" for i in range(40)], q_utm, notes or ["day_forward_x"] * 40),
    )
    xb = rng.normal(size=(200, D)).astype(np.float32)
    xq = rng.normal(size=(40, D)).astype(np.float32)
    return split, xb, xq


class Recorder:
    """A DescriptorSource over fixed descriptors that records what it was asked for."""

    def __init__(self, xb, xq):
        self.x = {"database": xb, "queries": xq}
        self.asked = {"database": set(), "queries": set()}

    def __call__(self, role, indices):
        self.asked[role] |= set(int(i) for i in indices)
        return self.x[role][indices]


def _cfg(**train):
    return load_config(overrides=[f"train.{k}={v}" for k, v in train.items()]).train


def _check_triplets(data, triplets, xb, xq, n):
    for t in triplets:
        hard = data.hard_positives[t.query]
        assert t.positive in hard
        # the positive is the hard positive nearest in feature space
        d = ((xb[hard] - xq[t.query]) ** 2).sum(1)
        assert t.positive == hard[np.argmin(d)]
        assert len(t.negatives) == n
        assert not set(t.negatives.tolist()) & set(data.soft_positives[t.query].tolist())


def test_dropped_queries_are_counted():
    split, xb, xq = _world()
    data = TrainingQueries(split, 10.0, 25.0)
    assert data.dropped == 1 and 0 not in data.usable


@pytest.mark.parametrize("method", ["random", "partial", "full"])
def test_mining_rules(method):
    split, xb, xq = _world()
    data = TrainingQueries(split, 10.0, 25.0)
    miner = create_miner(method, data, _cfg(negs_num_per_query=4, neg_samples_num=30))
    rng = np.random.default_rng(0)
    queries = miner.sample_queries(rng, 10)
    assert set(queries.tolist()) <= set(data.usable.tolist())
    source = Recorder(xb, xq)
    triplets = miner.refresh(source, queries, rng)
    _check_triplets(data, triplets, xb, xq, 4)
    positives = set(np.concatenate([data.hard_positives[q] for q in queries]).tolist())
    assert source.asked["queries"] == set(queries.tolist())
    if method == "random":  # only the queries and their positives are extracted
        assert source.asked["database"] == positives
    elif method == "partial":  # a shared sample plus the positives
        assert positives < source.asked["database"] and len(source.asked["database"]) <= 30 + len(positives)
        replay = np.random.default_rng(0)  # the same draws as the miner: queries, then the sample
        miner.sample_queries(replay, 10)
        sample = set(replay.choice(200, size=30, replace=False).tolist())
        assert sample <= source.asked["database"]
        for t in triplets:  # the negatives are the hardest of the sample that are not soft positives
            cand = np.array(sorted(sample - set(data.soft_positives[t.query].tolist())))
            best = cand[np.lexsort((cand, ((xb[cand] - xq[t.query]) ** 2).sum(1)))][:4]
            assert sorted(best.tolist()) == sorted(t.negatives.tolist())
    else:  # the whole database
        assert source.asked["database"] == set(range(200))


def test_full_mining_keeps_each_querys_hardest_negatives():
    split, xb, xq = _world()
    data = TrainingQueries(split, 10.0, 25.0)
    miner = create_miner("full", data, _cfg(negs_num_per_query=3, neg_samples_num=10))
    rng = np.random.default_rng(1)
    q = np.array([data.usable[0]] * 1)
    first = miner.refresh(Recorder(xb, xq), q, rng)[0].negatives
    second = miner.refresh(Recorder(xb, xq), q, rng)[0].negatives

    def d(ids):
        return ((xb[ids] - xq[q[0]]) ** 2).sum(1)

    # the previous hardest stay candidates, so the new hardest are at least as hard
    assert np.all(np.sort(d(second)) <= np.sort(d(first)))
    state = miner.state_dict()
    again = create_miner("full", data, _cfg(negs_num_per_query=3, neg_samples_num=10))
    again.load_state_dict(state)
    assert np.array_equal(again.neg_cache[int(q[0])], miner.neg_cache[int(q[0])])


def test_msls_weighted_favours_night_and_sideways():
    notes = ["day_forward_sf"] * 30 + ["night_forward_sf"] * 5 + ["day_sideways_sf"] * 5
    w = msls_weights(notes, "here")
    n = 40
    expected = np.ones(n)
    expected[30:35] += n / 5
    expected[35:] += n / 5
    assert np.allclose(w, expected / expected.sum())
    split, xb, xq = _world(notes=notes)
    data = TrainingQueries(split, 10.0, 25.0)
    miner = create_miner("msls_weighted", data, _cfg(negs_num_per_query=2, neg_samples_num=20))
    draws = miner.sample_queries(np.random.default_rng(0), 4000)
    share = np.isin(draws, np.arange(30, 40)).mean()
    assert share > 0.6  # 10 of 40 queries, drawn most of the time
    _check_triplets(data, miner.refresh(Recorder(xb, xq), draws[:8], np.random.default_rng(0)), xb, xq, 2)
    with pytest.raises(BadInput, match="needs night and sideways"):
        msls_weights(["day_forward_sf"] * 10, "dataset X")


# -- augmentation -------------------------------------------------------------------------------

AUGMENTATIONS = {
    "brightness": 0.9,
    "contrast": 0.9,
    "saturation": 0.9,
    "hue": 0.4,
    "perspective": 0.8,
    "rotation": 60,
    "resized_crop": 0.7,
}


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_each_augmentation_changes_queries_and_keeps_their_size(name):
    from PIL import Image

    from vgray.data.transforms import query_train_transform, test_transform

    aug = load_config(overrides=[f"train.augmentation.{name}={AUGMENTATIONS[name]}"]).train.augmentation
    rng = np.random.default_rng(0)
    image = Image.fromarray((rng.random((40, 60, 3)) * 255).astype(np.uint8))
    # Training queries resize as PIL images whichever data.resize_order (the paper's TripletsDataset).
    plain = test_transform((20, 30), (0.5,) * 3, (0.5,) * 3, "pil")(image)
    tf = query_train_transform((20, 30), (0.5,) * 3, (0.5,) * 3, aug)
    torch.manual_seed(0)
    outs = [tf(image) for _ in range(6)]
    assert all(o.shape == plain.shape for o in outs)
    assert any(not torch.allclose(o, plain, atol=1e-3) for o in outs)
    off = query_train_transform((20, 30), (0.5,) * 3, (0.5,) * 3, load_config().train.augmentation)
    assert torch.equal(off(image), plain)


def test_horizontal_flip_turns_the_whole_triplet(tiny_root):
    """train.augmentation.horizontal_flip: each triplet is flipped as a whole (query, positive and
    negatives together) or not at all, about half the time; off, never."""
    from conftest import TINY

    from vgray.data.dataset import open_split
    from vgray.data.transforms import test_transform
    from vgray.train.loop import TripletImages
    from vgray.train.mining import Triplet

    split = open_split(TINY, "train")
    tf = test_transform((24, 32), (0.5,) * 3, (0.5,) * 3)
    triplets = [Triplet(q, q % 7, np.array([10 + q, 20 + q, 30 + q])) for q in range(16)]
    plain = TripletImages(split, triplets, tf, tf, flip=False)
    flipped = TripletImages(split, triplets, tf, tf, flip=True)
    torch.manual_seed(0)
    turned = []
    for i in range(len(triplets)):
        a, b = plain.load(i), flipped.load(i)
        assert a.shape == b.shape == (5, 3, 24, 32)
        if torch.equal(a, b):
            turned.append(False)
        else:
            assert torch.equal(torch.flip(a, dims=[3]), b)
            turned.append(True)
    assert 3 <= sum(turned) <= 13
    assert all(torch.equal(plain.load(i), plain.load(i)) for i in range(3))
