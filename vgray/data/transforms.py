"""Image transforms: PIL image -> normalised tensor (B, 3, H, W) inputs of the network."""
from __future__ import annotations

from torchvision import transforms as T


def test_transform(image_size, mean, std):
    """Resize to ``image_size`` = (H, W) (the paper's hard_resize), to tensor, normalise."""
    return T.Compose([T.Resize(tuple(image_size), antialias=True), T.ToTensor(), T.Normalize(mean, std)])
