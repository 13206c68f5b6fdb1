"""The device of code Ray runs comes from what Ray assigned, never from what the machine has: a local
Ray that declares 2 GPUs it does not have shows which device each task, actor and placement-group
bundle would pick (the choice is separate from whether CUDA works here)."""

import pytest
import torch
from conftest import local_ray

from vgray.errors import BadInput
from vgray.runtime import choose_device, resolve_device


def test_choice_without_a_scheduler_is_the_machines():
    assert choose_device("auto", None, cuda_present=True) == torch.device("cuda")
    assert choose_device("auto", None, cuda_present=False) == torch.device("cpu")
    assert choose_device("cuda:1", None, cuda_present=True) == torch.device("cuda:1")


def test_the_suite_runs_on_the_cpu_unless_marked_cuda():
    # tests/conftest.py: this process as one assigned no GPU, and no GPU for the processes it starts
    import os

    assert resolve_device("auto") == torch.device("cpu")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""


@pytest.mark.cuda
def test_a_cuda_test_sees_the_machines_gpu():
    assert resolve_device("auto") == torch.device("cuda")
    assert torch.ones(2, device=resolve_device("cuda:0")).sum().item() == 2


def test_choice_under_an_assignment():
    # No GPU assigned: the CPU even where the machine has CUDA; cuda refused in one line.
    assert choose_device("auto", [], cuda_present=True) == torch.device("cpu")
    with pytest.raises(BadInput, match="no GPU") as err:
        choose_device("cuda", [], cuda_present=True)
    assert "\n" not in str(err.value)
    # Ray sets CUDA_VISIBLE_DEVICES to the assigned ids: the first is local ordinal 0.
    assert choose_device("auto", ["1"], ["1"]) == torch.device("cuda:0")
    assert choose_device("cuda:1", ["2", "3"], ["2", "3"]) == torch.device("cuda:1")
    # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: the process sees every GPU; the id is the ordinal,
    # or its place in a CUDA_VISIBLE_DEVICES set before Ray started.
    assert choose_device("auto", ["1"], None) == torch.device("cuda:1")
    assert choose_device("cuda:1", ["0", "3"], None) == torch.device("cuda:3")
    assert choose_device("auto", ["5"], ["4", "5"]) == torch.device("cuda:1")
    # cuda:N counts the worker's own GPUs: more than it has is refused, never another GPU.
    with pytest.raises(BadInput, match=r"cuda:1: Ray assigned this worker 1 GPU\(s\) \(1\)"):
        choose_device("cuda:1", ["1"], ["1"])
    assert choose_device("cpu", ["0"], ["0"]) == torch.device("cpu")


@pytest.fixture(scope="module")
def fake_gpu_ray(tiny_root):
    """A local Ray of 2 CPUs that declares 2 GPUs (this machine need not have any)."""
    yield from local_ray(2)


def _report(ray, name="auto", **options):
    from vgray.distributed.devices import device_report

    return ray.get(ray.remote(device_report).options(num_cpus=0.5, **options).remote(name, True))


@pytest.mark.slow
def test_tasks_pick_what_ray_assigned(fake_gpu_ray):
    ray = fake_gpu_ray
    none = _report(ray, num_gpus=0)  # CUDA "present": still the CPU
    assert none["assigned"] == [] and none["device"] == "cpu"
    assert _report(ray, "cuda", num_gpus=0)["device"].startswith(
        "refused: device=cuda: Ray assigned this worker no GPU"
    )
    one = _report(ray, num_gpus=1)
    assert len(one["assigned"]) == 1 and one["visible"] == one["assigned"][0] and one["device"] == "cuda:0"
    half = _report(ray, num_gpus=0.5)  # a fraction of a GPU is that GPU
    assert len(half["assigned"]) == 1 and half["device"] == "cuda:0"
    two = _report(ray, "cuda:1", num_gpus=2)
    assert sorted(two["assigned"]) == ["0", "1"] and two["device"] == "cuda:1"
    assert _report(ray, "cuda:1", num_gpus=1)["device"].startswith("refused: device=cuda:1")


@pytest.mark.slow
def test_without_ray_setting_cuda_visible_devices_the_id_is_the_ordinal(fake_gpu_ray):
    ray = fake_gpu_ray
    env = {"env_vars": {"RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1"}}
    got = _report(ray, num_gpus=1, runtime_env=env)
    gpu, visible = got["assigned"][0], got["visible"]  # as Ray's raylet found it: unset, unless set before
    ordinal = visible.split(",").index(gpu) if visible and gpu in visible.split(",") else int(gpu)
    assert got["device"] == f"cuda:{ordinal}"


@pytest.mark.slow
def test_placement_group_bundles_pick_their_own_devices(fake_gpu_ray):
    # A trial's shape: a CPU trainer bundle and a GPU extraction bundle (and the reverse).
    ray = fake_gpu_ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": 0.5}, {"CPU": 0.5, "GPU": 1}], strategy="PACK")
    ray.get(pg.ready(), timeout=60)
    try:

        def at(i, gpus):
            return dict(
                num_gpus=gpus,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=pg, placement_group_bundle_index=i
                ),
            )

        assert _report(ray, **at(0, 0))["device"] == "cpu"
        assert _report(ray, **at(1, 0))["device"] == "cpu"  # in the GPU bundle, but asked for none
        assert _report(ray, **at(1, 1))["device"] == "cuda:0"
    finally:
        remove_placement_group(pg)


@pytest.mark.slow
def test_extraction_actor_runtime_follows_ray(fake_gpu_ray):
    """The Ray Data model actor builds its runtime from Ray's assignment: a CPU actor on the CPU;
    a GPU actor where CUDA is absent says so in one line instead of falling back to the CPU."""
    ray = fake_gpu_ray
    from vgray.config import load_config
    from vgray.distributed.extract import _Embed
    from vgray.models import build_model

    cfg = load_config(
        overrides=[
            "model.pretrained=none",
            "model.backbone=resnet18conv4",
            "model.aggregation=gem",
            "data.resize=[32,48]",
            "device=auto",
        ]
    )
    state = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size).state_dict()

    class Probe(_Embed):
        def device(self):
            return str(self.rt.device)

    cpu = ray.remote(Probe).options(num_cpus=0.5, num_gpus=0).remote(cfg, state=state)
    assert ray.get(cpu.device.remote()) == "cpu"
    ray.kill(cpu)
    if not torch.cuda.is_available():
        gpu = ray.remote(Probe).options(num_cpus=0.5, num_gpus=1).remote(cfg, state=state)
        with pytest.raises(Exception, match="Ray assigned GPU .* but CUDA is not available"):
            ray.get(gpu.device.remote())
        ray.kill(gpu)


@pytest.mark.slow
def test_driver_keeps_the_machines_choice(fake_gpu_ray):
    from vgray.distributed.devices import device_report, use_ray_devices

    use_ray_devices()
    assert device_report(cuda_present=True)["assigned"] is None
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
