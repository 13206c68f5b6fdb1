"""The sweep's resource check places every bundle of a trial's placement group (trainer and Ray Data
extraction) on the cluster's node shapes before launch: a group that can never be placed is refused
in one line (exit 2) naming the node shapes, instead of Tune waiting forever."""

import pytest
from conftest import local_ray, write_sweep

from vgray.cli import main
from vgray.distributed.sweep import node_shape, placeable

GiB = 2**30


def test_placeable_packs_bundles_onto_node_shapes():
    one_gpu = node_shape({"CPU": 4, "GPU": 1, "memory": 16 * GiB})
    trainer, extract = {"CPU": 1, "GPU": 1}, {"CPU": 1, "GPU": 1}
    assert placeable([trainer], [one_gpu])
    assert not placeable([trainer, extract], [one_gpu])  # the bug: each bundle fits, not both
    assert placeable([trainer, extract], [one_gpu, one_gpu])  # PACK spreads when it must
    assert placeable([{"CPU": 1, "GPU": 0.5}, {"CPU": 1, "GPU": 0.5}], [one_gpu])
    assert not placeable([{"CPU": 3}, {"CPU": 2}], [one_gpu])
    assert placeable([{"CPU": 3}, {"CPU": 2}], [one_gpu, node_shape({"CPU": 2})])
    assert not placeable([{"CPU": 1, "memory": 32 * GiB}], [one_gpu])
    assert not placeable([{"CPU": 1}], [])


@pytest.fixture(scope="module")
def one_gpu_ray(tiny_root):
    """A local Ray of one node: 2 CPUs and 1 GPU declared (this machine need not have it)."""
    yield from local_ray(1)


@pytest.mark.slow
def test_trainer_gpu_plus_extraction_gpu_on_a_one_gpu_node_is_refused(one_gpu_ray, tmp_path, capsys):
    path = write_sweep(
        tmp_path / "s.yaml",
        {"data.ray_threshold": 0},
        name="twogpu",
        storage=str(tmp_path / "store"),
        resources={"cpu": 1, "gpu": 1, "extract_gpu": 1},
    )
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "fit no node of this cluster" in err[0] and "{1 CPU, 1 GPU} + {1 CPU, 1 GPU}" in err[0]
    assert "node shapes: 1 x {2 CPU, 1 GPU," in err[0]
    assert not (tmp_path / "store" / "twogpu" / "tuner.pkl").exists()


@pytest.mark.slow
def test_group_that_fits_passes_the_check(one_gpu_ray, tmp_path):
    from vgray.distributed.spec import load_sweep
    from vgray.distributed.sweep import _check_resources, _trial_bundle_sets

    # Half a GPU each: the trainer and its extraction share the node's one GPU.
    path = write_sweep(
        tmp_path / "s.yaml",
        {"data.ray_threshold": 0},
        name="half",
        storage=str(tmp_path / "store"),
        resources={"cpu": 1, "gpu": 0.5, "extract_cpu": 1, "extract_gpu": 0.5},
    )
    spec = load_sweep(path)
    assert _trial_bundle_sets(spec) == [[{"CPU": 1, "GPU": 0.5}, {"CPU": 1, "GPU": 0.5}]]
    _check_resources(spec)
    # Without Ray Data (sets under the threshold) there is no extraction bundle to place.
    path = write_sweep(
        tmp_path / "t.yaml",
        name="small",
        storage=str(tmp_path / "store"),
        resources={"cpu": 1, "gpu": 1, "extract_gpu": 1},
    )
    spec = load_sweep(path)
    assert _trial_bundle_sets(spec) == [[{"CPU": 1, "GPU": 1}]]
    _check_resources(spec)
