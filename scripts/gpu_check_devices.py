"""The ``devices`` step of scripts/gpu_check.sh: on a local Ray holding this machine's GPUs, where
tasks shaped like two ``gpu: 0.5`` trials (at once) and a ``gpu: 0`` one would run, as
:func:`vgray.distributed.devices.device_report` sees it. Writes OUT/gpu_check_devices.json.

    python scripts/gpu_check_devices.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ray

from vgray.distributed.cluster import init_local_ray
from vgray.distributed.devices import device_report


def main(out: Path, **ray_options) -> None:
    """``ray_options``: more ``ray.init`` arguments (``num_gpus=1`` declares a GPU on a machine
    without one, to try this script there)."""
    init_local_ray(num_cpus=2, log_to_driver=False, **ray_options)
    try:
        report = ray.remote(device_report)
        halves = ray.get([report.options(num_cpus=0.5, num_gpus=0.5).remote() for _ in range(2)])
        none = ray.get(report.options(num_cpus=0.5, num_gpus=0).remote())
        figures = {"gpu_0.5_tasks": halves, "gpu_0_task": none, "cluster_gpus": ray.cluster_resources().get("GPU", 0)}
    finally:
        ray.shutdown()
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check_devices.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
