"""A synthetic world written by Ray tasks, resumably: ``vgray synth OUT --preset rsf`` (a preset
marked ``ray``) or any preset with ``--address``.

The data layer plans the chunks and checks everything before a byte is written
(:func:`vgray.data.synthetic.write.plan_resumable`: what ``OUT`` holds, the free space); here each
chunk of :data:`~vgray.data.synthetic.write.CHUNK` images becomes one Ray task
(:func:`~vgray.data.synthetic.write.render_chunk`) that renders its images and writes them into
``OUT`` itself, each file atomically, then the chunk's done-marker. The driver only counts: a bar
over the images written. A re-run skips the chunks whose marker is there; the dataset's marker is
written last, once every chunk is. Each image draws from its own random stream, so the bytes do not
depend on how the chunks were shared among workers, nodes or runs. On a cluster, ``OUT`` must be a
folder every node sees (a shared file system).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from vgray.data.synthetic.write import plan_resumable, render_chunk, write_resumable

__all__ = ["generate_on_ray", "check_address"]


def check_address(address: str, timeout_s: float = 5.0) -> None:
    """Refuse (:class:`~vgray.errors.BadInput`) an ``--address`` that is neither ``auto`` nor
    ``HOST:PORT``, or a ``HOST:PORT`` where nothing takes a connection within ``timeout_s``, before
    anything starts: :func:`vgray.distributed.sweep.check_address`."""
    from vgray.distributed.sweep import check_address as check

    check(address, "--address", timeout_s)


def generate_on_ray(
    out,
    preset: str = "rsf",
    seed: int = 0,
    address: Optional[str] = None,
    num_cpus: Optional[int] = None,
    progress: bool = True,
) -> Path:
    """Write (or finish writing) the synthetic dataset ``preset``/``seed`` into ``out`` as Ray tasks.

    Joins ``address`` (``auto`` or ``HOST:PORT``; else ``RAY_ADDRESS``, else a local Ray of
    ``num_cpus`` CPUs on 127.0.0.1: :func:`vgray.distributed.sweep.init_ray`); a Ray already up in
    this process is used as it is. Every check comes first, then Ray: a bad address, a folder
    holding something else, too little free space raise :class:`~vgray.errors.BadInput` with
    nothing written. Returns ``out`` as an absolute Path.
    """
    plan = plan_resumable(out, preset, seed)
    if address is not None:
        check_address(address)
    if plan is None:  # already there
        return Path(out).expanduser().absolute()
    from vgray.distributed.sweep import join_ray

    join_ray(address, num_cpus)
    return write_resumable(plan, run_chunks, progress)


def run_chunks(jobs: list, update: Callable[[int], object]) -> None:
    """Run :func:`~vgray.data.synthetic.write.render_chunk` jobs as Ray tasks of one CPU each,
    calling ``update(images)`` as each ends. A task whose worker or node is lost is run again
    (its chunk is rewritten whole); an error in a task is raised here."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=3)(render_chunk)
    pending = [task.remote(job) for job in jobs]
    while pending:
        ready, pending = ray.wait(pending, num_returns=min(len(pending), 8), timeout=1.0)
        for n in ray.get(ready):
            update(n)
