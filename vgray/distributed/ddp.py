"""``train.workers > 1``: one run trained by a group of data-parallel workers through Ray Train.

:func:`run_group` starts a :class:`ray.train.torch.TorchTrainer` of ``train.workers`` workers (one
a GPU with NCCL, or CPU workers with gloo), each running :func:`vgray.train.loop.train`, which
finds its place in the ``torch.distributed`` group Ray Train set up
(:class:`vgray.train.parallel.Group`) and splits batches and extraction accordingly.

Placement, as Ray 2.60 runs Train inside Tune (Train V2, the default since Ray 2.51): the trial's
own placement group holds the trial function (the group's driver, which waits on the workers), and
the trainer reserves the workers in a placement group of its own, one bundle a worker
(``resources.cpu``/``gpu``/``memory_gb`` each; ``resources.strategy`` PACK or SPREAD). The sweep
checks before Ray starts that the workers' bundles fit the nodes at all
(:func:`worker_bundles`), and bounds the trials running at once by how many groups fit together
(:func:`vgray.distributed.sweep.concurrent_groups`), so that no trial's group waits on another's.

Files: each worker trains in a local folder; rank 0 sends every epoch's figures and files (the
checkpoints, ``metrics.jsonl``, ``config.yaml``) through a Ray queue to the caller, which writes
them into its run folder before calling its ``report`` (a sweep trial: its Tune checkpoint; the
command line: ``--out``). A resumed run hands the caller's ``last.pt`` and ``best.pt`` to every
worker. A worker that dies fails the group (``FailureConfig(max_failures=0)``); the caller's error
then goes where a one-process run's would: Tune retries the trial from its last checkpoint, with
the faults machinery of any trial.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from vgray.atomic import write_bytes
from vgray.errors import BadInput

# The files of a run folder that rank 0 sends after every epoch (best.pt only when it changed).
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "config.yaml")


@dataclass(frozen=True)
class WorkerShape:
    """One worker's bundle: ``cpu``, ``gpu`` (0: a CPU worker), ``memory_gb``; ``strategy``: how the
    group's bundles go on nodes (PACK: as few nodes as possible; SPREAD: one a node where it can)."""

    cpu: float = 1.0
    gpu: float = 0.0
    memory_gb: Optional[float] = None
    strategy: str = "PACK"

    def bundle(self) -> Dict[str, float]:
        out = {"CPU": self.cpu, "GPU": self.gpu}
        if self.memory_gb:
            out["memory"] = self.memory_gb * 2**30
        return {k: v for k, v in out.items() if v}


def worker_shape(resources: Dict[str, Any]) -> WorkerShape:
    """A sweep's ``resources`` read per worker (``cpu``, ``gpu``, ``memory_gb``, ``strategy``)."""
    return WorkerShape(
        cpu=float(resources.get("cpu", 1.0)),
        gpu=float(resources.get("gpu", 0.0)),
        memory_gb=resources.get("memory_gb"),
        strategy=str(resources.get("strategy") or "PACK"),
    )


def worker_bundles(shape: WorkerShape, workers: int) -> List[Dict[str, float]]:
    """The placement group the trainer asks for: one bundle a worker."""
    return [shape.bundle() for _ in range(workers)]


def backend(cfg, shape: WorkerShape) -> str:
    """``train.ddp_backend``, ``auto`` read as NCCL for GPU workers and gloo for CPU ones; NCCL
    without a GPU a worker is refused (one line)."""
    chosen = cfg.train.ddp_backend
    gpu = shape.gpu > 0 and cfg.device != "cpu"
    if chosen == "auto":
        return "nccl" if gpu else "gloo"
    if chosen == "nccl" and not gpu:
        raise BadInput(
            "train.ddp_backend=nccl needs a GPU per worker (resources.gpu > 0 and device not cpu); use gloo or auto"
        )
    return chosen


def run_group(
    cfg,
    out_dir,
    shape: WorkerShape,
    *,
    resume: bool = False,
    report: Optional[Callable[[Dict[str, float], Path], None]] = None,
) -> Dict[str, Any]:
    """Train ``cfg`` with ``cfg.train.workers`` workers through Ray Train (Ray must be up); every
    epoch's files land in ``out_dir`` before ``report(metrics, out_dir)``; returns what
    :func:`vgray.train.loop.train` returns (rank 0's). ``resume``: continue from
    ``out_dir/last.pt``."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.util.queue import Queue

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    queue = Queue(actor_options={"num_cpus": 0})
    # A resumed run: the run folder's files (last.pt, and best.pt, which the final test reads) to every worker.
    start = {n: ray.put((out / n).read_bytes()) for n in RUN_FILES if resume and (out / n).is_file()}
    scratch = Path(tempfile.mkdtemp(prefix="vgray-train-"))  # Ray Train's run folder (nothing persisted)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg.to_dict(), "queue": queue, "start": start, "cpus": shape.cpu},
        torch_config=TorchConfig(backend=backend(cfg, shape)),
        scaling_config=ScalingConfig(
            num_workers=cfg.train.workers,
            use_gpu=shape.gpu > 0,
            resources_per_worker=shape.bundle() or {"CPU": 0.001},
            placement_strategy=shape.strategy,
        ),
        run_config=RunConfig(
            name=f"vgray-{uuid.uuid4().hex[:8]}",
            storage_path=str(scratch),
            failure_config=FailureConfig(max_failures=0),  # a lost worker fails the group: the caller retries
        ),
    )
    errors: List[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread below
            errors.append(exc)

    thread = threading.Thread(target=fit, name="vgray-train-group", daemon=True)
    thread.start()
    final: Optional[Dict[str, Any]] = None
    try:
        while True:
            item = _next(queue, thread)
            if item is None:
                break
            if "final" in item:
                final = item["final"]
                continue
            for name, data in item["files"].items():
                write_bytes(out / name, data)
            if report is not None:
                report(item["epoch"], out)
        thread.join()
    finally:
        queue.shutdown(force=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if errors:
        raise _one_line(errors[0])
    if final is None:
        raise RuntimeError("the training group ended without rank 0's final figures")
    return final


def _next(queue, thread: threading.Thread) -> Optional[Dict[str, Any]]:
    """The next message of rank 0, or None once the group has ended and every message is read."""
    from ray.util.queue import Empty

    while True:
        alive = thread.is_alive()
        try:
            return queue.get(timeout=0.5)
        except Empty:
            if not alive:  # ended before this read began: nothing more will come
                return None


def _one_line(exc: BaseException) -> BaseException:
    """A failed group's error as vgray raises it: a :class:`BadInput` a worker raised stays one (exit
    2, its own line); anything else is a RuntimeError naming the first line of its cause."""
    seen: List[BaseException] = []
    stack: List[Any] = [exc]
    while stack:
        e = stack.pop()
        if not isinstance(e, BaseException) or any(e is s for s in seen):
            continue
        seen.append(e)
        if isinstance(e, BadInput):
            return BadInput(str(e).splitlines()[0] if str(e) else type(e).__name__)
        failures = getattr(e, "worker_failures", None)
        stack.extend((failures or {}).values() if isinstance(failures, dict) else [])
        stack.extend([getattr(e, "cause", None), e.__cause__, e.__context__])
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()][:3]  # Train's headline and cause
    return RuntimeError(f"the training group failed: {' '.join(lines)[:300] or type(exc).__name__}")


def _worker(config: Dict[str, Any]) -> None:
    """One worker of the group (Ray Train calls it with ``train_loop_config``): the training loop in
    a local folder; rank 0 sends each epoch's files and, at the end, the final figures."""
    import ray
    import ray.train
    import torch

    from vgray.config import from_dict
    from vgray.distributed.devices import use_ray_devices
    from vgray.train.loop import train
    from vgray.train.parallel import Group

    use_ray_devices()  # auto: the GPU Ray Train gave this worker, else the CPU
    torch.set_num_threads(max(1, int(config["cpus"])))
    rank = ray.train.get_context().get_world_rank()
    nodes = Group.current().gather_objects(ray.get_runtime_context().get_node_id())
    cfg = from_dict(config["cfg"])
    work = Path(tempfile.mkdtemp(prefix=f"vgray-rank{rank}-"))
    queue = config["queue"]
    try:
        for name, ref in config["start"].items():  # a resumed run's files, as the caller has them
            (work / name).write_bytes(ray.get(ref))
        sent: Dict[str, int] = {name: (work / name).stat().st_mtime_ns for name in config["start"]}

        def report(metrics: Dict[str, float], out: Path) -> None:
            files = {}
            for name in RUN_FILES:
                path = out / name
                if path.is_file() and sent.get(name) != path.stat().st_mtime_ns:
                    sent[name] = path.stat().st_mtime_ns
                    files[name] = path.read_bytes()
            queue.put({"epoch": metrics, "files": files})

        result = train(
            cfg,
            work,
            report=report if rank == 0 else None,
            resume="last.pt" in config["start"],
            progress=False,
            log=_quiet,
        )
        if rank == 0:  # with the number of nodes the group spanned
            queue.put({"final": {**result, "group_nodes": len(set(nodes))}})
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _quiet(*args) -> None:
    """Workers print nothing: rank 0's figures go to the caller."""
