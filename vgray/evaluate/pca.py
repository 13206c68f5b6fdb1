"""PCA of the descriptors (``model.pca_dim``): fitted on training images, applied to the database
and the queries before the kNN search.

As the paper's code (``util.compute_pca``, sklearn ``PCA(pca_dim)``): the descriptors of at most
2**14 randomly chosen training images, centred and projected on their ``pca_dim`` principal
components; no whitening, and no L2 normalisation after the projection. The paper fitted on every
image of the train folder (database and queries); vgray fits on a sample of the train split's
database (the train split of ``data.root``). The PCA is a faiss ``PCAMatrix`` (the same projection
as sklearn's, up to the signs of the components), saved as ``pca.faiss`` beside saved descriptors
(:func:`vgray.saved_descriptors.save_pca`).
"""

from __future__ import annotations

from typing import Callable, Optional

import faiss
import numpy as np

from vgray.console import progress_step
from vgray.errors import BadInput

#: The paper's cap on the training images the PCA is fitted on.
PCA_IMAGES = 2**14


def fit_pca(x: np.ndarray, dim: int, progress: bool = False) -> faiss.PCAMatrix:
    """A PCA of the rows of ``x`` (n, d) to ``dim`` components (``dim < d``, ``n >= dim``); with
    ``progress``, the fit is shown as a step (:class:`vgray.console.progress_step`)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if dim >= d:
        raise BadInput(f"model.pca_dim={dim} must be smaller than the descriptor size {d}")
    if n < dim:
        raise BadInput(f"model.pca_dim={dim}: the PCA needs at least {dim} training descriptors, got {n}")
    pca = faiss.PCAMatrix(d, dim, 0.0, False)  # eigen_power 0: no whitening; no random rotation
    with progress_step(f"pca: fitting {n:,} x {d} descriptors -> {dim}", progress):
        pca.train(x)
    return pca


def apply_pca(pca: faiss.VectorTransform, x: np.ndarray) -> np.ndarray:
    """``x`` (n, d_in) projected to (n, d_out) float32, not re-normalised (as the paper's code)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != pca.d_in:
        raise BadInput(f"the PCA takes {pca.d_in}-d descriptors, not {x.shape[-1]}-d")
    return pca.apply(x) if len(x) else np.zeros((0, pca.d_out), dtype=np.float32)


def check_pca(cfg, features_dim: int, root: Optional[str] = None) -> None:
    """The refusals before any extraction: ``model.pca_dim`` not below the descriptor size, or
    no training images to fit on (``root``'s train split missing or smaller than ``pca_dim``)."""
    dim = cfg.model.pca_dim
    if dim is None:
        return
    if dim >= features_dim:
        raise BadInput(f"model.pca_dim={dim} must be smaller than the network's descriptor size {features_dim}")
    train = training_images(cfg, root)
    if len(train) < dim:
        raise BadInput(
            f"model.pca_dim={dim} needs at least {dim} training images to fit the PCA; the train "
            f"split of {root or cfg.data.root} has {len(train)} database images"
        )


def training_images(cfg, root: Optional[str] = None):
    """The database of the train split of ``root`` (default ``data.root``), which the PCA is fitted on."""
    from vgray.data.dataset import open_split

    root = root or cfg.data.root
    try:
        return open_split(root, "train").database
    except BadInput as exc:
        raise BadInput(
            f"model.pca_dim={cfg.model.pca_dim} fits the PCA on training images, but the dataset "
            f"{root} has none ({exc})"
        )


def pca_from_training(
    model, cfg, rt, extractor: Optional[Callable] = None, root: Optional[str] = None
) -> faiss.PCAMatrix:
    """Fit the PCA of ``model``'s descriptors on at most :data:`PCA_IMAGES` random database images of
    the train split (hard-resized, as database images are at test time); the extraction and the
    fit show progress as ``rt.progress`` says."""
    from vgray.evaluate.extract import extract_descriptors
    from vgray.evaluate.methods import HardResize

    check_pca(cfg, model.features_dim, root)
    images = training_images(cfg, root)
    rng = np.random.default_rng(cfg.seed)
    count = min(len(images), PCA_IMAGES)
    chosen = np.sort(rng.choice(len(images), size=count, replace=False))
    transform = HardResize(cfg.data.image_size, model.mean, model.std, order=cfg.data.resize_order).database_transform
    x, valid = (extractor or extract_descriptors)(
        model, [images.paths[i] for i in chosen], transform, rt, model.features_dim, "pca"
    )
    return fit_pca(x[valid], cfg.model.pca_dim, progress=rt.progress)
