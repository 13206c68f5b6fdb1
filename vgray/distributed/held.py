"""Work that grows with the data, held by a Ray worker rather than by the driver; a cluster of
several nodes on one machine.

:class:`HeldWork` keeps a one-process Flat index, or a training split's mining caches, in an actor
that reserves no CPU, as a training trial's trainer holds its cache in a Tune worker: a driver that
orchestrates (``vgray bench scale``) then holds nothing that grows with the database.
:func:`local_cluster` starts ``ray.cluster_utils.Cluster`` nodes on this machine, the shape of a
real cluster (a head with no CPU, worker nodes) for measurements and tests.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np

from vgray.errors import BadInput


@contextlib.contextmanager
def local_cluster(nodes: Optional[int], cpus: Optional[int], store_mb: int) -> Iterator[Optional[str]]:
    """With ``nodes``, a Ray cluster of that many nodes on this machine (``ray.cluster_utils.Cluster``:
    a head with no CPU, where the driver sits, and ``nodes`` worker nodes sharing ``cpus``, default
    all of this machine's, each with ``store_mb`` of object store); its address, shut down on
    leaving. Without: None (the caller's Ray)."""
    if not nodes:
        yield None
        return
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        raise BadInput("--nodes starts its own cluster: this process is already connected to a Ray")

    total = cpus or os.cpu_count() or 1
    share = [total // nodes + (1 if i < total % nodes else 0) for i in range(nodes)]
    store = store_mb << 20
    # A raylet kills a task worker that stays idle for a second while the node has more workers than
    # CPUs. Nodes of one CPU that also hold actors (the network's, the probes) are always past that
    # limit, so a decode task that waits a moment for the actors loses its worker, and every later
    # task pays a new process (the rsf ladder fell from ~370 to ~10 images/s): keep idle workers.
    system = {"num_workers_soft_limit": max(16, 4 * total), "idle_worker_killing_time_threshold_ms": 60_000}
    head = {
        "num_cpus": 0,
        "num_gpus": 0,
        "include_dashboard": False,
        "object_store_memory": store,
        "_system_config": system,
    }
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        for c in share:
            cluster.add_node(num_cpus=c, num_gpus=0, object_store_memory=store)
        cluster.wait_for_nodes()
        yield cluster.address
    finally:
        cluster.shutdown()


class _Held:
    """The actor behind :class:`HeldWork`."""

    def __init__(self) -> None:
        self.index: Any = None
        self.mining: Dict[str, Any] = {}

    def build_flat(self, files: List[str], seed: int) -> float:
        """The Flat index of the database ``files`` (:func:`~vgray.distributed.search.index_from_shards`); its MiB."""
        from vgray.distributed.search import index_from_shards
        from vgray.evaluate.knn import index_memory_mb

        self.index = index_from_shards(files, "Flat", seed=seed)
        return float(index_memory_mb(self.index))

    def search(self, xq: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        from vgray.evaluate.knn import search

        D, I, _ = search(self.index, xq, k)
        return D, I

    def drop(self) -> None:
        self.index, self.mining = None, {}

    def start_mining(self, cfg, state, extract_actors: Optional[int], split: str = "test") -> Optional[str]:
        """Training's descriptor source (:class:`~vgray.train.loop.LocalDescriptors` through a
        :class:`~vgray.distributed.descriptors.RayExtractor`) on the ``split`` of ``cfg``'s
        dataset; None, or why the split cannot be a training split."""
        import ray

        from vgray.data.dataset import open_split
        from vgray.data.transforms import test_transform
        from vgray.distributed.descriptors import RayExtractor
        from vgray.models import build_model
        from vgray.runtime import Runtime
        from vgray.train.loop import LocalDescriptors
        from vgray.train.mining import TrainingQueries

        images = open_split(cfg.data.root, split, cfg.data.msls_queries)
        model = build_model(cfg.model, load_weights=False, image_size=cfg.data.image_size)
        model.load_state_dict(ray.get(state) if isinstance(state, ray.ObjectRef) else state)
        model.eval()
        rt = Runtime.from_config(cfg, progress=False)
        transform = test_transform(cfg.data.image_size, model.mean, model.std, cfg.data.resize_order)
        extractor = RayExtractor(cfg, actors=extract_actors, log=lambda msg: None)
        try:
            data = TrainingQueries(images, cfg.train.positive_dist_threshold, cfg.test.positive_dist_threshold)
        except BadInput as exc:
            return str(exc)
        source = LocalDescriptors(model, images, transform, rt, extractor)
        self.mining = {"cfg": cfg, "data": data, "source": source, "extractor": extractor}
        return None

    def refresh(self, method: str) -> Dict[str, Any]:
        """One cache refresh of ``method``: ``{"images_through_ray", "usable"}``, or ``{"left_out": why}``."""
        from vgray.train.mining import create_miner

        m = self.mining
        m.pop("miner", None)  # the last method's cache goes before this one's is built
        try:
            miner = create_miner(method, m["data"], m["cfg"].train)
        except BadInput as exc:  # msls_weighted without night or sideways queries
            return {"left_out": str(exc)}
        rng = np.random.default_rng(m["cfg"].seed)
        queries = miner.sample_queries(rng, m["cfg"].train.cache_refresh_rate)
        before = m["extractor"].images_through_ray
        miner.refresh(m["source"], queries, rng)
        m["miner"] = miner
        return {"images_through_ray": m["extractor"].images_through_ray - before, "usable": len(m["data"].usable)}


class HeldWork:
    """A :class:`_Held` actor (0 CPUs) and blocking calls to it; :meth:`close` ends it."""

    def __init__(self) -> None:
        import ray

        self._actor: Any = ray.remote(num_cpus=0)(_Held).remote()

    def _get(self, call) -> Any:
        import ray

        return ray.get(call)

    def build_flat(self, files: List[str], seed: int) -> float:
        """A Flat index of the database shards ``files``, held; its MiB."""
        return float(self._get(self._actor.build_flat.remote(files, seed)))

    def search(self, xq: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """``(D, I)`` of the held Flat index."""
        return self._get(self._actor.search.remote(xq, k))

    def start_mining(self, cfg, model, extract_actors: Optional[int] = None, split: str = "test") -> Optional[str]:
        """Training's descriptor source for ``model`` (its current weights) on the ``split`` of
        ``cfg``'s dataset; None, or why that split cannot be a training split."""
        import ray

        state = ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
        return self._get(self._actor.start_mining.remote(cfg, state, extract_actors, split))

    def refresh(self, method: str) -> Dict[str, Any]:
        """One cache refresh of ``method``: ``images_through_ray`` and ``usable``, or ``left_out`` (why)."""
        return self._get(self._actor.refresh.remote(method))

    def drop(self) -> None:
        """Forget the index and the caches."""
        self._get(self._actor.drop.remote())

    def close(self) -> None:
        import ray

        ray.kill(self._actor)
