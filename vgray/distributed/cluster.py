"""A Ray session for the benchmarks, and what the cluster holds.

Ray lives in :mod:`vgray.distributed` only, so code above it (``vgray bench``) asks here instead
of importing Ray. A sweep joins or starts Ray with its dashboard (:func:`vgray.distributed.sweep.
init_ray`); a benchmark wants a bare Ray of its own unless told an address, and to leave things as
it found them.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, Optional


@contextmanager
def ray_session(address: Optional[str] = None, num_cpus: Optional[int] = None) -> Iterator[None]:
    """Ray for the duration of a ``with`` block.

    Joins ``address`` (``auto`` or ``HOST:PORT``) when given, else starts a local Ray of
    ``num_cpus`` CPUs (default: all) without dashboard or driver logs: "local" never joins some
    other Ray found running on this machine. A Ray already up in this process is used as it is and
    left up; the one started here is shut down on leaving.
    """
    import ray
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or "local", num_cpus=None if address else num_cpus,
                 include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def cluster_summary() -> Dict[str, float]:
    """The connected cluster: ``cpus`` (all of its CPUs), ``nodes`` (alive ones) and ``node_cpus``
    (the CPUs of its largest node: what one actor can have at most)."""
    import ray
    alive = [n for n in ray.nodes() if n.get("Alive")]
    return {"cpus": float(ray.cluster_resources().get("CPU", 1.0)), "nodes": len(alive),
            "node_cpus": max((float(n["Resources"].get("CPU", 0.0)) for n in alive), default=0.0)}


def shutdown_ray() -> None:
    """Disconnect from Ray (and stop the local Ray this process started)."""
    import ray
    ray.shutdown()
