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

**MixVPR, SALAD, BoQ** (:mod:`.vpr`) are tried right after 1, before 2, whose ``backbone.`` prefix
they share. Their released files are the bare state dict of the authors' Lightning ``VPRModel``
(one's own training's ``.ckpt`` has it under ``state_dict``): ``backbone.…`` and ``aggregator.…``,
the head with vgray's names (``aggregation.…``). **MixVPR** (amaralibey/MixVPR):
``backbone.model.{conv1,bn1,layer1..3}.…`` (torchvision's ResNet, layer4 cropped; vgray
``backbone.body.{0,1,4,5,6}``) and ``aggregator.{mix.N.mix.{0,1,3},channel_proj,row_proj}``.
**SALAD** (serizba/salad): torch hub's DINOv2 as ``backbone.model.…`` with its final norm (vgray
``backbone.vit.…``; ``mask_token`` dropped, ViT-g's ``mlp.w12``/``w3`` as ``fc1``/``fc2``) and
``aggregator.{token_features.{0,2},cluster_features.{0,3},score.{0,3},dust_bin}``. **BoQ**
(amaralibey/Bag-of-Queries): ``backbone.net.N`` (``Sequential`` of the ResNet's children up to layer3:
vgray's indices) or ``backbone.dino.…`` (its DINOv2, run *without* the final norm, whose unused
weights are dropped: ``model.dinov2_final_norm=false``) and ``aggregator.{proj_c,norm_input,
boqs.N.{encoder,queries,self_attn,norm_q,cross_attn,norm_out},fc}``. DINOv2's positional embedding
(518 x 518) is resampled to the input by the backbone (``adapt_network_state``), as DINOv2 does.
Blocks in the file are ``model.trunc_te``.

The paper's transformer networks, in the same train.py checkpoint or bare, are tried after CosPlace /
EigenPlaces (:mod:`.paper_transformers`): **its ViT** (``backbone.vit_model.…``: HuggingFace's
``ViTModel`` in its ``VitWrapper``) becomes vgray's ``vit`` (timm's names; query, key and value
stacked into qkv, the unused pooler left out) and **its CCT** (``backbone.tokenizer.conv_layers.…``,
``backbone.classifier.…``: the CCT authors' names) vgray's ``cct384``, with cls, seqpool (CCT's
``classifier.attention_pool``, in every such file, is loaded only into a seqpool network), gem or
netvlad (its Conv1d weight as a 1x1 Conv2d) and the FC; the blocks in the file are
``model.trunc_te``. The paper's ``l2=before_pool`` on tokens normalised over the tokens, not the
channels: such a GeM file loads but its descriptors are not the paper's. A file that fits a layout
but not the configured network is refused with one line saying what it was made for, read from its
keys (backbone from the first convolution or the transformer's names and block counts, NetVLAD
clusters, FC size, channels).
"""

from vgray.models.foreign.load import LAYOUTS, describe, load_network_file

__all__ = ["LAYOUTS", "describe", "load_network_file"]
