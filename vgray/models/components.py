"""The component interface: what every backbone and aggregation declares, in one place.

A component is registered under its YAML name in :mod:`vgray.registry` with the class it builds
(the ``type`` fact: ``@AGGREGATIONS.register("gem", type=GeM)``), so that the config can check a
combination from the class attributes below before anything is built; the network
(:mod:`vgray.models.network`) uses the same attributes and methods, never probing for them.

Backbone (``BACKBONES``, builder ``(pretrained, **sizes) -> Backbone``; facts ``out_channels`` and,
for transformers, ``input_sizes``: the only ``(H, W)`` they take; for DINOv2, ``patch``: sides must be its
multiples, ``class_token``: it gives one (SALAD needs it), ``model_keys``: further ``model.*`` keys its
builder takes, ``train_blocks``):

==================  ===============================================================================
``output``          ``feature_map`` (B, C, h, w) or ``tokens`` (B, T, C) (:class:`TokenBackbone`)
``trained_heads``   aggregations whose layer the pretrained weights include (CCT: ``seqpool``)
``out_channels``    C, checked by a dry forward pass at build time; ``arch``: the source architecture
``mean``, ``std``   the input normalisation of its weights
``feature_map()``   its output as local features (B, C, h, w) (tokens: the patch grid)
``init_aggregation`` hands the aggregation the weights of a trained head it has (after loading)
``load_source_state_dict()`` loads a state dict in its source layout (torchvision, timm, the
                    authors' files): ``model.pretrained`` files that are not whole networks
``adapt_network_state()`` sizes its part of a whole network's state dict to the input (DINOv2's
                    positional embedding), before that state dict is checked and loaded
==================  ===============================================================================

Aggregation (``AGGREGATIONS``, builder ``(in_channels, model_cfg) -> Aggregation``):

==================  ===============================================================================
``inputs``          the backbone outputs it can pool (``feature_map``, ``tokens``)
``pooling``         True for the pooling layers that ``model.l2`` wraps (before_pool / after_pool)
``takes_tokens``    True: it gets a transformer's token sequence, not the patch grid
``starts_from``     the aggregation whose trained checkpoint training starts from (CRN: ``netvlad``),
                    through ``model.resume_from``; checked by :func:`vgray.models.network.check_start`
``fresh_on_resume`` key prefixes of its own that such a checkpoint does not hold (they start fresh)
``output_dim``      descriptor size, checked by a dry forward pass at build time
``fixed_grid``      True: its layers are sized for one local-feature map (MixVPR), so that dry pass runs
                    at the input size
``needs_init``      True while it wants initialising from local features (:meth:`initialize`)
``param_groups()``  the optimizer groups of the whole network (default: all trainable at train.lr)
==================  ===============================================================================
"""

from __future__ import annotations

from typing import FrozenSet, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn


class Backbone(nn.Module):
    """Images (B, 3, H, W) -> local features: a feature map (B, out_channels, h, w)."""

    output: str = "feature_map"
    trained_heads: FrozenSet[str] = frozenset()

    def __init__(self, arch: str, out_channels: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.arch = arch
        self.out_channels = out_channels
        self.mean, self.std = tuple(mean), tuple(std)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """This backbone's output as local features (B, C, h, w): a feature map already is."""
        return x

    def load_source_state_dict(self, state: dict, origin: str) -> None:
        """Load ``state``, a state dict in the layout of the architecture this backbone is cut from,
        refusing one that does not fit with a line naming ``origin``; each backbone implements it."""
        raise NotImplementedError(f"{type(self).__name__} must implement load_source_state_dict")

    def adapt_network_state(self, state: dict, prefix: str) -> dict:
        """A whole network's state dict (vgray names) whose keys under ``prefix`` are this backbone's,
        with any weight that depends on the input size sized for this one; default: unchanged."""
        return state

    def init_aggregation(self, aggregation: "Aggregation", name: str) -> None:
        """Load into ``aggregation`` (registry name ``name``) the trained head this backbone's weights
        include, if any (see ``trained_heads``); default: none."""


class TokenBackbone(Backbone):
    """Images (B, 3, H, W) -> tokens (B, prefix_tokens + h * w, out_channels), any prefix token
    (ViT's class token) first, the patch tokens row-major on the ``grid`` (h, w)."""

    output = "tokens"

    def __init__(self, arch: str, out_channels: int, prefix_tokens: int, grid: Tuple[int, int], mean, std):
        super().__init__(arch, out_channels, mean, std)
        self.prefix_tokens = prefix_tokens
        self.grid = tuple(grid)

    def feature_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """The patch tokens (prefix tokens dropped) as a local feature map (B, C, h, w)."""
        patches = tokens[:, self.prefix_tokens :]
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *self.grid)


class Aggregation(nn.Module):
    """Local features (B, C, h, w), or tokens (B, T, C) when ``takes_tokens`` -> descriptors
    (B, output_dim)."""

    inputs: FrozenSet[str] = frozenset({"feature_map"})
    # Facts a backbone must declare in its registry entry (``class_token=True``), each with what it
    # gives, for the message naming the backbones that have it (SALAD: the class token).
    needs: Tuple[Tuple[str, str], ...] = ()
    pooling: bool = False
    takes_tokens: bool = False
    starts_from: Optional[str] = None
    fresh_on_resume: Tuple[str, ...] = ()
    fixed_grid: bool = False

    def __init__(self, output_dim: int):
        super().__init__()
        self.output_dim = output_dim

    @property
    def needs_init(self) -> bool:
        """True while :meth:`initialize` should run before training or extraction."""
        return False

    def initialize(self, local_features: np.ndarray, seed: int = 0) -> None:
        """Initialise from L2-normalised local features ``(n, C)`` float32 (default: nothing to do)."""

    def param_groups(self, model: nn.Module, train_cfg) -> List[dict]:
        """Optimizer parameter groups for the whole network ``model``: by default every trainable
        parameter at ``train.lr`` (the optimizer's default)."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]


# -- numerics bf16 does not hold (NetVLAD, CRN, SALAD) --------------------------------------------


def fp32_island(x: torch.Tensor):
    """A context in which autocast is off on ``x``'s device: the code inside runs in the dtype of
    its tensors (cast them to float32 first). For numerics bf16 does not hold: a sharp softmax
    soft-assignment over many clusters, sums of hundreds of residuals, L2 normalisation."""
    return torch.autocast(device_type=x.device.type, enabled=False)


def under_autocast(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device (never on the meta device, where shapes are probed)."""
    return x.device.type in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(x.device.type)
