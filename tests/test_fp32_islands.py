"""Aggregations whose numerics bf16 does not hold (NetVLAD's and CRN's soft-assignment, residual sums
and normalisations) run in fp32 inside autocast: under CPU bf16 autocast, fed bf16 features as a bf16
backbone would, their descriptors stay within a bound of the fp32 ones, and closer than without the
island."""

import pytest
import torch
import torch.nn.functional as F

from vgray.models.aggregations.crn import CRN
from vgray.models.aggregations.netvlad import NetVLAD


def _errors(cls):
    torch.manual_seed(0)
    channels, clusters = 128, 32
    x = torch.randn(5, channels, 15, 20).relu()
    model = cls(channels, clusters).eval()
    # k-means clusters and alpha as vgray initialises them: a sharp soft-assignment
    model.initialize(F.normalize(x, dim=1).permute(0, 2, 3, 1).reshape(-1, channels).numpy(), seed=0, niter=10)
    out = {}
    with torch.no_grad():
        reference = model(x)
        for island in (True, False):
            model.fp32 = island
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = model(x.bfloat16())
            if island:
                assert got.dtype == torch.float32
            out[island] = 1 - F.cosine_similarity(got.float(), reference, dim=1).min().item()
        model.fp32 = True
        assert torch.equal(model(x), reference)  # without autocast: the fp32 path, unchanged
    return out


@pytest.mark.parametrize("cls", [NetVLAD, CRN])
def test_descriptor_error_under_bf16_autocast_is_bounded(cls):
    error = _errors(cls)
    # Measured: 1 - cosine 3e-6 with the island (the bf16 features' own rounding), 2e-4 without.
    assert error[True] < 2e-5
    assert error[False] > 5 * error[True]


def test_salad_sinkhorn_and_sums_run_in_fp32_under_bf16_autocast():
    """SALAD's MLPs run in bf16, its plan, weighted sums and normalisations in fp32: the descriptor is
    float32 and closer to the fp32 one than the same arithmetic left in bf16."""
    from vgray.models.aggregations.salad import SALAD

    torch.manual_seed(0)
    model = SALAD(96, clusters=16, cluster_dim=32, token_dim=32, dropout=0.0).eval()
    tokens = torch.randn(4, 1 + 200, 96)
    with torch.no_grad():
        reference = model(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = model(tokens.bfloat16())
            patches = tokens.bfloat16()[:, 1:].transpose(1, 2).unsqueeze(-1)
            bf16 = model._combine(
                model.cluster_features(patches), model.score(patches), model.token_features(tokens.bfloat16()[:, 0])
            )
        assert torch.equal(model(tokens), reference)  # without autocast: unchanged
    assert got.dtype == torch.float32
    island = 1 - F.cosine_similarity(got, reference, dim=1).min().item()
    plain = 1 - F.cosine_similarity(bf16.float(), reference, dim=1).min().item()
    assert island < 1e-4 and island < plain, (island, plain)
