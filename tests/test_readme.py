"""The README's and the guides' commands are the code's: every `vgray ...` line in their shell blocks
parses and its config loads, the Makefile's demo runs for real, and .ci/run calls the README's test
command. The README stays a front door: short, no dated measurement (those live on the evidence
pages it links, which exist)."""

import re
import shlex
from pathlib import Path

import pytest

from vgray.cli import build_parser
from vgray.config import load_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
GUIDES = sorted((ROOT / "docs" / "guides").glob("*.md"))
DATE = re.compile(r"\b20\d\d-\d\d-\d\d\b")


def shell_commands(text: str):
    """Every command line in a Markdown text's shell blocks that starts with `vgray`."""
    blocks = re.findall(r"```(?:sh|bash|console)\n(.*?)```", text, flags=re.S)
    lines = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        lines += [line.strip().lstrip("$ ").strip() for line in joined.splitlines()]
    # A trailing `# comment` is not part of the command (it may hold an apostrophe).
    return [line.split(" #")[0].strip() for line in lines if line.startswith("vgray ")]


def documented_commands():
    """(page, command) for the README and every guide."""
    pages = [("README.md", README)] + [(f"docs/guides/{p.name}", p.read_text()) for p in GUIDES]
    return [(name, line) for name, text in pages for line in shell_commands(text)]


def test_setup_is_the_two_make_commands():
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_subcommand_is_shown_somewhere():
    """Each `vgray` subcommand has at least one example in the README or a guide."""
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    used = {shlex.split(c)[1] for _, c in documented_commands()}
    assert set(subparsers.choices) <= used


def test_readme_is_a_front_door():
    """At most 250 lines, the recipes' commands, no dated measurement; every relative link
    (the headline table's evidence pages included) names a file that exists."""
    assert len(README.splitlines()) <= 250
    assert not DATE.findall(README), "dated figures belong on docs/evidence/ pages"
    used = {shlex.split(c)[1] for c in shell_commands(README)}
    assert {"eval", "train", "sweep", "report"} <= used
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert any(link.startswith("docs/evidence/") for link in local)
    for link in local:
        assert (ROOT / link).exists(), f"README links to {link}, which does not exist"


@pytest.mark.parametrize("page", GUIDES, ids=lambda p: p.name)
def test_guides_hold_no_dated_measurement(page):
    """Guides say how; measurements (with their date, machine and command) live in docs/evidence/."""
    assert not DATE.findall(page.read_text())


@pytest.mark.parametrize(("page", "line"), documented_commands())
def test_documented_command_parses_and_its_config_loads(page, line, monkeypatch):
    monkeypatch.setenv("VGRAY_DATASETS", "/datasets")
    argv = shlex.split(line)[1:]
    args = build_parser().parse_args(argv)
    if hasattr(args, "overrides") and args.command != "bench":
        config = getattr(args, "config", None)
        load_config(ROOT / config if config else None, args.overrides)


def test_make_demo_is_the_quickstart_sweep(capsys):
    """The demo recipe's vgray command is the README's, and its sweep expands (the sweep itself
    runs in tests/test_sweep_ray.py on the tiny world; `make demo` takes a few minutes)."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    command = next(line.strip() for line in recipe.splitlines() if "vgray sweep" in line)
    argv = shlex.split(command.replace("$(BIN)/", ""))[1:]
    assert argv[:2] == ["sweep", "sweeps/quickstart.yaml"]
    assert f"vgray {' '.join(argv)}" in README
    from vgray.cli import main

    assert main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("sweep quickstart: 4 trials (train)")


def test_version():
    """`vgray --version` prints the package's version."""
    import subprocess
    import sys

    import vgray

    out = subprocess.run([sys.executable, "-m", "vgray.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"vgray {vgray.__version__}"
