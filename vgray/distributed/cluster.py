"""A Ray session for the benchmarks, and what the cluster holds.

Ray lives in :mod:`vgray.distributed` only, so code above it (``vgray bench``) asks here instead
of importing Ray. A sweep joins or starts Ray with its dashboard (:func:`vgray.distributed.sweep.
init_ray`); a benchmark wants a bare Ray of its own unless told an address, and to leave things as
it found them.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, Optional


def init_local_ray(num_cpus: Optional[int] = None, dashboard: bool = False, **kwargs):
    """``ray.init(address="local", ...)`` (a new Ray of our own, never a ``ray start`` cluster found
    on this machine) of ``num_cpus`` CPUs (default: all), with or without its ``dashboard``, the
    other ``ray.init`` arguments in ``kwargs``, whose every service listens on 127.0.0.1 only:
    GCS, raylet (node and object manager), dashboard and its agent, runtime-env agent, metrics
    export, and the gRPC server of every worker and actor. Returns Ray's context.

    Ray binds its servers to all interfaces unless the node's IP is a loopback address, and
    ``ray.init`` turns a loopback ``_node_ip_address`` into the machine's routable one, except
    where multi-node clusters are off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read once when Ray is
    imported; off by default on Windows and macOS, which is how Ray keeps a laptop's Ray private).
    A single-machine Ray needs no other node, so it is switched off here for the start only: the
    node's IP becomes 127.0.0.1 and every process started from it binds there. Joining a cluster
    never comes here and keeps the cluster's settings.
    """
    import ray
    from ray._private import ray_constants  # the switch above; Ray reads it when resolving the node's IP

    switch = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        return ray.init(
            address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1", **kwargs
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = switch


@contextmanager
def ray_session(address: Optional[str] = None, num_cpus: Optional[int] = None) -> Iterator[None]:
    """Ray for the duration of a ``with`` block.

    Joins ``address`` (``auto`` or ``HOST:PORT``) when given, else starts a local Ray of
    ``num_cpus`` CPUs (default: all) on 127.0.0.1 only (:func:`init_local_ray`), without dashboard
    or driver logs. A Ray already up in this process is used as it is and left up; the one started
    here is shut down on leaving.
    """
    import ray

    started = not ray.is_initialized()
    if started and address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    elif started:
        init_local_ray(num_cpus=num_cpus, log_to_driver=False)
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
    return {
        "cpus": float(ray.cluster_resources().get("CPU", 1.0)),
        "nodes": len(alive),
        "node_cpus": max((float(n["Resources"].get("CPU", 0.0)) for n in alive), default=0.0),
    }


def shutdown_ray() -> None:
    """Disconnect from Ray (and stop the local Ray this process started)."""
    import ray

    ray.shutdown()
