"""Descriptors for training and evaluation served by Ray Data, in memory, above a size threshold.

Paper: Berton et al., "Deep Visual Geo-localization Benchmark", CVPR 2022 (the mining-cache
refresh and the val/test extraction of its training protocol, spread over a cluster).

:class:`RayExtractor` has the extractor contract of :func:`vgray.evaluate.evaluate.evaluate_split`
(``extractor(model, paths, transform, rt, features_dim, desc) -> (descriptors, valid)``), which the
training loop also hands to its mining :class:`~vgray.train.mining.DescriptorSource`. A set of more
than ``data.ray_threshold`` images (every set when it is 0) goes through the pipeline of
:mod:`vgray.distributed.extract` (decode in Ray Data tasks, the network in an actor pool, built
once per actor from the current weights put in the object store), its descriptors gathered back
into the caller's memory; a smaller set, or a call without Ray, is extracted in-process, where
Ray's start-up would dominate. The training loop and evaluation do not know which.

Inside a Ray Tune trial, the pipeline runs in the trial's placement group: the trial reserves one
bundle for its trainer and one for extraction (:func:`trial_resources`), and every Ray Data task and
actor is scheduled into that group, sized to the extraction bundle, so that trials waiting for
extraction slots can never hold all of the cluster (no deadlock). A trial without an extraction
bundle extracts in-process.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from vgray.errors import BadInput

if TYPE_CHECKING:
    from ray.tune import PlacementGroupFactory

# CPUs of a trial's extraction bundle unless the sweep says otherwise (resources.extract_cpu).
DEFAULT_EXTRACT_CPU = 1


class RayExtractor:
    """An extractor that sends sets larger than ``threshold`` (default ``cfg.data.ray_threshold``)
    through Ray Data. ``cfg`` builds the network in the actors (its weights come from the model
    passed to each call). ``actors`` and ``batch_size`` default as in ``vgray extract`` (inside a
    placement group: as many as its extraction bundles hold). ``images_through_ray`` counts the
    images extracted by Ray Data so far."""

    def __init__(
        self,
        cfg,
        threshold: Optional[int] = None,
        actors: Optional[int] = None,
        batch_size: Optional[int] = None,
        log: Optional[Callable[[str], None]] = None,
    ):
        self.cfg = cfg
        self.threshold = cfg.data.ray_threshold if threshold is None else threshold
        if self.threshold < 0:
            raise BadInput(f"data.ray_threshold={self.threshold} must be 0 (always Ray Data) or more")
        self.actors = actors
        self.batch_size = batch_size or cfg.test.batch_size
        self.log = log or (lambda msg: print(f"vgray: {msg}", file=sys.stderr))
        self.images_through_ray = 0
        self.calls_through_ray = 0

    def uses_ray(self, count: int) -> bool:
        """Whether a set of ``count`` images goes through Ray Data."""
        import ray

        if count == 0 or not ray.is_initialized():
            return False
        if count <= self.threshold and self.threshold > 0:
            return False
        return _budget() is not None

    def __call__(
        self, model, paths: Sequence[str], transform, rt, features_dim: int, desc: str = "images"
    ) -> Tuple[np.ndarray, np.ndarray]:
        from vgray.evaluate.extract import extract_descriptors

        if not self.uses_ray(len(paths)):
            return extract_descriptors(model, paths, transform, rt, features_dim, desc)
        out, valid = ray_descriptors(
            self.cfg,
            model,
            paths,
            transform,
            features_dim,
            rt.skip_corrupt,
            self.batch_size,
            self.actors,
            rt.progress,
            self.log,
        )
        self.images_through_ray += int(valid.sum())
        self.calls_through_ray += 1
        return out, valid


def _budget() -> Optional[Dict[str, Any]]:
    """Where the pipeline may run: outside a placement group, the whole cluster
    (``{"pg": None}``); inside one (a Tune trial), its bundles after the first (the trainer's):
    ``{"pg": group, "cpu": n, "gpu": n}``, or None when it has no such bundle."""
    import ray

    pg = ray.util.get_current_placement_group()
    if pg is None:
        return {"pg": None}
    extra = pg.bundle_specs[1:]
    cpu = float(sum(b.get("CPU", 0) for b in extra))
    gpu = float(sum(b.get("GPU", 0) for b in extra))
    if (cpu <= 0 and gpu <= 0) or (gpu <= 0 and pg.bundle_specs[0].get("GPU", 0) > 0):
        return None  # no extraction bundle, or CPU actors beside the trainer's own GPU: in-process
    return {"pg": pg, "cpu": cpu, "gpu": gpu}


def _plan(budget: Dict[str, Any], actors: Optional[int]) -> Dict[str, Any]:
    """Actors and per-stage resources. Outside a placement group: as ``vgray extract`` (one actor
    per GPU, else half the CPUs, decode tasks on 1 CPU and a memory request; CPU actors share what
    is left when more are asked for). Inside: what fits the extraction bundles, leaving room for a
    decode task beside the actors."""
    import ray

    from vgray.distributed.extract import default_plan

    if budget["pg"] is None:
        return {**default_plan(ray, actors), "strategy": None, "limits": None}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    cpu, gpu = budget["cpu"], budget["gpu"]
    strategy = PlacementGroupSchedulingStrategy(placement_group=budget["pg"], placement_group_capture_child_tasks=True)
    if gpu > 0:  # one actor per whole GPU (or one on the fraction), the CPUs decode
        n = max(1, int(gpu)) if actors is None else actors
        plan = {"actors": n, "actor_cpus": 0, "actor_gpus": gpu / n, "decode_cpus": min(1.0, cpu) if cpu else 0}
    elif cpu >= 2:
        n = max(1, int(cpu // 2)) if actors is None else min(actors, int(cpu) - 1)
        plan = {"actors": n, "actor_cpus": 1, "actor_gpus": 0, "decode_cpus": 1}
    else:  # one CPU or less: an actor and a decode task share it
        plan = {"actors": 1, "actor_cpus": cpu / 2, "actor_gpus": 0, "decode_cpus": cpu / 2}
    return {**plan, "strategy": strategy, "limits": (cpu, gpu)}


def ray_descriptors(
    cfg,
    model,
    paths: Sequence[str],
    transform,
    features_dim: int,
    skip_corrupt: bool,
    batch_size: int,
    actors: Optional[int] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """Descriptors ``(len(paths), features_dim)`` float32 of ``model`` (its current weights) through
    Ray Data, and a mask of the images read. An unreadable image stops with :class:`BadInput`
    naming it, or with ``skip_corrupt`` is left out (reported, masked)."""
    import ray

    from vgray.data.images import unreadable
    from vgray.distributed.extract import block_rows, pipeline, work_blocks

    budget = _budget()
    if budget is None:
        raise RuntimeError("this placement group has no extraction bundle")
    # Inside a placement group Ray Data plans for the extraction bundles, not the cluster.
    plan = _plan(budget, actors)
    state = ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
    blocks = work_blocks([("x", paths, 0, len(paths))], block_rows(len(paths), batch_size))
    ds = pipeline(cfg, blocks, {"x": transform}, {"state": state}, plan, batch_size, progress)
    del blocks
    out = np.zeros((len(paths), features_dim), dtype=np.float32)
    valid = np.zeros(len(paths), dtype=bool)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        index = batch["index"].astype(np.int64)
        errors = batch["error"]
        ok = np.asarray([not e for e in errors], dtype=bool)
        for i, e in zip(index[~ok], errors[~ok]):
            unreadable(paths[i], e, skip_corrupt, log)
        out[index[ok]] = batch["descriptor"][ok]
        valid[index[ok]] = True
    return out, valid


# -- trials ----------------------------------------------------------------------------------


def _set_sizes(root: str) -> int:
    """The largest database or query set among ``root``'s splits (0 when it cannot be read now:
    the trial will say why)."""
    from vgray.data.dataset import open_split

    biggest = 0
    for split in ("train", "val", "test"):
        try:
            s = open_split(root, split)
        except Exception:
            continue
        biggest = max(biggest, len(s.database), len(s.queries))
    return biggest


@lru_cache(maxsize=64)
def _largest_set(roots: Tuple[str, ...]) -> int:
    return max((_set_sizes(r) for r in roots), default=0)


def wants_ray_data(cfg) -> bool:
    """Whether a trial of ``cfg`` may extract through Ray Data: ``data.ray_threshold`` is 0, or one
    of the sets it reads (train, val and test splits of ``data.root`` and of ``test.datasets``)
    has more images than it."""
    if cfg.data.ray_threshold == 0:
        return True
    roots = tuple(sorted({cfg.data.root, *cfg.test.datasets.values()}))
    return _largest_set(roots) > cfg.data.ray_threshold


# The bundle of a data-parallel trial's own process: it waits on its workers and writes rank 0's files.
GROUP_DRIVER = {"CPU": 0.01}


def trial_bundles(resources: Dict[str, float], cfg) -> list:
    """The placement-group bundles of a trial: the trainer's (``cpu``, ``gpu``, ``memory_gb``), then,
    when the trial may use Ray Data (:func:`wants_ray_data`) and ``extract_cpu`` (default
    :data:`DEFAULT_EXTRACT_CPU`) or ``extract_gpu`` is above 0, one extraction bundle. A GPU trial
    gets one only with ``extract_gpu``: CPU actors would be slower than its own GPU in-process.
    A trial of ``train.workers`` > 1 holds only its group's driver (:data:`GROUP_DRIVER`): Ray Train
    reserves the workers in a placement group of its own (:mod:`vgray.distributed.ddp`), and they
    extract on their own devices."""
    if cfg is not None and cfg.train.workers > 1:
        return [dict(GROUP_DRIVER)]
    trainer = {"CPU": resources.get("cpu", 1), "GPU": resources.get("gpu", 0)}
    if resources.get("memory_gb"):
        trainer["memory"] = resources["memory_gb"] * 2**30
    bundles = [{k: v for k, v in trainer.items() if v}]
    extract = {"CPU": resources.get("extract_cpu", DEFAULT_EXTRACT_CPU), "GPU": resources.get("extract_gpu", 0)}
    extract = {k: v for k, v in extract.items() if v}
    if resources.get("gpu", 0) > 0 and not extract.get("GPU"):
        extract = {}
    if extract and wants_ray_data(cfg):
        bundles.append(extract)
    if not bundles[0]:  # Tune needs a non-empty head bundle
        bundles[0] = {"CPU": 0.001}
    return bundles


def trial_resources(spec) -> Callable[[dict], PlacementGroupFactory]:
    """The per-trial resource request for ``tune.with_resources``: a PlacementGroupFactory (PACK)
    of :func:`trial_bundles` for the trial's config (its first seed)."""
    from ray.tune import PlacementGroupFactory

    from vgray.distributed.spec import decode_trial

    def request(config: dict) -> PlacementGroupFactory:
        trial = decode_trial(config)
        try:
            cfg = trial.config(trial.seeds[0])
        except Exception:  # a config that cannot load: the trial itself reports it
            cfg = None
        bundles = (
            trial_bundles(spec.resources, cfg)
            if cfg is not None
            else trial_bundles({**spec.resources, "extract_cpu": 0, "extract_gpu": 0}, None)
        )
        return PlacementGroupFactory(bundles, strategy="PACK")

    return request


def trial_extractor(cfg, log=None) -> Optional[RayExtractor]:
    """The extractor a trial (or ``vgray train --address``) hands to training: a
    :class:`RayExtractor` when Ray is up, else None (in-process)."""
    import ray

    return RayExtractor(cfg, log=log) if ray.is_initialized() else None
