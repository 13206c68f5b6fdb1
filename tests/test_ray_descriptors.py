"""Descriptors served by Ray Data in memory (vgray.distributed.descriptors) on a two-node local
cluster: a mining refresh yields the same triplets as the in-process one for the same seed (random,
partial and full mining), and validation descriptors equal the in-process ones."""

import numpy as np
import pytest
from conftest import TINY_SET

from vgray.config import load_config

pytestmark = pytest.mark.slow

# Mining sets of the database (more than 15 images) go through Ray Data; the 10 queries of a
# refresh stay in-process: fewer pipelines to start, both paths in one refresh.
SET = TINY_SET + [
    "data.resize=[32,48]",
    "model.backbone=resnet18conv4",
    "model.aggregation=gem",
    "data.ray_threshold=15",
    "train.cache_refresh_rate=10",
    "train.negs_num_per_query=3",
    "train.neg_samples_num=40",
]


@pytest.fixture(scope="module")
def setup(tiny_root):
    from vgray.data.dataset import open_split
    from vgray.data.transforms import test_transform
    from vgray.models import build_model
    from vgray.runtime import Runtime
    from vgray.seeding import seed_everything

    cfg = load_config(overrides=SET + [f"data.root={tiny_root}"])
    seed_everything(cfg.seed)
    model = build_model(cfg.model, image_size=cfg.data.image_size).eval()
    rt = Runtime.from_config(cfg, progress=False)
    return cfg, model, rt, test_transform(cfg.data.image_size, model.mean, model.std), open_split(tiny_root, "train")


@pytest.mark.parametrize("method", ["random", "partial", "full"])
def test_mining_refresh_through_ray_data_yields_the_same_triplets(two_nodes, setup, method):
    from vgray.distributed.descriptors import RayExtractor
    from vgray.train.loop import LocalDescriptors
    from vgray.train.mining import TrainingQueries, create_miner

    cfg, model, rt, transform, split = setup
    data = TrainingQueries(split, cfg.train.positive_dist_threshold, cfg.test.positive_dist_threshold)
    extractor = RayExtractor(cfg)
    triplets = []
    for source in (
        LocalDescriptors(model, split, transform, rt),
        LocalDescriptors(model, split, transform, rt, extractor),
    ):
        miner, rng = create_miner(method, data, cfg.train), np.random.default_rng(7)
        queries = miner.sample_queries(rng, cfg.train.cache_refresh_rate)
        triplets.append(miner.refresh(source, queries, rng))
    assert extractor.calls_through_ray == 1 and extractor.images_through_ray > 15  # the database set only
    local, ray_data = triplets
    assert len(local) == len(ray_data) == 10
    for a, b in zip(local, ray_data):
        assert (a.query, a.positive) == (b.query, b.positive)
        np.testing.assert_array_equal(a.negatives, b.negatives)


def test_validation_descriptors_through_ray_data_equal_the_in_process_ones(two_nodes, setup):
    from vgray.data.dataset import open_split
    from vgray.distributed.descriptors import RayExtractor
    from vgray.evaluate.extract import extract_descriptors

    cfg, model, rt, transform, _ = setup
    paths = open_split(cfg.data.root, "val").database.paths
    extractor = RayExtractor(cfg)
    got, valid = extractor(model, paths, transform, rt, model.features_dim, "database")
    want, _ = extract_descriptors(model, paths, transform, rt, model.features_dim)
    assert extractor.images_through_ray == len(paths) == 252 and valid.all()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # At or below the threshold, in-process (no pipeline started).
    small = RayExtractor(cfg, threshold=len(paths))
    again, _ = small(model, paths, transform, rt, model.features_dim)
    assert small.calls_through_ray == 0
    np.testing.assert_array_equal(again, want)
