"""The training loop of the paper's protocol, as one function with a clean boundary.

``train(cfg, out_dir)``: config in; per-epoch metrics and checkpoints out, through files and an
optional ``report(metrics, out_dir)`` callback (Ray Tune's trainable passes one); no globals, no
argparse. An epoch is ``queries_per_epoch`` training queries; every ``cache_refresh_rate`` of them
the mining cache is rebuilt (with the model in eval mode); triplets are trained in batches of
``batch_size``; validation R@N after every epoch; early stopping on val R@5 after ``patience`` epochs
without a gain; ``best.pt`` and ``last.pt`` checkpoints; at the end the best model is tested.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from vgray import checkpoint
from vgray.atomic import write_text
from vgray.data.dataset import open_split, take_paths
from vgray.data.images import SafeDataset, read_image
from vgray.data.transforms import query_train_transform, test_transform, train_database_transform
from vgray.errors import BadInput
from vgray.evaluate.evaluate import check_before_extraction, evaluate_split, final_test, set_key, test_sets
from vgray.evaluate.extract import extract_descriptors, initialize_aggregation, iter_batches
from vgray.models import build_model
from vgray.models.network import check_start
from vgray.runtime import Runtime
from vgray.seeding import seed_everything
from vgray.train.losses import LOSSES, read_losses
from vgray.train.mining import TrainingQueries, Triplet, create_miner
from vgray.train.parallel import ONE, Group, ShardedExtractor, split_batches, sync_batchnorm, wrap
from vgray.train.places import PlaceEpochs
from vgray.train.schedule import LrSchedule, make_optimizer

Report = Callable[[Dict[str, float], Path], None]


class TripletImages(SafeDataset):
    """Item i: the images of triplet i stacked as (2 + N, 3, H, W): query, positive, negatives.
    Queries are augmented; a horizontal flip, when on, turns the whole triplet."""

    def __init__(self, split, triplets: List[Triplet], query_transform, database_transform, flip: bool):
        self.split, self.triplets, self.flip = split, triplets, flip
        self.query_transform, self.database_transform = query_transform, database_transform

    def __len__(self) -> int:
        return len(self.triplets)

    def _paths(self, i: int):
        t = self.triplets[i]
        db = self.split.database.paths
        return [self.split.queries.paths[t.query], db[t.positive], *(db[n] for n in t.negatives)]

    def load(self, i: int) -> torch.Tensor:
        paths = self._paths(i)
        images = torch.stack(
            [self.query_transform(read_image(paths[0]))] + [self.database_transform(read_image(p)) for p in paths[1:]]
        )
        if self.flip and torch.rand(()) < 0.5:
            images = torch.flip(images, dims=[3])
        return images


class LocalDescriptors:
    """The :class:`~vgray.train.mining.DescriptorSource` of training: extracts with the current model,
    through ``extractor`` (the contract of :func:`~vgray.evaluate.evaluate.evaluate_split`; default:
    in this process)."""

    def __init__(self, model, split, transform, rt: Runtime, extractor: Optional[Callable] = None):
        self.model, self.split, self.transform, self.rt = model, split, transform, rt
        self.extractor = extractor or extract_descriptors

    def __call__(self, role: str, indices: np.ndarray) -> np.ndarray:
        images = self.split.database if role == "database" else self.split.queries
        x, valid = self.extractor(
            self.model,
            take_paths(images.paths, indices),
            self.transform,
            self.rt,
            self.model.features_dim,
            desc=f"cache {role}",
        )
        if not valid.all():
            bad = [images.paths[indices[j]] for j in np.flatnonzero(~valid)]
            raise BadInput(f"image {bad[0]} cannot be read; training needs every image (remove it from the dataset)")
        return x


@dataclass
class TrainState:
    epoch: int = 0
    best_r5: float = -1.0
    not_improved: int = 0
    history: List[Dict[str, float]] = field(default_factory=list)
    # training images and seconds in the epochs' steps so far, every process of the run together
    # (train_images_per_s; mining refreshes included): in the checkpoint, so a resumed run goes on counting
    trained: List[float] = field(default_factory=lambda: [0.0, 0.0])


def _quiet(*args) -> None:
    """The log of a worker other than rank 0: rank 0 says it once."""


def _write_text(path: Path, text: str) -> None:
    write_text(path, text)


def _write_metrics(out: Path, history: List[Dict]) -> None:
    """metrics.jsonl rewritten from the history, so a resumed run never holds an epoch twice."""
    _write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))


def _check_memory(cfg, data: TrainingQueries, features_dim: int) -> None:
    budget = cfg.train.memory_budget_mb
    if cfg.train.mining == "full" and budget is not None:
        need = data.database_size * features_dim * 4 / 2**20
        if need > budget:
            raise BadInput(
                f"train.mining=full needs the descriptors of all {data.database_size} database images "
                f"({need:.0f} MB of {features_dim}-d), more than train.memory_budget_mb={budget:g}; "
                f"use train.mining=partial or raise the budget"
            )


class TripletEpochs:
    """The paper's epoch (``train.regime: triplets``): ``queries_per_epoch`` queries, the mining cache
    rebuilt every ``cache_refresh_rate`` of them (model in eval mode), triplets in batches of
    ``batch_size``. The interface :func:`train` runs an epoch through, shared with
    :class:`~vgray.train.places.PlaceEpochs`: ``init_paths``, ``describe``, ``counts``, ``images_per_epoch``, ``timings``,
    ``state_dict``/``load_state_dict`` (the mining cache) and ``run_epoch``."""

    def __init__(self, cfg, model, rt: Runtime, extractor: Optional[Callable] = None, group: Group = ONE):
        self.cfg, self.rt, self.group = cfg, rt, group
        self.split = open_split(cfg.data.root, "train")
        self.data = TrainingQueries(self.split, cfg.train.positive_dist_threshold, cfg.test.positive_dist_threshold)
        _check_memory(cfg, self.data, model.features_dim)
        self.miner = create_miner(cfg.train.mining, self.data, cfg.train)
        size = cfg.data.image_size
        # As the paper's TripletsDataset: triplet images resized as PIL images, the mining cache
        # (its BaseDataset) in the order data.resize_order says (vgray.data.transforms).
        self.db_transform = train_database_transform(size, model.mean, model.std)
        self.q_transform = query_train_transform(size, model.mean, model.std, cfg.train.augmentation)
        cache_transform = test_transform(size, model.mean, model.std, cfg.data.resize_order)
        self.source = LocalDescriptors(model, self.split, cache_transform, rt, extractor)
        self.init_paths = self.split.database.paths
        self.refresh_s = 0.0  # the last epoch's seconds in mining-cache refreshes (:meth:`timings`)

    def describe(self, log) -> None:
        if self.data.dropped:
            log(
                f"training queries without a database image within {self.cfg.train.positive_dist_threshold:g} m: "
                f"{self.data.dropped} of {len(self.split.queries)} dropped"
            )

    def counts(self) -> Dict[str, float]:
        return {"dropped_queries": self.data.dropped}

    def images_per_epoch(self) -> int:
        """Images through the training steps an epoch (the whole group's): a query, a positive and
        the negatives of each triplet."""
        return self.cfg.train.queries_per_epoch * (2 + self.cfg.train.negs_num_per_query)

    def timings(self) -> Dict[str, float]:
        """The last epoch's ``mining_refresh_s``: seconds spent refreshing the mining cache
        (extraction and search). For the ``report`` callback only: a timing differs between runs,
        so it stays out of the history."""
        return {"mining_refresh_s": self.refresh_s}

    def state_dict(self) -> Dict:
        return self.miner.state_dict()

    def load_state_dict(self, state: Dict) -> None:
        self.miner.load_state_dict(state)

    def run_epoch(self, model, optimizer, rng: np.random.Generator, epoch: int) -> List[float]:
        cfg, losses = self.cfg, []
        loops = cfg.train.queries_per_epoch // cfg.train.cache_refresh_rate
        self.refresh_s = 0.0
        for loop in range(loops):
            model.eval()
            queries = self.miner.sample_queries(rng, cfg.train.cache_refresh_rate)
            start = time.perf_counter()
            triplets = self.miner.refresh(self.source, queries, rng)
            self.refresh_s += time.perf_counter() - start
            model.train()
            images = TripletImages(
                self.split, triplets, self.q_transform, self.db_transform, cfg.train.augmentation.horizontal_flip
            )
            desc = f"epoch {epoch + 1} [{loop + 1}/{loops}]"
            if not self.group.active:
                for batch, _ in iter_batches(images, self.rt, desc, shuffle=True, batch_size=cfg.train.batch_size):
                    losses.append(train_step(model, batch, optimizer, self.rt, cfg))
                continue
            # Every worker orders the triplets alike (the shared generator) and takes its part of
            # each global batch, its loss weighted by its share (vgray.train.parallel).
            plan = split_batches(len(images), cfg.train.batch_size, self.group, rng.permutation(len(images)))
            batches = iter_batches(images, self.rt, desc, batches=[mine for mine, _ in plan])
            for (batch, _), (_, weight) in zip(batches, plan):
                losses.append(train_step(model, batch, optimizer, self.rt, cfg, weight, self.group.world))
        return read_losses(losses, self.group)  # one sync an epoch, not one a step


def train(
    cfg,
    out_dir,
    report: Optional[Report] = None,
    resume: bool = False,
    progress: bool = True,
    log=print,
    extractor: Optional[Callable] = None,
) -> Dict[str, float]:
    """Train the model ``cfg`` describes on ``data.root``'s train split; returns the final figures
    (last epoch's metrics, ``test/<dataset>/R@N`` of the best model, cost, time). ``extractor``
    (the contract of :func:`~vgray.evaluate.evaluate.evaluate_split`; default: in this process)
    supplies the descriptors of mining refreshes, validation and the final test. ``report(metrics,
    out_dir)`` follows every epoch; it also receives the epoch's timings (``mining_refresh_s``),
    which the history leaves out."""
    # An aggregation that starts from another's checkpoint (CRN from NetVLAD): refused before any data is read.
    start = cfg.model.resume_from
    made = checkpoint.made_for(checkpoint.read_checkpoint(start, "model.resume_from")) if start else None
    check_start(cfg.model, made, f"model.resume_from={start}")
    out = Path(out_dir)
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and not last_path.is_file():
        raise BadInput(f"--resume: {last_path} does not exist; nothing to resume")
    ck = checkpoint.load(last_path) if resume else None  # every entry checked before any data is read
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # alike on every worker of a group: mining and sampling agree
    group = Group.current()  # one worker, or one of train.workers (vgray.train.parallel)
    if group.active:
        extractor = ShardedExtractor(group, extractor)
        progress = progress and group.main
        log = log if group.main else _quiet
    rt = Runtime.from_config(cfg, progress=progress)
    val_key = "data.val_root" if cfg.data.val_root else "data.root"
    val_split = open_split(cfg.data.val_root or cfg.data.root, "val", cfg.data.msls_queries, val_key)
    sets = test_sets(cfg)
    for name, root in sets.items():  # fail on a bad test set now, not after hours of training
        open_split(root, "test", cfg.data.msls_queries, set_key(cfg, name)).check_positives(cfg.test.positives)

    # Built before the optimizer, so that its state lands on the device too.
    model = build_model(cfg.model, image_size=cfg.data.image_size).to(rt.device)
    sync_batchnorm(model, group, cfg.train.sync_bn)
    # The regime's training data, opened (and refused) before anything is written.
    regime = (
        PlaceEpochs(cfg, model, rt, group)
        if cfg.train.regime == "places"
        else TripletEpochs(cfg, model, rt, extractor, group)
    )
    check_before_extraction(cfg, model)  # test.knn and model.pca_dim now, not after training
    val_cfg = _validation_config(cfg)
    optimizer, state = _start(model, regime, cfg, rt, rng, group, last_path, ck, log)
    net = wrap(model, group)  # what the steps run: DDP over the group, else the network itself
    schedule = LrSchedule(optimizer, cfg.train)  # after any load: a resumed run's base rates and step counts
    if group.main:
        _write_text(out / "config.yaml", cfg.to_yaml())  # the config this run (or resumed run) uses
        regime.describe(log)

    start_time = time.perf_counter() - (state.history[-1]["train_time_s"] if state.history else 0.0)
    while state.epoch < cfg.train.epochs and state.not_improved < cfg.train.patience:
        schedule.epoch = state.epoch
        epoch_start = time.perf_counter()
        losses = regime.run_epoch(net, optimizer, rng, state.epoch)
        epoch_s = time.perf_counter() - epoch_start
        state.trained = [state.trained[0] + regime.images_per_epoch(), state.trained[1] + epoch_s]
        state.epoch += 1
        val = evaluate_split(model, val_split, val_cfg, rt=rt, progress=False, extractor=extractor)
        improved = val["R@5"] > state.best_r5
        state.best_r5 = max(state.best_r5, val["R@5"])
        state.not_improved = 0 if improved else state.not_improved + 1
        metrics = {
            "epoch": state.epoch,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            **{f"val/{k}": v for k, v in val.items() if k.startswith("R@")},
            "best_val/R@5": state.best_r5,
            "train_time_s": time.perf_counter() - start_time,
            **regime.counts(),
        }
        state.history.append(metrics)
        payload = _payload(model, optimizer, regime, state, rng, cfg, group)
        if not group.main:  # rank 0 alone writes and reports
            continue
        checkpoint.save(last_path, payload)
        if improved:
            checkpoint.save(best_path, payload)
        _write_metrics(out, state.history)
        log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
        if report is not None:
            speed = {"train_images_per_s": regime.images_per_epoch() / max(epoch_s, 1e-9)}
            report({**metrics, **regime.timings(), **speed}, out)

    weights = best_path if best_path.is_file() else last_path
    result = _final_test(cfg, model, weights, sets, rt, state, log, extractor, group)
    result["workers"] = group.world
    if state.trained[1] > 0:  # the whole group's training images a second (mining refreshes included)
        result["train_images_per_s"] = state.trained[0] / state.trained[1]
    return result


def _start(
    model, regime, cfg, rt: Runtime, rng, group: Group, last_path: Path, ck: Optional[Dict], log
) -> Tuple[torch.optim.Optimizer, TrainState]:
    """The optimizer and training state a run starts with: from the checkpoint ``ck`` when resuming,
    else fresh (the aggregation initialised on rank 0, a first ``last.pt`` written)."""
    if ck is not None:
        optimizer, state = _resume(model, ck, last_path, cfg, regime, rng, group)
        log(f"resuming {last_path.parent} after epoch {state.epoch} (best val R@5 {state.best_r5:.2f})")
        return optimizer, state
    last_path.parent.mkdir(parents=True, exist_ok=True)
    if model.needs_init() and group.main:  # the others take rank 0's weights (wrap)
        db_transform = test_transform(cfg.data.image_size, model.mean, model.std, cfg.data.resize_order)
        initialize_aggregation(model, regime.init_paths, db_transform, rt, seed=cfg.seed)
    optimizer = make_optimizer(model, cfg.train)
    if group.active:  # augmentations: a stream per worker (the shared numpy generator stays alike)
        torch.manual_seed(cfg.seed + group.rank)
    state = TrainState()
    # A checkpoint before the first epoch: an interrupted run always leaves a loadable last.pt.
    payload = _payload(model, optimizer, regime, state, rng, cfg, group)
    if group.main:
        checkpoint.save(last_path, payload)
    return optimizer, state


def _validation_config(cfg):
    """Validation as the paper's: hard_resize, exact search, no PCA (the final test applies them)."""
    return cfg.replace(
        **{
            "test.recall_values": sorted(set(cfg.test.recall_values) | {5}),
            "test.memory_budget_mb": None,
            "test.knn": "Flat",
            "test.method": "hard_resize",
            "model.pca_dim": None,
        }
    )


def _resume(
    model, ck: Dict, last_path: Path, cfg, regime, rng, group: Group = ONE
) -> Tuple[torch.optim.Optimizer, "TrainState"]:
    """The model, a new optimizer, the regime's mining or sampler state and the RNG set from the
    checkpoint ``ck`` (read from ``last_path``); returns the optimizer and the training state. A
    worker of a group takes its own RNG streams when the checkpoint has one per worker of a group
    of this size (else rank 0's: a run resumed on another number of workers draws anew)."""
    _load_model(model, ck, last_path)
    optimizer = make_optimizer(model, cfg.train)
    try:  # the structure was checked by checkpoint.load; whether it fits this optimizer is torch's word
        optimizer.load_state_dict(ck["optimizer"])
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BadInput(
            f"checkpoint {last_path}: optimizer does not fit this config's train.optimizer="
            f"{cfg.train.optimizer} ({(str(exc).splitlines() or [type(exc).__name__])[0][:160]})"
        )
    regime.load_state_dict(ck["mining"])
    ranks = ck.get("rng_ranks") or []
    checkpoint.set_rng_state(ranks[group.rank] if len(ranks) == group.world > 1 else ck["rng"], rng)
    trained = ck.get("trained") or []
    state = TrainState(ck["epoch"], ck["best_r5"], ck["not_improved"], list(ck["history"]))
    if len(trained) == 2 and all(isinstance(v, (int, float)) for v in trained):  # (older checkpoints: none)
        state.trained = [float(v) for v in trained]
    return optimizer, state


def train_step(
    model, images: torch.Tensor, optimizer, rt: Runtime, cfg, weight: float = 1.0, world: int = 1
) -> torch.Tensor:
    """One optimizer step on a batch of triplets ``images`` (B, 2 + N, 3, H, W): query, positive,
    negatives (the layout of :class:`TripletImages`); returns the loss, a 0-d tensor on the device
    (not read here: reading it would wait for the device every step; see :func:`read_losses`).
    On one of ``world`` workers the loss is weighted by this worker's share of the global batch
    (:func:`vgray.train.parallel.split_batches`), and the value returned is this worker's part of
    the global batch's loss (the workers' parts sum to it)."""
    b, per, c, h, w = images.shape
    x = rt.to_device(images.view(b * per, c, h, w))
    with rt.autocast():
        features = model(x)
    features = features.float().view(b, per, -1)
    loss = LOSSES.create(cfg.train.criterion, features[:, 0], features[:, 1], features[:, 2:], margin=cfg.train.margin)
    optimizer.zero_grad(set_to_none=True)
    (loss * weight if weight != 1.0 else loss).backward()
    optimizer.step()
    return loss.detach() * (weight / world) if world > 1 else loss.detach()


def _payload(model, optimizer, regime, state: TrainState, rng, cfg, group: Group = ONE) -> Dict:
    """What a checkpoint holds; in a group, every worker's RNG streams (``rng_ranks``, gathered:
    every worker calls this), so that a resumed run draws as the interrupted one would have."""
    ranks = group.gather_objects(checkpoint.rng_state(rng)) if group.active else None
    return {
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "mining": regime.state_dict(),
        "epoch": state.epoch,
        "best_r5": state.best_r5,
        "not_improved": state.not_improved,
        "history": state.history,
        "trained": list(state.trained),
        "rng": checkpoint.rng_state(rng),
        **({"rng_ranks": ranks} if ranks else {}),
        "config": cfg.to_dict(),
    }


def _load_model(model, ck: Dict, path: Path) -> None:
    made = checkpoint.made_for(ck)
    checkpoint.load_fitting(
        model,
        ck["model"],
        f"checkpoint {path} was made for backbone={made.get('backbone')}, "
        f"aggregation={made.get('aggregation')} and does not fit this "
        f"config's network",
    )


def _final_test(
    cfg,
    model,
    weights: Path,
    sets: Dict[str, str],
    rt,
    state: TrainState,
    log,
    extractor: Optional[Callable] = None,
    group: Group = ONE,
) -> Dict:
    """The best weights tested on every test set, merged with the last epoch's metrics and ``epochs``
    (in a group: rank 0 reads them, every worker gets them, the extraction is split)."""
    if group.main:
        model.load_state_dict(checkpoint.load(weights)["model"])
    group.broadcast_state(model)
    result = dict(state.history[-1]) if state.history else {}
    result["epochs"] = state.epoch
    result.update(final_test(cfg, model, rt, sets, extractor_for=lambda _: extractor, log=log))
    return result
