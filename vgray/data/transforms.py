"""Image transforms: PIL image -> normalised tensor (B, 3, H, W) inputs of the network."""
from __future__ import annotations

from torchvision import transforms as T


class ResizeNormalize(T.Compose):
    """Resize to ``image_size`` = (H, W) (the paper's hard_resize), to tensor, normalise: a PIL
    image -> float tensor (3, H, W). It also names its size, mean and std, so that extraction can
    do the same on decoded uint8 tensors on the device (:meth:`on_tensors`, ``data.decode``)."""

    def __init__(self, image_size, mean, std):
        self.size, self.mean, self.std = tuple(image_size), tuple(mean), tuple(std)
        super().__init__([T.Resize(self.size, antialias=True), T.ToTensor(), T.Normalize(self.mean, self.std)])

    def on_tensors(self, images):
        """uint8 tensors (3, h, w), any sizes, all on one device -> float32 (B, 3, H, W) there.
        Images of the same size are resized as one batch (antialiased bilinear, rounded to uint8
        as PIL's resize is), then scaled to [0, 1] and normalised."""
        import torch
        from torchvision.transforms.v2 import functional as F
        device = images[0].device
        out = torch.empty((len(images), 3, *self.size), dtype=torch.uint8, device=device)
        groups = {}
        for k, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(k)
        for shape, ks in groups.items():
            batch = torch.stack([images[k] for k in ks])
            if shape[1:] != self.size:
                batch = F.resize(batch, list(self.size), antialias=True)
            out[ks] = batch
        mean = torch.tensor(self.mean, device=device).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.std, device=device).view(1, 3, 1, 1) * 255
        return (out.float() - mean) / std


def test_transform(image_size, mean, std):
    """Resize to ``image_size`` = (H, W) (the paper's hard_resize), to tensor, normalise."""
    return ResizeNormalize(image_size, mean, std)


def query_train_transform(image_size, mean, std, aug):
    """The paper's query augmentations (``train.augmentation``: a strength of 0 turns one off),
    applied before the resize, in the order of its code: colour jitters, perspective, resized crop,
    rotation. Database images (positives, negatives) take :func:`test_transform`."""
    size = tuple(image_size)
    steps = [T.ColorJitter(**{name: getattr(aug, name)})
             for name in ("brightness", "contrast", "saturation", "hue") if getattr(aug, name) > 0]
    if aug.perspective > 0:
        steps.append(T.RandomPerspective(distortion_scale=aug.perspective, p=0.5))
    if aug.resized_crop > 0:
        steps.append(T.RandomResizedCrop(size, scale=(1 - aug.resized_crop, 1), antialias=True))
    if aug.rotation > 0:
        steps.append(T.RandomRotation(aug.rotation))
    return T.Compose(steps + [test_transform(size, mean, std)])
