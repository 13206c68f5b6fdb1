"""The parts of scripts/gpu_check.sh that run without a GPU (vgray/bench/gpu_check.py), on the CPU:
the four JPEG kinds and their decode figures, NetVLAD and today's heads at fp32 against bf16
autocast, the sweep file, and the one JSON the script leaves; and the script's refusal without CUDA.
What they give on a GPU (nvjpeg's figures, bf16 on CUDA, the sweep's devices) is measured only when
the script runs on one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
from conftest import make_vg_folder
from PIL import Image

from vgray.bench import gpu_check
from vgray.config import parse_yaml
from vgray.distributed.spec import parse_sweep

ROOT = Path(__file__).resolve().parents[1]


def test_jpeg_kinds_decode_to_rgb_and_assemble_into_one_json(tmp_path):
    figures = gpu_check.step_jpegs(tmp_path, torch.device("cpu"), 2, (24, 32))
    modes = {kind: Image.open(tmp_path / "jpegs" / kind / "0000.jpg") for kind in gpu_check.JPEG_KINDS}
    assert {k: m.mode for k, m in modes.items()} == {
        "baseline": "RGB",
        "progressive": "RGB",
        "greyscale": "L",
        "cmyk": "CMYK",
    }
    assert modes["progressive"].info.get("progressive") and not modes["baseline"].info.get("progressive")
    for kind, one in figures["kinds"].items():
        # CMYK JPEGs (which nvjpeg refuses) are decoded in the loader worker by PIL, the others on the device
        assert one["kinds_read"] == (["pixels"] if kind == "cmyk" else ["jpeg"]), kind
        assert one["shapes_rgb"] and one["device_errors"] == 0, kind
        # On the CPU the device path is the same libjpeg-turbo: identical pixels; PIL's within one level.
        assert one["max_diff_cpu_vs_pil"] <= 1, kind
        if kind == "cmyk":
            assert one["max_diff_device_vs_pil"] == 0 and one["max_diff_device_vs_cpu"] <= 1
        else:
            assert one["max_diff_device_vs_cpu"] == 0, kind
        assert one["bare_decode"] == "ok" and one["cpu_images_per_s"] > 0 and one["device_images_per_s"] > 0

    (tmp_path / "gpu_check_jpegs.json").write_text(json.dumps(figures))
    (tmp_path / "status.tsv").write_text("jpegs\t0\t12\nprecision\t124\t120\ndevices\tskipped\t0\n")
    (tmp_path / "precision.log").write_text("starting\nstill going\n")
    result = gpu_check.assemble(tmp_path)
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == json.loads(json.dumps(result, default=str))
    steps = result["steps"]
    assert steps["jpegs"]["rc"] == 0 and steps["jpegs"]["figures"] == figures
    assert steps["precision"]["timed_out"] and steps["precision"]["log_tail"].endswith("still going")
    assert "skipped" in steps["devices"] and steps["sweep"]["not_run"]
    assert result["failed"] == ["precision"] and list(steps) == list(gpu_check.STEPS)


def test_netvlad_fp32_against_bf16_on_the_cpu(tmp_path):
    db = [(500000.0 + 10 * i, 4100000.0) for i in range(12)]
    q = [(500003.0, 4100001.0), (500052.0, 4099998.0), (500110.0, 4100000.0)]
    root = make_vg_folder(tmp_path / "ds", db, q, size=(32, 48))
    out = gpu_check.step_precision(
        "cpu", str(root), (32, 48), ["model.netvlad_clusters=4", "data.num_workers=0", "test.batch_size=16"]
    )
    assert out["device"] == "cpu" and out["descriptor_cosine"]["images"] == 15
    assert set(out["fp32"]) == set(out["bf16"]) and "R@1" in out["fp32"]
    # NetVLAD's fp32 island under bf16 autocast: descriptors close to fp32's, not equal.
    assert 0.99 < out["descriptor_cosine"]["min"] <= out["descriptor_cosine"]["mean"] <= 1.0 + 1e-6


def test_todays_heads_fp32_against_bf16_on_the_cpu():
    small_salad = ("model.salad_clusters=4", "model.salad_cluster_dim=16", "model.salad_token_dim=8")
    heads = (
        ("dinov2_vits14", "salad", 56, small_salad),
        ("resnet18conv4", "mixvpr", 64, ("model.mixvpr_map_size=[4,4]",)),
    )
    out = gpu_check.step_heads("cpu", heads=heads, batch=2, batches=1)
    salad, mixvpr = out["dinov2_vits14+salad"], out["resnet18conv4+mixvpr"]
    # SALAD: clusters x cluster dim + global token; MixVPR: out channels x out rows (published 1024 x 4).
    assert salad["input"] == [56, 56] and salad["dim"] == 4 * 16 + 8 and mixvpr["dim"] == 4096
    for one in (salad, mixvpr):
        assert one["fp32_images_per_s"] > 0 and one["bf16_images_per_s"] > 0
        assert one["bf16_over_fp32"] == round(one["bf16_images_per_s"] / one["fp32_images_per_s"], 2)
        assert 0.99 < one["descriptor_cosine"]["min"] <= one["descriptor_cosine"]["mean"] <= 1.0 + 1e-6


def test_the_sweep_file_is_two_half_gpu_trials(tmp_path):
    spec = parse_sweep(parse_yaml(gpu_check.sweep_yaml(tmp_path), "sweep.yaml"), "sweep.yaml")
    assert spec.resources["gpu"] == 0.5 and len(spec.grid["model.aggregation"]) * spec.repeats == 2


def test_the_script_refuses_without_cuda(tmp_path):
    # CUDA hidden from the script's process, so that this runs on a GPU machine too
    done = subprocess.run(
        ["bash", str(ROOT / "scripts/gpu_check.sh")],
        capture_output=True,
        text=True,
        env={
            "PATH": "/usr/bin:/bin",
            "OUT": str(tmp_path),
            "PYTHON": str(ROOT / ".venv/bin/python"),
            "CUDA_VISIBLE_DEVICES": "",
        },
    )
    assert done.returncode == 3 and done.stderr.strip().splitlines() == ["gpu_check: no CUDA device here"]
    assert not (tmp_path / "gpu_check.json").exists()


def test_its_options_go_through_vgrays_doors(tmp_path):
    """``python -m vgray.bench.gpu_check`` with a bad count or output folder: one line, exit 2,
    nothing made (run as ``scripts/gpu_check.sh`` runs it, in a process of its own)."""
    import sys

    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for argv, says in [
        (["--count", "0", "--out", str(tmp_path / "o")], "--count=0 must be at least 1"),
        (["--size", "48", "-1", "--out", str(tmp_path / "o")], "--size=-1 must be at least 1"),
        (["--out", str(tmp_path / "dangling")], "--out "),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "vgray.bench.gpu_check", "jpegs", *argv], capture_output=True, text=True
        )
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling"]
