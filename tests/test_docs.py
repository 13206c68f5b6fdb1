"""The documentation site: ``mkdocs build --strict`` passes (as ``make docs``), and the Reference
pages generated from the code (docs/gen_reference.py) hold every config key, every sweep-file key and
every registry member; the config reference is also read back from a headless Chromium's DOM.

One build per session (a module-scoped fixture) serves every test here."""

from __future__ import annotations

import dataclasses
import html
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_report import chromium  # the suite's headless Chromium: skipped where absent, failed under CI

from vgray import config, registry
from vgray.distributed import spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    # mkdocs-material and a plugin print a banner about MkDocs 2 on every build: not ours to show.
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "DISABLE_MKDOCS_2_WARNING": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return out


def page(site: Path, name: str) -> str:
    return (site / "reference" / name / "index.html").read_text(encoding="utf-8")


def row(page_html: str, anchor: str) -> str:
    """The text of the table row holding ``id="anchor"``, tags stripped and entities decoded."""
    found = re.search(rf'<tr>(?:(?!</tr>).)*?id="{re.escape(anchor)}".*?</tr>', page_html, re.S)
    assert found, f"no row with id {anchor!r}"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", found.group(0))).split())


def words(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.slow
def test_the_site_builds_strictly(site):
    for name in ("config", "cli", "sweep-yaml", "registries", "sources", "datasets", "environment", "api"):
        assert (site / "reference" / name / "index.html").is_file(), name


@pytest.mark.slow
def test_config_reference_has_a_row_for_every_key_with_its_help(site):
    built = page(site, "config")
    for key, f in config.all_keys().items():
        text = row(built, key)
        assert key in text and words(f.metadata["help"]) in text, key


@pytest.mark.slow
def test_sweep_reference_has_every_top_level_key_and_section_key(site):
    options = {f.name for f in dataclasses.fields(spec.Options)}
    assert options <= set(spec.TOP_KEYS), "every typed sweep option must be a top-level key"
    built = page(site, "sweep-yaml")
    for key in spec.TOP_KEYS:
        assert key in row(built, key)
    for section, cls in (("search", spec.Search), ("scheduler", spec.Scheduler), ("resources", spec.Resources)):
        for f in dataclasses.fields(cls):
            assert words(f.metadata["help"]) in row(built, f"{section}.{f.name}")


@pytest.mark.slow
def test_registries_reference_lists_every_member_under_its_family(site):
    spec.fill_registries()
    built = page(site, "registries")
    families = [r for r in vars(registry).values() if isinstance(r, registry.Registry)]
    assert families and all(r.filled() for r in families)
    for reg in families:
        anchor = reg.family.replace(" ", "-")
        section = html.unescape(built.split(f'id="{anchor}"', 1)[1].split("<h2", 1)[0])
        for name in reg.names():
            assert f"<code>{name}</code>" in section, f"{reg.family} {name}"


@pytest.mark.slow
def test_environment_reference_has_a_row_for_every_variable_and_the_doors_page_names_every_door(site):
    from vgray.environment import CHECKS, VARIABLES

    built = page(site, "environment")
    for name, meaning in VARIABLES.items():
        text = row(built, name)
        assert words(meaning) in text and ("yes" if name in CHECKS else "no") in text.split(name, 1)[1], name
    doors = (ROOT / "docs" / "guides" / "inputs.md").read_text()
    # every door (module, function) the code routes its inputs through: named on the page, and real
    for module, name in (
        ("vgray.paths", "check_path"),
        ("vgray.atomic", "target"),
        ("vgray.values", None),
        ("vgray.values", "refuse_empty"),
        ("vgray.environment", None),
        ("vgray.checkpoint", "mismatches"),
        ("vgray.config", None),
        ("vgray.distributed.spec", None),
        ("vgray.distributed.lock", None),
        ("vgray.distributed.interrupt", None),
    ):
        assert f"`{module}{'.' + name if name else ''}`" in doors, (module, name)
        assert name is None or callable(getattr(importlib.import_module(module), name)), (module, name)
    for name in CHECKS:
        assert f"`{name}`" in doors, name


@pytest.mark.slow
def test_config_reference_in_chromium_shows_a_key_with_its_help(site):
    target = (site / "reference" / "config" / "index.html").as_uri()
    dom = chromium("--dump-dom", target).stdout
    found = row(dom, "model.backbone")
    assert "model.backbone" in found and "backbone (registry name)" in found
    assert "resnet18conv4" in found  # the default, and a member of the registry it names
