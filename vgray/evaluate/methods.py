"""Test-time methods (``test.method``): how database and query images are fed to the network, and
how the predictions of a query seen as several crops are merged.

Paper: Berton et al., "Deep Visual Geo-localization Benchmark", CVPR 2022, supplementary material
("query pre/post-processing and predictions refinement"). The semantics follow the reference code
(``datasets_ws.py`` ``_test_query_transform``, ``test.py``):

- every **database** image is hard-resized to ``data.resize`` (H, W), whatever the method;
- ``hard_resize``: queries too (the default);
- ``single_query``: a query's shorter side goes to ``min(H, W)``, aspect ratio kept; queries of
  different sizes cannot share a batch, so they are grouped by their original size;
- ``central_crop``: the query is scaled (aspect kept) until it covers (H, W), then its central
  (H, W) crop is taken;
- ``five_crops``: shorter side to ``s = min(H, W)``, then the four corner and the central ``s x s``
  crops; the query's descriptor is the mean of the five descriptors;
- ``nearest_crop``: the five crops are searched separately and their predictions merged by
  distance, each database image kept once at its smallest distance;
- ``maj_voting``: as nearest_crop, but first a database image predicted by several crops has its
  distances lowered by ``test.majority_weight * count / n`` within the top-1, top-5 and top-10 of
  every crop (``count``: how often it occurs there), a vote among the crops.

Where vgray differs from the reference code: the merges work for any ``test.recall_values`` (the
reference reshaped its results with a hard-coded 20, so only ``max(recall_values) == 20`` ran);
each crop is searched for ``max(recall_values)`` neighbours (``maj_voting``: at least 10, the
depth of its deepest vote), which gives the same top-N as the reference's 20 for every N <= 20, so
R@N does not depend on which other N are asked for; ties in the merged distances go to the lower
database id (the reference used an unstable sort); resizes are bilinear with antialiasing
(``central_crop`` in the reference scaled with nearest-neighbour interpolation, and its
torchvision 0.8.1 resized tensors without antialiasing).

The order of resizing and normalising is ``data.resize_order``
(:mod:`vgray.data.transforms`): ``paper`` (the default) normalises the full-size image and then
resizes and crops the float tensor, as ``BaseDataset.__getitem__`` and ``_test_query_transform``
do; ``pil`` resizes and crops the PIL image, then normalises.
"""

from __future__ import annotations

import numpy as np
from torchvision import transforms as T

from vgray.data.transforms import normalised, test_transform
from vgray.errors import BadInput
from vgray.registry import TEST_METHODS

#: maj_voting's votes: within the top-1, top-5 and top-10 predictions of every crop.
VOTE_DEPTHS = (1, 5, 10)


class CoverResize:
    """Scale an image (PIL or tensor), aspect kept, until it covers ``(H, W)`` (both sides at
    least as large)."""

    def __init__(self, size):
        self.size = tuple(size)

    def __call__(self, image):
        h, w = self.size
        width, height = T.functional.get_image_size(image)
        scale = max(h / height, w / width)
        new = (max(h, round(height * scale)), max(w, round(width * scale)))
        return T.functional.resize(image, list(new), antialias=True)


class Crop:
    """Crop ``index`` of torchvision's five crops of side ``side``: top-left, top-right,
    bottom-left, bottom-right, centre (a class, not a lambda, so loader workers can pickle it)."""

    def __init__(self, side: int, index: int):
        self.side, self.index = side, index

    def __call__(self, image):
        return T.functional.five_crop(image, [self.side, self.side])[self.index]


class HardResize:
    """Every image resized to ``(H, W)`` regardless of its aspect ratio (the paper's default).

    The interface every test method shares:

    - ``database_transform``: PIL image -> tensor (3, H, W), resized and normalised in the order
      ``order`` (``data.resize_order``);
    - ``query_transforms``: one transform per crop the network sees of a query (``crops`` of them);
    - ``batched``: False when queries come out in different sizes (grouped by size, then);
    - ``pool(x)``: (m, crops, d) descriptors -> (m, views, d), the descriptors searched per query;
    - ``search_k(k)``: neighbours to search per view for a final top-``k``;
    - ``merge(D, I, k)``: (m, views, k') distances and ids -> (m, k) ids, -1 padded.
    """

    name = "hard_resize"
    crops = 1
    views = 1
    batched = True

    def __init__(self, image_size, mean, std, majority_weight: float = 0.01, order: str = "paper"):
        self.image_size = tuple(image_size)
        self.mean, self.std, self.order = mean, std, order
        self.majority_weight = majority_weight
        self.database_transform = test_transform(self.image_size, mean, std, order)
        self.query_transforms = [self.database_transform]

    @property
    def query_transform(self):
        """The one query transform of a single-view method."""
        if len(self.query_transforms) != 1:
            raise BadInput(
                f"test.method={self.name} feeds a query as {self.crops} crops (query_transforms), not one image"
            )
        return self.query_transforms[0]

    def pool(self, x: np.ndarray) -> np.ndarray:
        return x

    def search_k(self, k: int) -> int:
        return k

    def merge(self, D: np.ndarray, I: np.ndarray, k: int) -> np.ndarray:
        return I[:, 0, :k]


class SingleQuery(HardResize):
    """Queries keep their aspect ratio: shorter side to ``min(H, W)``."""

    name = "single_query"

    batched = False

    def __init__(self, image_size, mean, std, majority_weight: float = 0.01, order: str = "paper"):
        super().__init__(image_size, mean, std, majority_weight, order)
        self.query_transforms = [normalised([T.Resize(min(self.image_size), antialias=True)], mean, std, order)]


class CentralCrop(HardResize):
    """The biggest central crop of the query with the shape ``(H, W)``, aspect ratio kept."""

    name = "central_crop"

    def __init__(self, image_size, mean, std, majority_weight: float = 0.01, order: str = "paper"):
        super().__init__(image_size, mean, std, majority_weight, order)
        self.query_transforms = [
            normalised([CoverResize(self.image_size), T.CenterCrop(self.image_size)], mean, std, order)
        ]


class FiveCrops(HardResize):
    """Five square crops of side ``min(H, W)`` per query; the mean of their descriptors is searched."""

    name = "five_crops"

    crops = 5

    def __init__(self, image_size, mean, std, majority_weight: float = 0.01, order: str = "paper"):
        super().__init__(image_size, mean, std, majority_weight, order)
        side = min(self.image_size)
        self.query_transforms = [
            normalised([T.Resize(side, antialias=True), Crop(side, c)], mean, std, order) for c in range(5)
        ]

    def pool(self, x: np.ndarray) -> np.ndarray:
        return x.mean(axis=1, keepdims=True)


class NearestCrop(FiveCrops):
    """The five crops searched separately; each database image at its nearest crop's distance."""

    name = "nearest_crop"

    views = 5

    def pool(self, x: np.ndarray) -> np.ndarray:
        return x

    def merge(self, D: np.ndarray, I: np.ndarray, k: int) -> np.ndarray:
        return merge_nearest(D, I, k)


class MajorityVoting(NearestCrop):
    """nearest_crop after a vote: database images predicted by several crops move closer."""

    name = "maj_voting"

    def search_k(self, k: int) -> int:
        return max(k, max(VOTE_DEPTHS))

    def merge(self, D: np.ndarray, I: np.ndarray, k: int) -> np.ndarray:
        return merge_nearest(majority_votes(D, I, self.majority_weight), I, k)


def merge_nearest(D: np.ndarray, I: np.ndarray, k: int) -> np.ndarray:
    """``(m, views, k')`` distances ``D`` and database ids ``I`` (-1: none) -> ``(m, k)`` ids:
    per query, every view's predictions ordered by (distance, id), each id kept at its first (its
    smallest) distance, the first ``k`` kept; -1 pads when fewer distinct ids were found."""
    m = I.shape[0]
    out = np.full((m, k), -1, dtype=np.int64)
    for q in range(m):
        d, i = D[q].reshape(-1), I[q].reshape(-1)
        found = i >= 0
        d, i = d[found], i[found]
        order = np.lexsort((i, d))
        _, first = np.unique(i[order], return_index=True)
        ids = i[order][np.sort(first)][:k]
        out[q, : len(ids)] = ids
    return out


def majority_votes(D: np.ndarray, I: np.ndarray, weight: float) -> np.ndarray:
    """The reference's vote, on a copy of ``D`` ``(m, views, k')``: for each depth ``n`` in
    (1, 5, 10), an id found ``count > 1`` times in the first ``n`` columns of all views has each of
    those entries' distances lowered by ``weight * count / n`` (the votes add up across depths)."""
    D = np.array(D, dtype=np.float64, copy=True)
    for n in VOTE_DEPTHS:
        cols = min(n, I.shape[2])
        for q in range(I.shape[0]):
            block = I[q, :, :cols]
            ids, inverse, counts = np.unique(block, return_inverse=True, return_counts=True)
            per_entry = counts[inverse.reshape(block.shape)]
            voted = (per_entry > 1) & (block >= 0)
            D[q, :, :cols] -= np.where(voted, weight * per_entry / n, 0.0)
    return D


for _method in (HardResize, SingleQuery, CentralCrop, FiveCrops, NearestCrop, MajorityVoting):
    TEST_METHODS.register(_method.name)(_method)


def create_method(cfg, mean, std) -> HardResize:
    """The test method ``cfg.test.method`` for a network normalising with ``mean``/``std``, its
    images resized and normalised in the order ``data.resize_order``."""
    return TEST_METHODS.create(
        cfg.test.method,
        cfg.data.image_size,
        mean,
        std,
        majority_weight=cfg.test.majority_weight,
        order=cfg.data.resize_order,
    )
