"""``vgray bench extract``'s baseline is the paper's way: its own fresh model in fp32 and the default
memory format (vgray's path makes the model it prepares channels-last in place), TF32 off, batch 16,
PIL DataLoader; measured in the same run as vgray's path."""

import json

import torch

from vgray.bench.extract import REFERENCE, reference_extract, reference_model, strict_fp32
from vgray.config import load_config
from vgray.models import build_model
from vgray.runtime import Runtime


def _is_channels_last(model) -> bool:
    return any(p.dim() == 4 and p.shape[-1] > 1 and not p.is_contiguous() for p in model.parameters())


def test_baseline_model_is_its_own_fp32_default_layout_copy():
    cfg = load_config(overrides=["model.pretrained=none", "model.aggregation=gem", "data.resize=[32,48]"])
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    baseline = reference_model(cfg, model)
    Runtime.from_config(cfg, progress=False).prepare(model)  # vgray's path: channels-last, in place
    assert _is_channels_last(model)
    assert baseline is not model and not _is_channels_last(baseline) and not baseline.training
    assert all(p.dtype == torch.float32 for p in baseline.parameters())
    ours = model.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in baseline.state_dict().items())
    assert not any(a.data_ptr() == b.data_ptr() for a, b in zip(baseline.parameters(), model.parameters()))


def test_strict_fp32_turns_tf32_off_for_the_block_only():
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    before = (conv.fp32_precision, matmul.fp32_precision)
    with strict_fp32():
        assert (conv.fp32_precision, matmul.fp32_precision) == ("ieee", "ieee")
    assert (conv.fp32_precision, matmul.fp32_precision) == before


def test_bench_extract_states_its_baseline(tiny_root, tmp_path):
    from vgray.cli import main

    out = tmp_path / "figures.json"
    assert (
        main(
            [
                "bench",
                "extract",
                "--images",
                "16",
                "--repeats",
                "1",
                "--batch-size",
                "16",
                "--json",
                str(out),
                "--set",
                "data.num_workers=0",
                "--set",
                "data.resize=[32,48]",
            ]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    assert figures["reference"] == REFERENCE and figures["descriptor_cosine"] > 0.999
    assert list(figures)[-1] == "ratio"


def test_reference_loop_leaves_the_model_layout_alone(small_root):
    from vgray.data.dataset import open_split
    from vgray.evaluate.methods import TEST_METHODS

    cfg = load_config(overrides=["model.pretrained=none", "model.aggregation=gem", "data.resize=[32,48]"])
    baseline = reference_model(cfg, build_model(cfg.model, image_size=cfg.data.image_size))
    paths = open_split(str(small_root), "test").database.paths[:4]
    transform = TEST_METHODS.create("hard_resize", cfg.data.image_size, baseline.mean, baseline.std).database_transform
    out = reference_extract(baseline, paths, transform, torch.device("cpu"), 0)
    assert out.shape == (4, baseline.features_dim) and not _is_channels_last(baseline)
