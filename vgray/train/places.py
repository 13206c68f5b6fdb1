"""Place-batched training (``train.regime: places``), as GSV-Cities / MixVPR train (Ali-bey et al.).

A batch is P places (``train.places_per_batch``) x K images each (``train.images_per_place``); the
descriptors and their place labels go to a pytorch-metric-learning miner and loss (multi-similarity
with the publisher's settings by default), so mining happens inside the batch: no offline cache.

Place labels come from the GSV-Cities layout (:mod:`vgray.data.gsv_cities`) or, for a VG-format
training split, from the UTM grid (:func:`grid_places`): cells of ``train.place_size_m`` metres;
an image (database or query) belongs to the cell it lies in, and counts only when it lies within
the soft-positive radius (``test.positive_dist_threshold``) of the cell's centre; cells with fewer
than K images are dropped and counted. :class:`PlaceEpochs` is the regime's epoch, which
:func:`vgray.train.loop.train` runs inside its one loop (validation, checkpoints, early stopping).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import torch

from vgray.data.dataset import open_split
from vgray.data.gsv_cities import PlaceSet, read_gsv_cities
from vgray.data.images import SafeDataset, read_image
from vgray.data.transforms import query_train_transform
from vgray.errors import BadInput
from vgray.evaluate.extract import iter_batches
from vgray.registry import PLACE_LOSSES, PLACE_MINERS
from vgray.runtime import Runtime
from vgray.train.losses import read_losses


# -- losses and miners: pytorch-metric-learning, with the GSV-Cities publisher's settings ---------

@PLACE_LOSSES.register("multi_similarity")
def multi_similarity_loss(train_cfg):
    from pytorch_metric_learning import distances, losses
    return losses.MultiSimilarityLoss(alpha=train_cfg.ms_alpha, beta=train_cfg.ms_beta, base=train_cfg.ms_base,
                                      distance=distances.DotProductSimilarity())


@PLACE_LOSSES.register("contrastive")
def contrastive_loss(train_cfg):
    from pytorch_metric_learning import losses
    return losses.ContrastiveLoss(pos_margin=0, neg_margin=1)


@PLACE_LOSSES.register("triplet")
def triplet_loss(train_cfg):
    from pytorch_metric_learning import losses
    return losses.TripletMarginLoss(margin=train_cfg.margin, swap=False, smooth_loss=False, triplets_per_anchor="all")


@PLACE_LOSSES.register("circle")
def circle_loss(train_cfg):
    from pytorch_metric_learning import losses
    return losses.CircleLoss(m=0.4, gamma=80)


@PLACE_MINERS.register("multi_similarity")
def multi_similarity_miner(train_cfg):
    from pytorch_metric_learning import distances, miners
    return miners.MultiSimilarityMiner(epsilon=train_cfg.miner_margin, distance=distances.CosineSimilarity())


@PLACE_MINERS.register("triplet_margin")
def triplet_margin_miner(train_cfg):
    from pytorch_metric_learning import miners
    return miners.TripletMarginMiner(margin=train_cfg.miner_margin, type_of_triplets="semihard")


@PLACE_MINERS.register("pair_margin")
def pair_margin_miner(train_cfg):
    from pytorch_metric_learning import distances, miners
    return miners.PairMarginMiner(pos_margin=0.7, neg_margin=0.3, distance=distances.DotProductSimilarity())


@PLACE_MINERS.register("none")
def no_miner(train_cfg):
    return None


# -- place labels ------------------------------------------------------------------------------

def grid_places(paths: List[str], utm: np.ndarray, size: float, radius: float, min_images: int,
                heading_deg: Optional[float] = None, headings: Optional[np.ndarray] = None) -> PlaceSet:
    """Places of a VG-format image set from the UTM grid: cells of ``size`` metres (origin 0, 0);
    an image joins its cell when within ``radius`` metres of the cell's centre; with ``heading_deg``,
    a place is a cell and a heading bin of that width (``heading mod 360 // heading_deg``, as CosPlace
    splits its classes), so that a place's images look the same way. Places with fewer than
    ``min_images`` such images are dropped (counted in ``dropped``). Labels follow the places'
    (east, north[, bin]) order. ``headings`` (degrees, NaN where unknown) are the images' own, as the
    index read them from the VG names (:attr:`vgray.data.dataset.ImageSet.headings`); with
    ``heading_deg`` every image needs one (BadInput naming the first without)."""
    utm = np.asarray(utm, dtype=np.float64).reshape(-1, 2)
    cell = np.floor(utm / size).astype(np.int64)
    centre = (cell + 0.5) * size
    inside = np.linalg.norm(utm - centre, axis=1) <= radius
    if heading_deg is not None:
        h = np.full(len(paths), np.nan) if headings is None else np.asarray(headings, dtype=np.float64).reshape(-1)
        missing = np.flatnonzero(~np.isfinite(h))
        if len(missing):
            raise BadInput(f"image {paths[missing[0]]}: train.place_heading_deg needs the heading field of the VG file "
                           f"name (@east@north@zone@letter@lat@lon@pano@tile@heading@…), a finite number of degrees; "
                           f"set it to null for images without one")
        bins = np.floor((h % 360.0) / heading_deg).astype(np.int64)
        cell = np.concatenate([cell, bins.reshape(-1, 1)], axis=1)
    cells, inverse, counts = np.unique(cell[inside], axis=0, return_inverse=True, return_counts=True)
    kept = counts >= min_images
    label_of_cell = np.full(len(cells), -1, dtype=np.int64)
    label_of_cell[kept] = np.arange(int(kept.sum()))
    labels = np.full(len(utm), -1, dtype=np.int64)
    labels[inside] = label_of_cell[inverse.reshape(-1)]
    keep = np.flatnonzero(labels >= 0)
    return PlaceSet(paths=[paths[i] for i in keep], labels=labels[keep], dropped=int((~kept).sum()))


def open_places(cfg) -> PlaceSet:
    """The training places ``cfg`` names (``data.layout``), refused when fewer than P x K images'
    worth of places: P distinct places of K images each are what a batch needs."""
    k, p = cfg.train.images_per_place, cfg.train.places_per_batch
    if cfg.data.layout == "gsv_cities":
        places = read_gsv_cities(cfg.data.root, k)
    else:
        split = open_split(cfg.data.root, "train")
        headings = [s.headings if s.headings is not None else np.full(len(s), np.nan)
                    for s in (split.database, split.queries)]
        places = grid_places(split.database.paths + split.queries.paths,
                             np.concatenate([split.database.utm, split.queries.utm]),
                             cfg.train.place_size_m, cfg.test.positive_dist_threshold, k, cfg.train.place_heading_deg,
                             headings=np.concatenate(headings))
    if places.n_places < p:
        raise BadInput(f"train.places_per_batch={p} x train.images_per_place={k}: {cfg.data.root} has only "
                       f"{places.n_places} places of {k} or more images ({places.dropped} smaller dropped); "
                       f"lower train.places_per_batch to at most {places.n_places}"
                       + ("" if cfg.data.layout == "gsv_cities" else " or change train.place_size_m / place_heading_deg"))
    return places


# -- the sampler -------------------------------------------------------------------------------

def sample_batches(members: List[np.ndarray], p: int, k: int, n_batches: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_batches, p, k)`` image indices: each batch P distinct places (the places shuffled, then
    taken in turn, reshuffled when used up), K distinct images of each drawn at random."""
    out = np.empty((n_batches, p, k), dtype=np.int64)
    order: List[int] = []
    for b in range(n_batches):
        if len(order) < p:
            order = list(rng.permutation(len(members)))
        chosen, order = order[:p], order[p:]
        for j, place in enumerate(chosen):
            out[b, j] = rng.choice(members[place], size=k, replace=False)
    return out


class PlaceImages(SafeDataset):
    """Item i: place draw i of an epoch as (K, 3, H, W), each image through ``transform``; with
    ``flip``, the place's K images are flipped horizontally together with probability 0.5 (as the
    triplet regime flips a whole triplet)."""

    def __init__(self, paths: List[str], draws: np.ndarray, transform, flip: bool = False):
        self.paths, self.draws, self.transform, self.flip = paths, draws, transform, flip

    def __len__(self) -> int:
        return len(self.draws)

    def _paths(self, i: int):
        return [self.paths[j] for j in self.draws[i]]

    def load(self, i: int) -> torch.Tensor:
        images = torch.stack([self.transform(read_image(p)) for p in self._paths(i)])
        if self.flip and torch.rand(()) < 0.5:
            images = torch.flip(images, dims=[3])
        return images


def place_step(model, images: torch.Tensor, labels: torch.Tensor, loss_fn, miner, optimizer,
               rt: Runtime) -> torch.Tensor:
    """One optimizer step on a batch of places ``images`` (P, K, 3, H, W) with place ``labels`` (P,);
    returns the loss, a 0-d tensor on the device (read once an epoch: :func:`read_losses`)."""
    p, k, c, h, w = images.shape
    with rt.autocast():
        features = model(rt.to_device(images.view(p * k, c, h, w)))
    features = features.float()
    y = labels.repeat_interleave(k).to(features.device)
    loss = loss_fn(features, y, miner(features, y)) if miner is not None else loss_fn(features, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


class PlaceEpochs:
    """The places regime's epoch for :func:`vgray.train.loop.train`: ``batches_per_epoch`` batches
    (default: every place once) of P places x K images, the loss and miner of ``train.pml_*``."""

    def __init__(self, cfg, model, rt: Runtime):
        self.cfg, self.rt = cfg, rt
        self.places = open_places(cfg)
        self.members = self.places.members()
        t = cfg.train
        self.batches = t.batches_per_epoch or max(1, self.places.n_places // t.places_per_batch)
        self.loss_fn = PLACE_LOSSES.create(t.pml_loss, t)
        self.miner = PLACE_MINERS.create(t.pml_miner, t)
        self.transform = query_train_transform(cfg.data.image_size, model.mean, model.std, t.augmentation)
        self.init_paths = self.places.paths  # a NetVLAD's clusters start from the training images

    def describe(self, log) -> None:
        log(f"places regime: {self.places.n_places} places of {self.cfg.train.images_per_place}+ images "
            f"({len(self.places.paths)} images; {self.places.dropped} smaller places dropped), "
            f"{self.batches} batches of {self.cfg.train.places_per_batch} places an epoch")

    def counts(self) -> Dict[str, float]:
        return {"places": self.places.n_places, "dropped_places": self.places.dropped}

    def state_dict(self) -> Dict:
        return {}  # nothing cached: the sampler draws from the run's RNG, saved with the checkpoint

    def load_state_dict(self, state: Dict) -> None:
        pass

    def run_epoch(self, model, optimizer, rng: np.random.Generator, epoch: int) -> List[float]:
        t = self.cfg.train
        draws = sample_batches(self.members, t.places_per_batch, t.images_per_place, self.batches, rng)
        labels = torch.as_tensor(self.places.labels[draws[:, :, 0].reshape(-1)])
        images = PlaceImages(self.places.paths, draws.reshape(-1, t.images_per_place), self.transform,
                             t.augmentation.horizontal_flip)
        model.train()
        losses = []
        for batch, indices in iter_batches(images, self.rt, desc=f"epoch {epoch + 1}", shuffle=False,
                                           batch_size=t.places_per_batch):
            losses.append(place_step(model, batch, labels[torch.as_tensor(indices)], self.loss_fn, self.miner,
                                     optimizer, self.rt))
        return read_losses(losses)  # one sync an epoch, not one a step
