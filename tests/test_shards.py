"""Descriptor shards without Ray: the shard metadata's model hash (stable for the same weights,
however saved), and compressed faiss indexes trained on a sample of shards and filled shard by shard."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import TINY_SET

from vgray.config import load_config
from vgray.errors import BadInput

SET = TINY_SET + ["data.resize=[32,48]", "model.backbone=resnet18conv4", "model.aggregation=gem"]


def test_model_hash_is_stable_for_the_same_weights(tmp_path):
    from vgray.distributed.extract import model_hash
    from vgray.models import build_model
    from vgray.seeding import seed_everything

    cfg = load_config(overrides=SET)

    def built(c):
        seed_everything(0)
        return build_model(c.model, image_size=c.data.image_size)

    model = built(cfg)
    h = model_hash(model, cfg)
    assert h == model_hash(built(cfg), cfg)  # built again from the same seed
    for k in range(2):  # saved and loaded (twice, through different files)
        torch.save(model.state_dict(), tmp_path / f"m{k}.pt")
        other = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size)
        other.load_state_dict(torch.load(tmp_path / f"m{k}.pt", weights_only=True))
        assert model_hash(other, cfg) == h
    # Where the weights came from is not part of it; the weights, the architecture and the input size are.
    assert model_hash(model, cfg.replace(**{"model.pretrained": "imagenet"})) == h
    assert model_hash(model, cfg.replace(**{"data.resize": [48, 64]})) != h
    assert model_hash(model, cfg.replace(**{"model.l2": "none"})) != h
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-3
    assert model_hash(model, cfg) != h


def write_shards(folder, xb, sizes):
    files, start = [], 0
    for k, n in enumerate(sizes):
        part = np.ascontiguousarray(xb[start : start + n])
        table = pa.table(
            {
                "path": [f"img{i}.jpg" for i in range(start, start + n)],
                "descriptor": pa.FixedSizeListArray.from_arrays(pa.array(part.reshape(-1)), xb.shape[1]),
            }
        )
        files.append(str(folder / f"shard-{k:05d}.parquet"))
        pq.write_table(table, files[-1])
        start += n
    return files


@pytest.mark.parametrize("spec", ["IVF8,PQ8", "PCA8,IVF8,Flat"])
def test_index_from_shards_equals_the_index_of_the_concatenated_descriptors(tmp_path, spec):
    from vgray.distributed.search import index_from_shards
    from vgray.evaluate.knn import build_index, fill_index, search

    rng = np.random.default_rng(3)
    xb = rng.standard_normal((700, 16), dtype=np.float32)
    xq = xb[rng.integers(0, 700, 25)] + 0.05 * rng.standard_normal((25, 16), dtype=np.float32)
    files = write_shards(tmp_path, xb, [150, 40, 300, 210])
    # A training sample smaller than the database: drawn shard by shard, the same rows.
    ours = index_from_shards(files, spec, train_size=500, seed=5)
    reference = build_index(spec, 16)
    fill_index(reference, xb, train_size=500, seed=5)
    assert ours.ntotal == reference.ntotal == 700
    D, I, _ = search(ours, xq, 10)
    D0, I0, _ = search(reference, xq, 10)
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_allclose(D, D0, rtol=1e-4)


def test_index_from_shards_refuses_mixed_dimensions(tmp_path):
    from vgray.distributed.search import index_from_shards

    rng = np.random.default_rng(0)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = write_shards(tmp_path / "a", rng.standard_normal((20, 8), dtype=np.float32), [20])
    files += write_shards(tmp_path / "b", rng.standard_normal((20, 16), dtype=np.float32), [20])
    with pytest.raises(BadInput, match="one model"):
        index_from_shards(files, "IVF2,Flat")
