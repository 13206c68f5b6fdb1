"""Image transforms: PIL image -> normalised tensor (B, 3, H, W) inputs of the network.

The order of resizing and normalising (``data.resize_order``), learned from the paper's code
(gmberton/deep-visual-geo-localization-benchmark, ``datasets_ws.py``):

- ``paper`` (the default): ``BaseDataset.__getitem__``, which feeds every test, validation and
  mining-cache image (and NetVLAD's initialisation), applies ``base_transform`` (``ToTensor``,
  ``Normalize``) to the full-size image, then resizes the *normalised tensor* with
  ``T.functional.resize(img, self.resize)`` (hard_resize; ``_test_query_transform`` likewise
  resizes and crops tensors for the other test methods). vgray resizes that float tensor
  bilinearly with antialiasing, as today's torchvision does for tensors (the paper pinned
  torchvision 0.8.1, ``requirements.txt``, whose tensor resize had no antialiasing yet).
- ``pil``: resize the PIL image (bilinear, antialiased), then ``ToTensor`` and ``Normalize``:
  vgray's order before this key existed.

At the native size both orders give the same tensor (no resize takes place); below it they differ
(PIL rounds the resized image to uint8, and the tensor resize mixes normalised values).

Training images follow the paper's ``TripletsDataset`` whichever the key: a query's augmentations
and its resize act on the PIL image (``query_transform``: ``ColorJitter``, ``RandomPerspective``,
``RandomResizedCrop``, ``RandomRotation``, then ``resized_transform`` = ``T.Resize`` + base), and
positives and negatives go through ``resized_transform`` (PIL resize, then normalise): see
:func:`query_train_transform` and :func:`train_database_transform`. Only the mining cache, which
``BaseDataset`` builds, follows ``data.resize_order``.
"""

from __future__ import annotations

from torchvision import transforms as T

#: ``data.resize_order`` choices: the paper's order (normalise, then resize the tensor) and PIL's
#: (resize the image, then normalise).
RESIZE_ORDERS = ("paper", "pil")


def check_order(order: str) -> str:
    """``order`` if it is one of :data:`RESIZE_ORDERS` (a programming error otherwise: the config
    refuses another value at load time)."""
    if order not in RESIZE_ORDERS:
        raise ValueError(f"resize order {order!r}: allowed are {', '.join(RESIZE_ORDERS)}")
    return order


def normalised(steps, mean, std, order: str = "paper") -> T.Compose:
    """``steps`` (resizes, crops) and ``ToTensor`` + ``Normalize`` in the order ``order`` says:
    ``pil``: the steps on the PIL image, then to tensor and normalise; ``paper``: to tensor and
    normalise, then the steps on the float tensor (torchvision's resizes and crops take both)."""
    base = [T.ToTensor(), T.Normalize(tuple(mean), tuple(std))]
    return T.Compose([*steps, *base] if check_order(order) == "pil" else [*base, *steps])


class ResizeNormalize(T.Compose):
    """The paper's hard_resize: a PIL image -> float tensor (3, H, W) of ``image_size`` = (H, W),
    resized and normalised in the order ``order`` (``data.resize_order``; module docstring). It
    also names its size, mean, std and order, so that extraction can do the same on decoded uint8
    tensors on the device (:meth:`on_tensors`, ``data.decode``)."""

    def __init__(self, image_size, mean, std, order: str = "paper"):
        self.size, self.mean, self.std = tuple(image_size), tuple(mean), tuple(std)
        self.order = check_order(order)
        super().__init__(normalised([T.Resize(self.size, antialias=True)], self.mean, self.std, order).transforms)

    def on_tensors(self, images):
        """uint8 tensors (3, h, w), any sizes, all on one device -> float32 (B, 3, H, W) there, in
        the order of :attr:`order`; images of the same size are resized as one batch.

        ``paper``: each batch is scaled to [0, 1] and normalised with the very operations of
        ``ToTensor`` and ``Normalize``, then resized (antialiased bilinear on the float tensor), as
        the PIL-worker path does. ``pil``: each batch is resized as uint8 (antialiased bilinear,
        rounded to uint8 as PIL's resize is), then scaled and normalised."""
        import torch
        from torchvision.transforms.v2 import functional as F

        device = images[0].device
        groups = {}
        for k, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(k)
        if self.order == "paper":
            out = torch.empty((len(images), 3, *self.size), dtype=torch.float32, device=device)
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            for shape, ks in groups.items():
                batch = torch.stack([images[k] for k in ks]).to(torch.float32).div(255).sub_(mean).div_(std)
                if shape[1:] != self.size:
                    batch = F.resize(batch, list(self.size), antialias=True)
                out[ks] = batch
            return out
        out = torch.empty((len(images), 3, *self.size), dtype=torch.uint8, device=device)
        for shape, ks in groups.items():
            batch = torch.stack([images[k] for k in ks])
            if shape[1:] != self.size:
                batch = F.resize(batch, list(self.size), antialias=True)
            out[ks] = batch
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1) * 255
        return (out.float() - mean) / std


def test_transform(image_size, mean, std, order: str = "paper"):
    """Resize to ``image_size`` = (H, W) (the paper's hard_resize) and normalise, in the order
    ``order`` (``data.resize_order``): test, validation, mining-cache and PCA images."""
    return ResizeNormalize(image_size, mean, std, order)


def train_database_transform(image_size, mean, std):
    """Positives and negatives of a training triplet: the PIL image resized to ``image_size``,
    then normalised, whichever ``data.resize_order`` (the paper's ``resized_transform`` in
    ``TripletsDataset.__getitem__``, ``datasets_ws.py``)."""
    return ResizeNormalize(image_size, mean, std, "pil")


def query_train_transform(image_size, mean, std, aug):
    """The paper's query augmentations (``train.augmentation``: a strength of 0 turns one off),
    applied to the PIL image before its resize, in the order of its code (``TripletsDataset
    .query_transform``, ``datasets_ws.py``): colour jitters, perspective, resized crop, rotation,
    then the PIL resize and normalisation of :func:`train_database_transform`, whichever
    ``data.resize_order``."""
    size = tuple(image_size)
    steps = [
        T.ColorJitter(**{name: getattr(aug, name)})
        for name in ("brightness", "contrast", "saturation", "hue")
        if getattr(aug, name) > 0
    ]
    if aug.perspective > 0:
        steps.append(T.RandomPerspective(distortion_scale=aug.perspective, p=0.5))
    if aug.resized_crop > 0:
        steps.append(T.RandomResizedCrop(size, scale=(1 - aug.resized_crop, 1), antialias=True))
    if aug.rotation > 0:
        steps.append(T.RandomRotation(aug.rotation))
    return T.Compose(steps + [train_database_transform(size, mean, std)])
