"""The synthetic world written as Ray tasks, resumably (vgray.distributed.synth), on the tiny preset
through the same code path as the R-SF-sized one; the free-space check; the rsf preset's counts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from vgray.cli import main
from vgray.data import synthetic as S
from vgray.data.synthetic import write as W
from vgray.distributed.synth import generate_on_ray, run_chunks
from vgray.errors import BadInput


def listing(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path, with its bytes (the marker without its timing)."""
    files = {}
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        data = f.read_bytes()
        if f.name == S.MARKER:
            marker = json.loads(data)
            marker.pop("build_seconds")
            data = json.dumps(marker, sort_keys=True).encode()
        files[f.relative_to(root).as_posix()] = data
    return files


def test_counts_need_no_world():
    tiny = S.PRESETS["tiny"]
    for si in range(len(S.SPLITS)):
        world = S.build_world(tiny, 0, si)
        for kind in S.KINDS:
            assert S.image_count(tiny, 0, si, kind) == len(S.capture_plan(world, tiny, 0, kind)["x"])
    rsf = S.image_counts(S.PRESETS["rsf"], 0)
    assert rsf["test"]["database"] >= 1_050_000 and 2_000 <= rsf["test"]["queries"] <= 5_000
    assert rsf["train"]["database"] >= 500_000
    assert S.PRESETS["rsf"].ray and (S.PRESETS["rsf"].height, S.PRESETS["rsf"].width) == (60, 80)


@pytest.mark.slow
def test_ray_generation_equals_generate(ray_local, tiny_root, tmp_path):
    out = generate_on_ray(tmp_path / "ray", "tiny", 0)
    assert listing(out) == listing(tiny_root)  # same names, same bytes, no bookkeeping left
    before = (out / S.MARKER).stat().st_mtime_ns
    assert generate_on_ray(out, "tiny", 0) == out  # finished: nothing to do
    assert (out / S.MARKER).stat().st_mtime_ns == before


@pytest.mark.slow
def test_interrupted_generation_resumes_to_the_same_bytes(ray_local, tiny_root, tmp_path):
    out = tmp_path / "resumed"
    plan = W.plan_resumable(out, "tiny", 0)
    assert plan is not None and plan.done == 0

    def killed_halfway(jobs, update):
        run_chunks(jobs[: len(jobs) // 2], update)
        raise KeyboardInterrupt  # as a Ctrl-C or a lost driver would stop it

    with pytest.raises(KeyboardInterrupt):
        W.write_resumable(plan, killed_halfway)
    assert not (out / S.MARKER).exists()
    # What a worker killed mid-chunk leaves: its chunk without a done-marker, part of the chunk's
    # files (each complete), a temporary file; and one in the bookkeeping folder.
    _, _, si, kind, start, stop, _ = chunk = plan.jobs[1]
    (out / W.PROGRESS / W.chunk_name(chunk)).unlink()
    world = S.build_world(S.PRESETS["tiny"], 0, si)
    capture = S.capture_plan(world, S.PRESETS["tiny"], 0, kind)
    folder = out / "images" / S.SPLITS[si] / kind
    files = [folder / S.file_name(world, S.SPLITS[si], kind, i, capture) for i in range(start, stop)]
    for f in files[::3]:
        f.unlink()
    (folder / f".{files[0].name}.12345.tmp").write_bytes(b"\xff\xd8half a jpeg")
    (out / W.PROGRESS / ".x.done.999.tmp").write_text("")
    with pytest.raises(BadInput, match="unfinished resumable generation"):
        S.generate(out, "tiny", 0)  # the other path leaves it alone

    again = W.plan_resumable(out, "tiny", 0)
    assert again is not None and again.started and 0 < again.done < again.total
    assert len(again.jobs) == len(plan.jobs) - len(plan.jobs) // 2 + 1
    assert generate_on_ray(out, "tiny", 0) == out.absolute()
    assert listing(out) == listing(tiny_root)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs: smaller than the tiny preset (about 2,000 JPEGs of 4 KB blocks)."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()[:200]}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_too_large_for_the_disk_is_refused_before_anything_is_written(small_disk, capsys):
    for generate in (S.generate, W.plan_resumable, generate_on_ray):
        with pytest.raises(BadInput) as e:
            generate(small_disk / "out", "tiny", 0)
        message = str(e.value)
        assert "\n" not in message and "MiB" in message and "free" in message, message
        assert os.listdir(small_disk) == []
    code = main(["synth", str(small_disk / "out"), "--preset", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "need about" in err[0] and "free" in err[0], err
    assert os.listdir(small_disk) == []


def test_synth_bad_address_is_one_line(tmp_path, capsys):
    for address, message in (("nowhere", "not a Ray cluster address"), ("127.0.0.1:1", "no Ray cluster answers")):
        code = main(["synth", str(tmp_path / "out"), "--preset", "tiny", "--address", address])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
        assert not (tmp_path / "out").exists()
