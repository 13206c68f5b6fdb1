"""The README's commands are the code's: every `vgray ...` line in it parses and its config loads,
the Makefile's demo runs for real, and .ci/run calls the README's test command."""

import re
import shlex
from pathlib import Path

import pytest

from vgray.cli import build_parser
from vgray.config import load_config

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def readme_commands():
    """Every command line in the README's shell blocks that starts with `vgray`."""
    blocks = re.findall(r"```(?:sh|bash|console)\n(.*?)```", README, flags=re.S)
    lines = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        lines += [line.strip().lstrip("$ ").strip() for line in joined.splitlines()]
    return [line for line in lines if line.startswith("vgray ")]


def test_setup_is_the_two_make_commands():
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_has_commands_for_every_subcommand():
    used = {shlex.split(c)[1] for c in readme_commands()}
    assert {"synth", "profile", "eval", "train", "bench", "locate", "sweep"} <= used


@pytest.mark.parametrize("line", readme_commands())
def test_readme_command_parses_and_its_config_loads(line, monkeypatch):
    monkeypatch.setenv("VGRAY_DATASETS", "/datasets")
    argv = shlex.split(line.split("#")[0])[1:]
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
