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
