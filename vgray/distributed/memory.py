"""Peak resident memory of one stage of work, of this process and of the Ray workers on every node.

Linux only (``/proc``). A process's peak RSS (``VmHWM``, what ``ru_maxrss`` reports) is a lifetime
high-water mark; writing ``5`` to ``/proc/PID/clear_refs`` resets it to the current RSS, so a
stage's peak is exact: reset at the start, read at the end (:class:`DriverPeak`). Ray workers are
measured from inside the cluster: one probe actor per node (no CPU reserved) resets the peaks of
that node's worker processes (``ray::...`` in their command line) and reads them every
``interval`` seconds from a thread, so that a worker which ends within the stage (a Ray Data actor,
a search actor closed) is counted with its peak at the last read before it ended. RSS counts the
object-store pages a worker has mapped, as the kernel does.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

KIB = 1024


def _status_kib(pid: int, key: str) -> Optional[int]:
    """``key`` (``VmHWM``, ``VmRSS``) of process ``pid`` in KiB; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def reset_peak(pid: int) -> bool:
    """Reset the peak RSS of ``pid`` to its current RSS; False where the kernel does not allow it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mb(pid: Optional[int] = None) -> float:
    """The peak RSS (MiB) of ``pid`` (this process by default) since it started or since :func:`reset_peak`."""
    return (_status_kib(pid or os.getpid(), "VmHWM") or 0) / KIB


class DriverPeak:
    """``with DriverPeak() as p: ...`` then ``p.mb``: this process's peak RSS within the block, and
    ``p.rise_mb`` over its RSS at the start (exact where ``clear_refs`` may be written, ``exact``)."""

    def __enter__(self) -> DriverPeak:
        self.exact = reset_peak(os.getpid())
        self.start_mb = (_status_kib(os.getpid(), "VmRSS") or 0) / KIB
        return self

    def __exit__(self, *exc: object) -> None:
        self.mb = peak_mb()
        self.rise_mb = max(0.0, self.mb - self.start_mb)


def _ray_workers(skip: int) -> Dict[int, str]:
    """pid -> title of this user's Ray worker processes on this machine (not ``skip``)."""
    found = {}
    uid = os.getuid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == skip:
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read(200).split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::"):
            found[int(entry)] = title.split()[0]
    return found


class _NodeProbe:
    """The Ray workers of one node: their peaks since :meth:`reset`, read every ``interval`` s."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.lock = threading.Lock()
        self.seen: Dict[int, Tuple[str, int]] = {}
        threading.Thread(target=self._loop, daemon=True).start()

    def _read(self) -> None:
        for pid, title in _ray_workers(os.getpid()).items():
            kib = _status_kib(pid, "VmHWM")
            if kib is None:
                continue
            with self.lock:
                if kib > self.seen.get(pid, ("", 0))[1]:
                    self.seen[pid] = (title, kib)

    def _loop(self) -> None:
        while True:
            self._read()
            time.sleep(self.interval)

    def reset(self) -> int:
        with self.lock:
            self.seen = {}
        return sum(reset_peak(pid) for pid in _ray_workers(os.getpid()))

    def peaks(self) -> Dict[int, Tuple[str, int]]:
        self._read()
        with self.lock:
            return dict(self.seen)


class WorkerPeaks:
    """The largest Ray worker's peak RSS over a stage, over every alive node of the cluster.

    ``reset()`` at a stage's start, ``largest()`` at its end: ``(MiB, worker title)``. Needs Ray
    up; :meth:`close` ends the probes."""

    def __init__(self, interval: float = 0.2):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        remote = ray.remote(_NodeProbe)
        self.probes: List[Any] = [
            remote.options(
                num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
            ).remote(interval)
            for n in ray.nodes()
            if n.get("Alive")
        ]
        ray.get([p.reset.remote() for p in self.probes])

    def reset(self) -> None:
        import ray

        ray.get([p.reset.remote() for p in self.probes])

    def largest(self) -> Tuple[float, str]:
        import ray

        merged: Dict[int, Tuple[str, int]] = {}
        for peaks in ray.get([p.peaks.remote() for p in self.probes]):
            for pid, (title, kib) in peaks.items():  # nodes on one machine see the same processes
                if kib > merged.get(pid, ("", 0))[1]:
                    merged[pid] = (title, kib)
        if not merged:
            return 0.0, ""
        title, kib = max(merged.values(), key=lambda v: v[1])
        return kib / KIB, title

    def close(self) -> None:
        import ray

        for p in self.probes:
            ray.kill(p)
        self.probes = []
