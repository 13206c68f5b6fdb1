"""The saved-descriptor folder (vgray.saved_descriptors): its tables written and read back, a partial
write leaving nothing, foreign tables refused in one line."""

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vgray.errors import BadInput
from vgray.saved_descriptors import DATABASE_FILE, QUERIES_FILE, DescriptorWriter, descriptor_matrix, read_descriptors


def _images(n: int):
    return SimpleNamespace(
        paths=[f"/x/img{i}.jpg" for i in range(n)], utm=np.stack([np.arange(n) * 10.0, np.full(n, 5.0)], axis=1)
    )


def test_writer_round_trip_and_crops(tmp_path):
    rng = np.random.default_rng(0)
    images, xb, xq = _images(6), rng.normal(size=(4, 8)).astype(np.float32), rng.normal(size=(6, 8)).astype(np.float32)
    writer = DescriptorWriter(tmp_path / "out")
    writer.add_database(images, np.array([0, 2]), xb[:2])
    writer.add_database(images, np.array([3, 5]), xb[2:])
    writer.finish(images, np.array([1, 4]), xq, views=3)
    x, utm = read_descriptors(tmp_path / "out" / DATABASE_FILE)
    assert np.array_equal(x, xb) and np.array_equal(utm[:, 0], [0.0, 20.0, 30.0, 50.0])
    q = pq.read_table(tmp_path / "out" / QUERIES_FILE)
    assert q.column_names == ["path", "crop", "utm_east", "utm_north", "descriptor"]
    assert q.column("crop").to_pylist() == [0, 1, 2, 0, 1, 2]
    assert q.column("path").to_pylist() == ["/x/img1.jpg"] * 3 + ["/x/img4.jpg"] * 3
    with pytest.raises(BadInput, match="holds several crops per query"):
        read_descriptors(tmp_path / "out" / QUERIES_FILE)


def test_abort_leaves_nothing(tmp_path):
    writer = DescriptorWriter(tmp_path / "new")
    writer.add_database(_images(2), np.array([0, 1]), np.zeros((2, 4), np.float32))
    writer.abort()
    assert not (tmp_path / "new").exists()


def test_foreign_tables(tmp_path):
    plain = pa.table(
        {
            "utm_east": [1.0, 2.0],
            "utm_north": [3.0, 4.0],
            "descriptor": pa.array([[1.0, 2.0], [3.0, 4.0]], pa.list_(pa.float32())),
        }
    )
    assert np.array_equal(descriptor_matrix(plain), [[1, 2], [3, 4]])
    pq.write_table(plain.drop_columns(["utm_north"]), tmp_path / "t.parquet")
    with pytest.raises(BadInput, match="lacks the columns utm_north"):
        read_descriptors(tmp_path / "t.parquet")
    with pytest.raises(BadInput, match="--descriptors: .*missing.parquet does not exist"):
        read_descriptors(tmp_path / "missing.parquet")
