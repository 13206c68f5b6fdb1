"""Image transforms: PIL image -> normalised tensor (B, 3, H, W) inputs of the network."""
from __future__ import annotations

from torchvision import transforms as T


def test_transform(image_size, mean, std):
    """Resize to ``image_size`` = (H, W) (the paper's hard_resize), to tensor, normalise."""
    return T.Compose([T.Resize(tuple(image_size), antialias=True), T.ToTensor(), T.Normalize(mean, std)])


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
