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
from vgray.train.parallel import ONE, Group

# -- losses and miners: pytorch-metric-learning, with the GSV-Cities publisher's settings ---------


@PLACE_LOSSES.register("multi_similarity")
def multi_similarity_loss(train_cfg):
    """Multi-similarity loss on dot-product similarity (``train.ms_alpha``, ``ms_beta``, ``ms_base``)."""
    from pytorch_metric_learning import distances, losses

    return losses.MultiSimilarityLoss(
        alpha=train_cfg.ms_alpha,
        beta=train_cfg.ms_beta,
        base=train_cfg.ms_base,
        distance=distances.DotProductSimilarity(),
    )


@PLACE_LOSSES.register("contrastive")
def contrastive_loss(train_cfg):
    """Contrastive loss, positive margin 0 and negative margin 1."""
    from pytorch_metric_learning import losses

    return losses.ContrastiveLoss(pos_margin=0, neg_margin=1)


@PLACE_LOSSES.register("triplet")
def triplet_loss(train_cfg):
    """Triplet margin loss (``train.margin``) over every triplet of the batch."""
    from pytorch_metric_learning import losses

    return losses.TripletMarginLoss(margin=train_cfg.margin, swap=False, smooth_loss=False, triplets_per_anchor="all")


@PLACE_LOSSES.register("circle")
def circle_loss(train_cfg):
    """Circle loss (m 0.4, gamma 80)."""
    from pytorch_metric_learning import losses

    return losses.CircleLoss(m=0.4, gamma=80)


@PLACE_MINERS.register("multi_similarity")
def multi_similarity_miner(train_cfg):
    """Multi-similarity miner on cosine similarity (epsilon ``train.miner_margin``)."""
    from pytorch_metric_learning import distances, miners

    return miners.MultiSimilarityMiner(epsilon=train_cfg.miner_margin, distance=distances.CosineSimilarity())


@PLACE_MINERS.register("triplet_margin")
def triplet_margin_miner(train_cfg):
    """Semi-hard triplets within ``train.miner_margin``."""
    from pytorch_metric_learning import miners

    return miners.TripletMarginMiner(margin=train_cfg.miner_margin, type_of_triplets="semihard")


@PLACE_MINERS.register("pair_margin")
def pair_margin_miner(train_cfg):
    """Pairs that break the margins (positives below 0.7, negatives above 0.3 dot-product similarity)."""
    from pytorch_metric_learning import distances, miners

    return miners.PairMarginMiner(pos_margin=0.7, neg_margin=0.3, distance=distances.DotProductSimilarity())


@PLACE_MINERS.register("none")
def no_miner(train_cfg):
    """No mining: the loss sees every pair of the batch."""
    return None


# -- place labels ------------------------------------------------------------------------------


def grid_places(
    paths: List[str],
    utm: np.ndarray,
    size: float,
    radius: float,
    min_images: int,
    heading_deg: Optional[float] = None,
    headings: Optional[np.ndarray] = None,
) -> PlaceSet:
    """Places of a VG-format image set from the UTM grid: cells of ``size`` metres (origin 0, 0);
    an image joins its cell when within ``radius`` metres of the cell's centre; with ``heading_deg``,
    a place is a cell and a heading bin of that width, so that a place's images look the same way
    (CosPlace's classes); the bins are centred on 0, ``heading_deg``, 2 x ``heading_deg``... degrees
    (``(heading + heading_deg / 2) mod 360 // heading_deg``), not started there as CosPlace's
    ``heading // alpha`` is: a capture along streets looks along a few headings (a north-aligned
    grid's 0/90/180/270), and bins starting at those headings would put a view 5 degrees left of one
    in the bin of the view 90 degrees to its left. Places with fewer than
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
            raise BadInput(
                f"image {paths[missing[0]]}: train.place_heading_deg needs the heading field of the VG file "
                f"name (@east@north@zone@letter@lat@lon@pano@tile@heading@…), a finite number of degrees; "
                f"set it to null for images without one"
            )
        bins = np.floor(((h + heading_deg / 2.0) % 360.0) / heading_deg).astype(np.int64)
        cell = np.concatenate([cell, bins.reshape(-1, 1)], axis=1)
    cells, inverse, counts = np.unique(cell[inside], axis=0, return_inverse=True, return_counts=True)
    kept = counts >= min_images
    label_of_cell = np.full(len(cells), -1, dtype=np.int64)
    label_of_cell[kept] = np.arange(int(kept.sum()))
    labels = np.full(len(utm), -1, dtype=np.int64)
    labels[inside] = label_of_cell[inverse.reshape(-1)]
    keep = np.flatnonzero(labels >= 0)
    n_bins = int(np.ceil(360.0 / heading_deg)) if heading_deg is not None else 0
    return PlaceSet(
        paths=[paths[i] for i in keep],
        labels=labels[keep],
        dropped=int((~kept).sum()),
        neighbours=grid_neighbours(cells[kept], int(np.ceil(radius / size)), n_bins),
    )


def grid_neighbours(keys: np.ndarray, reach: int, n_bins: int = 0) -> List[np.ndarray]:
    """Per grid place (``keys``: its cell's (east, north) indices, then its heading bin when
    ``n_bins``), the other places it must not share a batch with: those whose cells lie within
    ``reach`` cells in both directions (``ceil(radius / size)``: beyond, a whole ``radius`` of ground
    separates any two of their images, so neither can be the other's positive) and, with heading
    bins, whose bin is the same or next to it (circularly). In a batch such a pair is a negative
    pair that looks like a positive one (the next cell along a street, looking the same way), the
    confusion CosPlace's groups avoid. Vectorised: one sorted search per neighbour offset."""
    keys = np.asarray(keys, dtype=np.int64).reshape(len(keys), -1)
    if not len(keys):
        return []
    lo = keys.min(0) - reach - 1
    span = keys.max(0) - lo + reach + 2
    if n_bins:
        lo[2], span[2] = 0, n_bins

    def code(k):
        return np.ravel_multi_index(tuple((k - lo).T), tuple(span))

    codes = code(keys)
    order = np.argsort(codes)
    sorted_codes = codes[order]
    found: List[np.ndarray] = []
    d_bins = sorted({(-1) % n_bins, 0, 1 % n_bins}) if n_bins else [None]
    for de in range(-reach, reach + 1):
        for dn in range(-reach, reach + 1):
            for db in d_bins:
                shifted = keys.copy()
                shifted[:, 0] += de
                shifted[:, 1] += dn
                if db is not None:
                    shifted[:, 2] = (keys[:, 2] + db) % n_bins
                at = np.searchsorted(sorted_codes, code(shifted))
                at = np.minimum(at, len(codes) - 1)
                hit = sorted_codes[at] == code(shifted)
                mine, theirs = np.flatnonzero(hit), order[at[hit]]
                other = mine != theirs
                found.append(np.stack([mine[other], theirs[other]], axis=1))
    pairs = np.unique(np.concatenate(found), axis=0)
    bounds = np.searchsorted(pairs[:, 0], np.arange(len(keys) + 1))
    return [pairs[a:b, 1] for a, b in zip(bounds[:-1], bounds[1:])]


def open_places(cfg) -> PlaceSet:
    """The training places ``cfg`` names (``data.layout``), refused when fewer than P x K images'
    worth of places: P distinct places of K images each are what a batch needs."""
    k, p = cfg.train.images_per_place, cfg.train.places_per_batch
    if cfg.data.layout == "gsv_cities":
        places = read_gsv_cities(cfg.data.root, k)
    else:
        split = open_split(cfg.data.root, "train")
        headings = [
            s.headings if s.headings is not None else np.full(len(s), np.nan) for s in (split.database, split.queries)
        ]
        places = grid_places(
            [*split.database.paths, *split.queries.paths],
            np.concatenate([split.database.utm, split.queries.utm]),
            cfg.train.place_size_m,
            cfg.test.positive_dist_threshold,
            k,
            cfg.train.place_heading_deg,
            headings=np.concatenate(headings),
        )
    apart: List[int] = []
    if places.neighbours is not None and places.n_places >= p:
        _fill(apart, range(places.n_places), p, np.zeros(places.n_places, dtype=bool), places.neighbours)
        if len(apart) < p:
            raise BadInput(
                f"train.places_per_batch={p}: {cfg.data.root} has {places.n_places} places of {k} or more "
                f"images, and a batch takes no two whose images may lie within test.positive_dist_threshold="
                f"{cfg.test.positive_dist_threshold:g} m of each other looking the same way: only "
                f"{len(apart)} such places were found; lower train.places_per_batch to at most {len(apart)}"
            )
    if places.n_places < p:
        raise BadInput(
            f"train.places_per_batch={p} x train.images_per_place={k}: {cfg.data.root} has only "
            f"{places.n_places} places of {k} or more images ({places.dropped} smaller dropped); "
            f"lower train.places_per_batch to at most {places.n_places}"
            + ("" if cfg.data.layout == "gsv_cities" else " or change train.place_size_m / place_heading_deg")
        )
    return places


# -- the sampler -------------------------------------------------------------------------------

PROXY_DIM = 256
"""Width of the place proxies of ``train.place_batching: proxy``: descriptors wider than this are
projected by a fixed Gaussian matrix (a cosine moves by about 1 / sqrt(256) = 0.06, one standard
deviation), so that choosing a batch among GSV-Cities' 62,000 places costs one 62,000 x 256
product rather than one as wide as the descriptor (8,448 for SALAD)."""


def _fill(chosen: List[int], candidates, p: int, blocked: np.ndarray, neighbours) -> None:
    """Append to ``chosen`` the ``candidates`` (in order) that no chosen place blocks, until P."""
    for place in candidates:
        if len(chosen) == p:
            return
        if not blocked[place]:
            chosen.append(int(place))
            blocked[place] = True
            if neighbours is not None:
                blocked[neighbours[place]] = True


def _complete(chosen: List[int], p: int, n_places: int, neighbours, rng: np.random.Generator) -> None:
    """When the places left this round cannot give P apart: any places apart from ``chosen``, then
    (only when the set has no P places apart at all, which :func:`open_places` refuses) any others."""
    if len(chosen) == p:
        return
    blocked = np.zeros(n_places, dtype=bool)  # what the batch so far rules out: its places, their neighbours
    blocked[chosen] = True
    for place in chosen if neighbours is not None else ():
        blocked[neighbours[place]] = True
    _fill(chosen, rng.permutation(n_places), p, blocked, neighbours)
    if len(chosen) < p:
        taken = np.zeros(n_places, dtype=bool)
        taken[chosen] = True
        _fill(chosen, rng.permutation(n_places), p, taken, None)


def random_place_batches(
    n_places: int, p: int, n_batches: int, rng: np.random.Generator, neighbours: Optional[List[np.ndarray]] = None
) -> np.ndarray:
    """``(n_batches, p)`` place indices, GSV-Cities' order: the places shuffled, then taken in turn,
    reshuffled when used up; with ``neighbours``, a place whose neighbour the batch holds waits for
    the next batch."""
    out = np.empty((n_batches, p), dtype=np.int64)
    order: List[int] = []
    for b in range(n_batches):
        if len(order) < p:
            order = list(rng.permutation(n_places))
        if neighbours is None:
            chosen, order = order[:p], order[p:]
        else:
            chosen = []
            _fill(chosen, order, p, np.zeros(n_places, dtype=bool), neighbours)
            taken = set(chosen)
            order = [place for place in order if place not in taken]
            _complete(chosen, p, n_places, neighbours, rng)
        out[b] = chosen
    return out


def proxy_place_batches(
    proxies: np.ndarray, p: int, n_batches: int, rng: np.random.Generator, neighbours: Optional[List[np.ndarray]] = None
) -> np.ndarray:
    """``(n_batches, p)`` place indices, each row a place and its P-1 nearest places by proxy (the
    rows of ``proxies``, unit vectors; inner product) among those no batch has taken yet (and, with
    ``neighbours``, none next to a place already in the batch), the first place of each batch taken
    in a random order; every place is used once before any repeats, as GPM builds its batches
    (Ali-bey et al., "Global Proxy-based Hard Mining for Visual Place Recognition", BMVC 2022)."""
    n = len(proxies)
    out = np.empty((n_batches, p), dtype=np.int64)
    available = np.zeros(n, dtype=bool)
    order, pos = np.arange(0), 0
    for b in range(n_batches):
        if available.sum() < p:
            available[:] = True
            order, pos = rng.permutation(n), 0
        while not available[order[pos]]:
            pos += 1
        anchor = order[pos]
        sims = proxies @ proxies[anchor]
        sims[anchor] = np.inf  # the anchor first, whatever its proxy
        candidates = np.flatnonzero(available)
        candidates = candidates[np.argsort(-sims[candidates], kind="stable")]
        chosen: List[int] = []
        _fill(chosen, candidates, p, ~available, neighbours)
        _complete(chosen, p, n, neighbours, rng)
        out[b] = chosen
        available[chosen] = False
    return out


def sample_batches(
    members: List[np.ndarray],
    p: int,
    k: int,
    n_batches: int,
    rng: np.random.Generator,
    proxies: Optional[np.ndarray] = None,
    neighbours: Optional[List[np.ndarray]] = None,
) -> np.ndarray:
    """``(n_batches, p, k)`` image indices: each batch P distinct places, no two of them neighbours
    (``neighbours``: :func:`grid_neighbours`), K distinct images of each drawn at random. The places
    by :func:`random_place_batches`, or with ``proxies`` (one unit row a place) by
    :func:`proxy_place_batches`."""
    if proxies is not None:
        places = proxy_place_batches(proxies, p, n_batches, rng, neighbours)
    else:
        places = random_place_batches(len(members), p, n_batches, rng, neighbours)
    out = np.empty((n_batches, p, k), dtype=np.int64)
    for b in range(n_batches):
        for j, place in enumerate(places[b]):
            out[b, j] = rng.choice(members[place], size=k, replace=False)
    return out


class PlaceProxies:
    """The places' proxies for ``train.place_batching: proxy``: each place's mean (L2-normalised)
    descriptor over its images in the last epoch's training steps, taken from the steps' own forward
    passes (no extra extraction), projected to :data:`PROXY_DIM` when wider, and L2-normalised. GPM
    learns a separate proxy head; vgray takes the descriptor itself, which needs nothing trained. A
    place that no epoch has drawn yet gets a random unit proxy, so it joins batches at random."""

    def __init__(self, n_places: int, seed: int):
        self.n_places, self.seed = n_places, seed
        self.proxies: Optional[np.ndarray] = None  # (n_places, d): what the next epoch batches by
        self.projection: Optional[torch.Tensor] = None
        self._sums: Optional[torch.Tensor] = None  # (n_places, d): this epoch's sums of descriptors
        self._counts: Optional[torch.Tensor] = None  # (n_places,): and of images; set with _sums

    def start_epoch(self) -> None:
        self._sums = self._counts = None

    def add(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a step's descriptors (N, D) of places ``labels`` (N,), on the device, without a sync."""
        features = torch.nn.functional.normalize(features.detach().float(), dim=1)
        if self.projection is None:
            d = features.shape[1]
            if d > PROXY_DIM:
                g = torch.Generator().manual_seed(self.seed)
                self.projection = torch.randn(d, PROXY_DIM, generator=g) / PROXY_DIM**0.5
            else:
                self.projection = torch.eye(d)
            self.projection = self.projection.to(features.device)
        projection = self.projection
        if self._sums is None:
            self._sums = torch.zeros(self.n_places, projection.shape[1], device=features.device)
            self._counts = torch.zeros(self.n_places, device=features.device)
        assert self._counts is not None  # set with _sums
        self._sums.index_add_(0, labels, features @ projection)
        self._counts.index_add_(0, labels, torch.ones(len(labels), device=features.device))

    def end_epoch(self, rng: np.random.Generator, group: Group = ONE) -> None:
        """The proxies of the epoch just run; places it did not draw keep their last ones. In a
        group every worker added its part of each batch: the sums are summed across the workers."""
        if self._sums is None:
            return
        assert self._counts is not None  # set with _sums
        sums, counts = group.sum(self._sums).cpu().numpy(), group.sum(self._counts).cpu().numpy()
        if self.proxies is None:
            self.proxies = rng.standard_normal(sums.shape).astype(np.float32)
            self.proxies /= np.linalg.norm(self.proxies, axis=1, keepdims=True)
        seen = counts > 0
        mean = sums[seen] / counts[seen, None]
        self.proxies[seen] = mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        self._sums = self._counts = None

    def state_dict(self) -> Dict:
        return {} if self.proxies is None else {"proxies": torch.from_numpy(self.proxies.copy())}

    def load_state_dict(self, state: Dict) -> None:
        proxies = state.get("proxies")
        if proxies is not None and tuple(proxies.shape[:1]) != (self.n_places,):
            raise BadInput(
                f"the checkpoint's place proxies are for {proxies.shape[0]} places, the training data "
                f"has {self.n_places}: resume on the data the run started on"
            )
        self.proxies = None if proxies is None else proxies.numpy().astype(np.float32)


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


def loss_and_miner(train_cfg, group: Group = ONE):
    """The loss and miner of ``train.pml_loss``/``pml_miner`` (miner None for ``none``); in a group,
    pytorch-metric-learning's distributed wrappers: both see the whole batch, descriptors gathered
    across the workers (the loss then comes times the workers' number: see :func:`place_step`)."""
    loss_fn = PLACE_LOSSES.create(train_cfg.pml_loss, train_cfg)
    miner = PLACE_MINERS.create(train_cfg.pml_miner, train_cfg)
    if group.active:
        from pytorch_metric_learning.utils.distributed import DistributedLossWrapper, DistributedMinerWrapper

        loss_fn = DistributedLossWrapper(loss_fn)
        miner = DistributedMinerWrapper(miner) if miner is not None else None
    return loss_fn, miner


def place_step(
    model,
    images: torch.Tensor,
    labels: torch.Tensor,
    loss_fn,
    miner,
    optimizer,
    rt: Runtime,
    proxies: Optional[PlaceProxies] = None,
    world: int = 1,
) -> torch.Tensor:
    """One optimizer step on a batch of places ``images`` (P, K, 3, H, W) with place ``labels`` (P,);
    returns the loss, a 0-d tensor on the device (read once an epoch: :func:`read_losses`). The
    step's descriptors go to ``proxies`` when given. On one of ``world`` workers, ``loss_fn`` and
    ``miner`` are pytorch-metric-learning's distributed wrappers: the loss is the whole batch's
    times ``world`` on every worker (DDP's average then gives the whole batch's gradient), and the
    value returned is this worker's part of the whole batch's loss (the parts sum to it)."""
    p, k, c, h, w = images.shape
    with rt.autocast():
        features = model(rt.to_device(images.view(p * k, c, h, w)))
    features = features.float()
    y = labels.repeat_interleave(k).to(features.device)
    loss = loss_fn(features, y, miner(features, y)) if miner is not None else loss_fn(features, y)
    if proxies is not None:
        proxies.add(features, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach() / world**2 if world > 1 else loss.detach()


class PlaceEpochs:
    """The places regime's epoch for :func:`vgray.train.loop.train`: ``batches_per_epoch`` batches
    (default: every place once) of P places x K images, the loss and miner of ``train.pml_*``."""

    def __init__(self, cfg, model, rt: Runtime, group: Group = ONE):
        self.cfg, self.rt, self.group = cfg, rt, group
        self.places = open_places(cfg)
        self.members = self.places.members()
        t = cfg.train
        self.batches = t.batches_per_epoch or max(1, self.places.n_places // t.places_per_batch)
        self.loss_fn, self.miner = loss_and_miner(t, group)
        self.transform = query_train_transform(cfg.data.image_size, model.mean, model.std, t.augmentation)
        self.init_paths = self.places.paths  # a NetVLAD's clusters start from the training images
        self.proxies = PlaceProxies(self.places.n_places, cfg.seed) if t.place_batching == "proxy" else None

    def describe(self, log) -> None:
        log(
            f"places regime: {self.places.n_places} places of {self.cfg.train.images_per_place}+ images "
            f"({len(self.places.paths)} images; {self.places.dropped} smaller places dropped), "
            f"{self.batches} batches of {self.cfg.train.places_per_batch} places an epoch"
            + (", places batched by proxy from the second epoch" if self.proxies is not None else "")
        )

    def counts(self) -> Dict[str, float]:
        return {"places": self.places.n_places, "dropped_places": self.places.dropped}

    def images_per_epoch(self) -> int:
        """Images through the training steps an epoch (the whole group's): P x K a batch."""
        return self.batches * self.cfg.train.places_per_batch * self.cfg.train.images_per_place

    def timings(self) -> Dict[str, float]:
        """Nothing beyond the epoch's own time: no mining cache is refreshed."""
        return {}

    def state_dict(self) -> Dict:
        # The sampler draws from the run's RNG, saved with the checkpoint; the proxies are the one state.
        return self.proxies.state_dict() if self.proxies is not None else {}

    def load_state_dict(self, state: Dict) -> None:
        if self.proxies is not None:
            self.proxies.load_state_dict(state)

    def run_epoch(self, model, optimizer, rng: np.random.Generator, epoch: int) -> List[float]:
        t = self.cfg.train
        proxies = self.proxies.proxies if self.proxies is not None else None
        draws = sample_batches(
            self.members, t.places_per_batch, t.images_per_place, self.batches, rng, proxies, self.places.neighbours
        )
        draws = draws[:, self.group.part(t.places_per_batch)]  # this worker's places of every batch
        per_batch = draws.shape[1]
        labels = torch.as_tensor(self.places.labels[draws[:, :, 0].reshape(-1)])
        images = PlaceImages(
            self.places.paths, draws.reshape(-1, t.images_per_place), self.transform, t.augmentation.horizontal_flip
        )
        model.train()
        losses = []
        if self.proxies is not None:
            self.proxies.start_epoch()
        for batch, indices in iter_batches(
            images, self.rt, desc=f"epoch {epoch + 1}", shuffle=False, batch_size=per_batch
        ):
            losses.append(
                place_step(
                    model,
                    batch,
                    labels[torch.as_tensor(indices)],
                    self.loss_fn,
                    self.miner,
                    optimizer,
                    self.rt,
                    self.proxies,
                    self.group.world,
                )
            )
        if self.proxies is not None:
            self.proxies.end_epoch(rng, self.group)
        return read_losses(losses, self.group)  # one sync an epoch, not one a step
