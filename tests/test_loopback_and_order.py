"""Issue 18: a local Ray that vgray starts listens on loopback only; report.html links only http(s)
URLs; and the checks come before the effects (no ``STORAGE/NAME`` left behind, no Ray started, no
output folder made) for sweeps and ``vgray extract``. The command-line cases run the installed
``vgray`` script: exit 2, exactly one stderr line, nothing written, no Ray session."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html import escape
from pathlib import Path

import pytest
import yaml

from vgray.cli import main

VGRAY = Path(sys.executable).parent / "vgray"
TINY = {
    "data": {"root": "synthetic:tiny", "resize": [32, 48], "num_workers": 0},
    "model": {"pretrained": "none", "aggregation": "gem"},
}


# -- loopback: every listening socket of a local Ray vgray starts -----------------------------------

# Starts Ray the way a sweep does (init_ray, the results actor, tasks on workers), then lists the
# listening TCP sockets of every process of that Ray: the driver's descendants (GCS, raylet,
# dashboard, agents, workers) and any process whose command line names the session's folder.
LISTENERS = r"""
import json, os, sys
import ray
import psutil  # Ray's own copy: importable once ray is
from vgray.distributed.results import get_results_actor
from vgray.distributed.sweep import init_ray

url = init_ray(None, num_cpus=2)
actor = get_results_actor("loopback", sys.argv[1], [])
ray.get(actor.rows.remote())

@ray.remote
def pid():
    return os.getpid()

ray.get([pid.remote() for _ in range(3)])
me = psutil.Process()
procs = {p.pid: p for p in me.children(recursive=True)}
procs[me.pid] = me
for p in psutil.process_iter(["cmdline"]):
    if any(os.environ["RAY_TMPDIR"] in part for part in (p.info["cmdline"] or [])):
        procs[p.pid] = p
found = []
for p in procs.values():
    try:
        name = " ".join(p.cmdline()[:1]) or p.name()
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                found.append({"pid": p.pid, "process": p.name(), "cmd": name[-60:], "ip": c.laddr.ip,
                              "port": c.laddr.port})
    except psutil.NoSuchProcess:
        pass
print(json.dumps({"dashboard": url, "listening": found}))
ray.shutdown()
"""


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a v6 socket bound to v4 loopback
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def test_a_local_ray_started_by_vgray_listens_on_loopback_only(tmp_path):
    session = tempfile.mkdtemp(prefix="vgray-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": session}
    env.pop("RAY_ADDRESS", None)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", LISTENERS, str(tmp_path / "store")],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
            cwd=tmp_path,
        )
    finally:
        shutil.rmtree(session, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    listening = report["listening"]
    names = {s["process"] for s in listening}
    # the test sees Ray's servers at all: the GCS, the raylet and the workers' gRPC servers
    assert {"gcs_server", "raylet"} <= names and len(listening) >= 5, listening
    outside = [
        f"{s['process']} (pid {s['pid']}, {s['cmd']}) on {s['ip']}:{s['port']}"
        for s in listening
        if not is_loopback(s["ip"])
    ]
    assert not outside, "listening outside loopback: " + "; ".join(outside)
    assert report["dashboard"].startswith("http://127.0.0.1:"), report["dashboard"]


# -- report.html: only http(s) URLs become links ---------------------------------------------------


def _sweep_folder(folder: Path, dashboard: str) -> Path:
    """A finished two-seed sweep's folder (rows made by the results model) whose plan names ``dashboard``."""
    from vgray.config import load_config
    from vgray.results import make_plan, make_row, rows_to_parquet

    folder.mkdir(parents=True)
    rows = [
        make_row(
            load_config(base=TINY, overrides=[f"seed={s}"]),
            f"t{s}",
            f"tiny-gem-s{s}",
            {"test/tiny/R@1": 40.0 + s, "test/tiny/R@5": 70.0 + s},
        )
        for s in (0, 1)
    ]
    (folder / "results.parquet").write_bytes(rows_to_parquet(rows))
    (folder / "plan.json").write_bytes(make_plan("links", "eval", 2, [], False, None, finished=True))
    plan = json.loads((folder / "plan.json").read_text())
    (folder / "plan.json").write_text(json.dumps({**plan, "dashboard": dashboard}))
    return folder


def _page(tmp_path: Path, dashboard: str, capsys) -> str:
    folder = _sweep_folder(tmp_path / "links", dashboard)
    assert main(["report", str(folder), "--out", str(tmp_path / "page")]) == 0, capsys.readouterr().err
    return (tmp_path / "page" / "report.html").read_text()


def _hrefs(html: str):
    return re.findall(r"""href\s*=\s*["']([^"']*)["']""", html, flags=re.IGNORECASE)


@pytest.mark.parametrize(
    "url",
    [
        "javascript:alert(1)",
        "JAVASCRIPT:alert(document.cookie)",
        " java\tscript:alert(1)",  # browsers drop the tab and the leading space
        "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
        "vbscript:msgbox(1)",
        "//dash.example.org:8265",  # no scheme: relative to wherever the page is opened
        "http:alert(1)",  # http without a host
    ],
)
def test_a_dashboard_url_that_is_not_http_is_shown_as_text_not_linked(url, tmp_path, capsys):
    html = _page(tmp_path, url, capsys)
    for href in _hrefs(html):
        scheme = href.split(":", 1)[0].lower() if ":" in href.split("/", 1)[0] else ""
        assert scheme in ("", "http", "https") and not href.startswith("//"), href
        assert "alert" not in href and "base64" not in href and "dash.example" not in href, href
    assert escape(url) in html  # still readable on the page


@pytest.mark.parametrize(
    "url,href",
    [
        ("http://10.1.2.3:8265", "http://10.1.2.3:8265"),
        ("HTTPS://dash.example.org/ray?x=1&y=<2>", "HTTPS://dash.example.org/ray?x=1&amp;y=&lt;2&gt;"),
    ],
)
def test_an_http_dashboard_url_is_still_a_link(url, href, tmp_path, capsys):
    html = _page(tmp_path, url, capsys)
    assert f'<a href="{href}">' in html


# -- checks before effects -----------------------------------------------------------------------


def test_the_storage_probe_leaves_no_folder_it_made(tmp_path):
    from vgray.distributed.storage import storage_problem

    target = tmp_path / "store" / "deeper" / "sweep"
    assert storage_problem(str(target)) is None
    assert not (tmp_path / "store").exists()
    assert storage_problem(f"file://{target}") is None  # a URI through pyarrow's filesystem too
    assert not (tmp_path / "store").exists()
    (tmp_path / "kept").mkdir()
    assert storage_problem(str(tmp_path / "kept")) is None
    assert (tmp_path / "kept").is_dir() and not any((tmp_path / "kept").iterdir())  # there before: stays


def _sweep(d: Path, store: Path, **raw) -> str:
    body = {"name": "order", "base": TINY, "storage": str(store), "grid": {"model.aggregation": ["gem"]}, **raw}
    path = d / f"sweep{len(list(d.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def _held(d: Path, store: Path) -> str:
    """A sweep whose folder already holds its Tune state (a run before this one)."""
    (store / "order").mkdir(parents=True)
    (store / "order" / "tuner.pkl").write_bytes(b"state of an earlier run")
    return _sweep(d, store)


MANY = 4096  # more CPUs than any machine the suite runs on

CASES = {
    "more CPUs than the machine": (
        lambda d, o: ["sweep", _sweep(d, o / "store", resources={"cpu": MANY})],
        {},
        "do not fit this machine",
    ),
    "more memory than the machine": (
        lambda d, o: ["sweep", _sweep(d, o / "store", resources={"cpu": 1, "memory_gb": 2**20})],
        {},
        "do not fit this machine",
    ),
    "a GPU where none is visible": (
        lambda d, o: ["sweep", _sweep(d, o / "store", resources={"cpu": 1, "gpu": 1})],
        {"CUDA_VISIBLE_DEVICES": ""},
        "1 GPU",
    ),
    "CPUs beyond --num-cpus": (
        lambda d, o: ["sweep", _sweep(d, o / "store", resources={"cpu": 3}), "--num-cpus", "2"],
        {},
        "do not fit this machine",
    ),
    "--resume of a sweep that never ran": (
        lambda d, o: ["sweep", _sweep(d, o / "a" / "b" / "store"), "--resume"],
        {},
        "no sweep to resume",
    ),
    "--resume with too many CPUs too": (
        lambda d, o: ["sweep", _sweep(d, o / "store", resources={"cpu": MANY}), "--resume"],
        {},
        "no sweep to resume",
    ),
    "a second run without --resume": (lambda d, o: ["sweep", _held(d, o / "held")], {}, "pass --resume"),
}


# Through the installed script: one refusal of the machine check and one of the folder check (each
# process costs seconds); the others in this process, where Ray must not be up already.
SWEEP_SCRIPT = {"more CPUs than the machine", "--resume of a sweep that never ran"}


@pytest.mark.parametrize("case", list(CASES))
def test_a_sweep_refused_before_launch_leaves_nothing_and_starts_no_ray(case, tmp_path, monkeypatch, capsys):
    import ray

    build, extra_env, expected = CASES[case]
    d, out = tmp_path / "in", tmp_path / "out"
    d.mkdir()
    argv = build(d, out)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if case in SWEEP_SCRIPT:
        env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray"), **extra_env}
        proc = subprocess.run([str(VGRAY), *argv], capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env)
        code, err = proc.returncode, proc.stderr
    else:
        assert not ray.is_initialized(), "an earlier test left Ray up: the local machine check would not run"
        for key, value in {"RAY_TMPDIR": str(tmp_path / "ray"), **extra_env}.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        code, err = main(argv), capsys.readouterr().err
        assert not ray.is_initialized(), "Ray was started"
    lines = err.strip().splitlines()
    assert code == 2, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("vgray: error: "), err[-2000:]
    assert expected in lines[0], lines[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no STORAGE/NAME, nothing
    assert not (tmp_path / "ray").exists(), "Ray was started"


def test_extract_refuses_a_bad_index_before_ray_starts_or_its_folder_is_made(tiny_root, tmp_path):
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")}
    env.pop("RAY_ADDRESS", None)
    base = [
        str(VGRAY),
        "extract",
        "--set",
        f"data.root={tiny_root}",
        "--set",
        "data.resize=[32,48]",
        "--set",
        "model.pretrained=none",
        "--set",
        "model.aggregation=gem",
        "--set",
        "data.num_workers=0",
        "--num-cpus",
        "2",
    ]
    for extra, expected in (
        (["--out", str(tmp_path / "shards"), "--index", "IVFnot,PQ"], "IVFnot,PQ"),
        (["--out", str(tmp_path / "shards"), "--set", "test.knn=HNSWx"], "HNSWx"),
    ):
        proc = subprocess.run(base + extra, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert len(lines) == 1 and lines[0].startswith("vgray: error: ") and expected in lines[0], proc.stderr[-2000:]
        assert not (tmp_path / "shards").exists(), sorted((tmp_path / "shards").rglob("*"))
        assert not (tmp_path / "ray").exists(), "Ray was started"


def test_train_on_a_cluster_checks_its_network_before_joining(tiny_root, tmp_path):
    """``test.knn=PQ7`` cannot encode the 256-d descriptors of resnet18conv4 + GeM: a refusal that
    needs the network, made before ``--address`` is joined (here an address where no Ray listens)."""
    env = {**os.environ, "RAY_TMPDIR": str(tmp_path / "ray")}
    env.pop("RAY_ADDRESS", None)
    argv = [
        str(VGRAY),
        "train",
        "--address",
        "127.0.0.1:9",
        "--out",
        str(tmp_path / "run"),
        "--set",
        f"data.root={tiny_root}",
        "--set",
        "data.resize=[32,48]",
        "--set",
        "model.pretrained=none",
        "--set",
        "model.aggregation=gem",
        "--set",
        "data.num_workers=0",
        "--set",
        "test.knn=PQ7",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("vgray: error: ") and "PQ7" in lines[0], proc.stderr[-2000:]
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)  # no run folder, no Ray session
