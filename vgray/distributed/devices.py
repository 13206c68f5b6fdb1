"""The device of code that Ray runs: from the GPUs Ray assigned, never from what the machine has.

Ray 2.60 sets CUDA_VISIBLE_DEVICES to the assigned ids for a task or actor with ``num_gpus > 0``
(unless RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES is set) and, since ray-project/ray#54868, leaves
it alone for one with none: a ``gpu: 0`` trial or a CPU Ray Data actor on a GPU node would see every
GPU, and ``device=auto`` would put it on GPU 0, outside Ray's accounting. :func:`use_ray_devices`
installs Ray's assignment as :mod:`vgray.runtime`'s source of GPU ids (:func:`vgray.runtime.
set_gpu_assignment`): in a Ray worker ``auto`` is then the CPU without an assigned GPU, else the
first assigned one at its local ordinal, and ``cuda:N`` the worker's N-th GPU (refused when it has
fewer). In the driver, and without Ray, the machine decides as before.
"""

from __future__ import annotations

from typing import Dict, List, Optional


def ray_assigned_gpus() -> Optional[List[str]]:
    """The GPU ids Ray assigned to the current task or actor (``[]``: none), or None outside a Ray
    worker (no Ray, or the driver)."""
    import ray

    if not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    if ctx.worker.mode != ray.WORKER_MODE:
        return None
    return [str(i) for i in ctx.get_accelerator_ids().get("GPU", [])]


def use_ray_devices() -> None:
    """Make :func:`vgray.runtime.resolve_device` follow Ray's GPU assignment in this process (called
    where a trial or an extraction actor starts; harmless in the driver)."""
    from vgray.runtime import set_gpu_assignment

    set_gpu_assignment(ray_assigned_gpus)


def device_report(name: str = "auto", cuda_present: Optional[bool] = None) -> Dict[str, object]:
    """What this process would run ``device=name`` on under Ray's assignment, as chosen (whether or
    not CUDA works here; ``cuda_present`` stands for the machine's answer, default torch's):
    ``{"assigned": ids or None, "visible": CUDA_VISIBLE_DEVICES, "device": "cpu" / "cuda:N" or the
    refusal}``. Run it as a Ray task or actor method to see where a worker of some shape would run."""
    import os

    import torch

    from vgray.errors import BadInput
    from vgray.runtime import choose_device

    assigned = ray_assigned_gpus()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    cuda = torch.cuda.is_available() if cuda_present is None else cuda_present
    try:
        device = str(choose_device(name, assigned, None if visible is None else visible.split(","), cuda))
    except BadInput as exc:
        device = f"refused: {exc}"
    return {"assigned": assigned, "visible": visible, "device": device}
