"""Whole-network weights files of other publishers, recognised from their keys and renamed to vgray's.

``model.pretrained: FILE`` takes any of these layouts, tried in this order (no flag says which):

1. **vgray checkpoint** (``best.pt``): ``{"model": state, "config": ...}`` (the config says what it
   was made for).
2. **vgray network state dict**: ``backbone.body.N…``, ``aggregation.…``, ``fc.…``.
3. **the paper's** (gmberton/deep-visual-geo-localization-benchmark): its train.py checkpoint
   ``{"model_state_dict": {"module.backbone.N…": ...}, "best_r5": np.float64, "recalls": np.ndarray,
   ...}`` or a bare state dict of its ``GeoLocalizationNet``. The backbone is ``Sequential`` of the
   torchvision children (vgray: ``backbone.body.N``). GeM, SPoC, MAC and R-MAC are wrapped in
   ``Sequential(L2Norm, pool, Flatten)`` (``model.l2=before_pool``: GeM's p is ``aggregation.1.p``) or
   ``Sequential(pool, [L2Norm,] Flatten)`` (``aggregation.0.p``); ``--fc_output_dim`` wraps the
   aggregation again, ``Sequential(aggregation, Linear, L2Norm)``, so everything shifts under
   ``aggregation.0.`` and the FC is ``aggregation.1.``. NetVLAD (``conv.weight``, ``centroids``) has no
   ``initialized`` buffer: it is set here, so that k-means does not run again over trained clusters.
   CRN's filters are ``crn.filter_{3_3,5_5,7_7}`` and its accumulation ``crn.acc_w`` a fixed sum
   (weight 1, bias 0, no gradient), which vgray computes without a layer. RRM's LayerNorms are
   ``ln1``/``ln2``. DataParallel's ``module.`` prefix is stripped.
4. **CosPlace / EigenPlaces** (gmberton/CosPlace, gmberton/EigenPlaces released ``*_cosplace.pth``,
   ``*_eigenplaces.pth``): ``backbone.N…`` as above and ``aggregation = Sequential(L2Norm, GeM,
   Flatten, Linear, L2Norm)``: ``aggregation.1.p``, ``aggregation.3.weight``/``bias``. That is vgray's
   conv5 (or VGG16) + ``gem`` + ``model.l2=before_pool`` + ``model.fc_output_dim``.
5. **backbone source state dict** (torchvision, timm, the CCT authors'): loaded into the backbone by
   its own ``load_source_state_dict``.

The paper's transformer networks (HuggingFace ViT inside its ``VitWrapper``, its CCT copy) are not
converted: their files are refused as fitting no layout. A file that fits a layout but not the
configured network is refused with one line saying what it was made for, read from its keys
(backbone from the first convolution and the block counts, NetVLAD clusters, FC size, channels).
"""
from vgray.models.foreign.load import LAYOUTS, describe, load_network_file

__all__ = ["LAYOUTS", "describe", "load_network_file"]
