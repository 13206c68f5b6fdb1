"""``vgray eval --address``: what it refuses, in one line with exit status 2, before Ray starts and
before anything is written. (That it scores as the in-process evaluation does, on a two-node
cluster: tests/test_ray_extract.py.)"""

import pytest
from conftest import TINY_SET

from vgray.cli import main

pytestmark = pytest.mark.slow

SET = [*TINY_SET, "data.root=synthetic:tiny", "data.resize=[32,48]", "model.aggregation=gem"]


@pytest.mark.parametrize(
    "extra, culprit",
    [
        (["--shards", "{tmp}/s"], "--shards"),  # without --address
        (["--address", "no address"], "not a Ray cluster address"),
        (["--address", "127.0.0.1:1"], "no Ray cluster answers"),
        (["--address", "auto", "--set", "data.ray_threshold=0", "--set", "test.method=five_crops"], "test.method"),
        (["--address", "auto", "--set", "data.ray_threshold=0", "--save-descriptors", "{tmp}/d"], "--save-descriptors"),
    ],
)
def test_sharded_eval_refusals_exit_2_before_ray(extra, culprit, tmp_path, capsys, tiny_root):
    import ray

    argv = [arg for o in SET for arg in ("--set", o)] + [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0], err
    assert not ray.is_initialized() and not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


def test_shards_that_do_not_fit_the_disk_are_refused_before_anything_is_written(tmp_path):
    """A million-image extraction of wide descriptors fills a disk: refused up front, naming the
    estimate and what is free (the whole rsf test set with NetVLAD's 16,384-d descriptors needs
    about 67 GiB)."""
    from vgray.distributed.extract import check_room_for_shards
    from vgray.errors import BadInput

    out = tmp_path / "shards"
    with pytest.raises(BadInput) as refused:
        check_room_for_shards(out, [1_085_232 * 1000, 3000], 16384, concat=False)
    line = str(refused.value)
    assert "\n" not in line and "1,085,235,000 images" in line and "GiB is free there" in line
    assert not out.exists()  # nothing written
    check_room_for_shards(out, [1000, 100], 256, concat=True)  # a small one fits
