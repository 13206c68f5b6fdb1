"""The Reference pages, generated from the code at build time (mkdocs-gen-files runs this file).

Each page is a walk over what the code already defines: the config schema (``vgray.config``), the
argparse parser (``vgray.cli.build_parser``), the sweep file's sections (``vgray.distributed.spec``),
the component registries (``vgray.registry``), the pretrained sources (``vgray.models.pretrained``)
and the datasets catalogue (``vgray.data.catalog``). Nothing here is written twice by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import sys
import typing

import mkdocs_gen_files

from vgray import config, registry
from vgray.bench import BENCHMARKS
from vgray.cli import build_parser
from vgray.data.catalog import CATALOG, catalog_rows
from vgray.distributed import spec
from vgray.environment import CHECKS, VARIABLES
from vgray.models.pretrained import RECORDS

spec.fill_registries()  # the component packages fill the registries the config names

GENERATED = "!!! note\n    Generated from the code when the site is built (`docs/gen_reference.py`).\n"
_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "&#124;", "*": "&#42;", "_": "&#95;", "`": "&#96;", "[": "&#91;"}
    | {"]": "&#93;", "\\": "&#92;", "\n": " "}
)


def text(value) -> str:
    """``value`` as the text of a Markdown table cell: nothing in it is read as Markdown or HTML."""
    return str(value).translate(_ESCAPES)


def code(value) -> str:
    return f"<code>{text(value)}</code>" if value != "" else ""


def summary(obj) -> str:
    """The first paragraph of ``obj``'s own docstring (not an inherited one), on one line."""
    doc = (obj.__doc__ or "").strip()
    return " ".join(doc.split("\n\n", 1)[0].split())


def doc_text(doc: str) -> str:
    """A docstring's text for a table cell, its ``literals`` (and :func:`roles`) in code font."""
    parts = re.sub(r":\w+:`~?([^`]+)`", r"``\1``", doc).split("``")
    return "".join(code(part) if i % 2 else text(part) for i, part in enumerate(parts))


def table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def yaml_value(value) -> str:
    """A value as YAML would show it (``null``, ``true``, ``[480, 640]``); strings as they are."""
    if isinstance(value, (set, frozenset)):
        value = sorted(value)
    return value if isinstance(value, str) else json.dumps(value, default=str)


def allowed(f: dataclasses.Field) -> str:
    """What a field's checks (``_key`` / ``_field`` metadata) allow."""
    meta, out = f.metadata, []
    choices = meta.get("choices")
    if isinstance(choices, registry.Registry):
        anchor = choices.family.replace(" ", "-")
        out.append(f"[{choices.family}](registries.md#{anchor}): " + ", ".join(map(code, choices.names())))
    elif choices is not None:
        out.append("one of " + ", ".join(code(yaml_value(c)) for c in choices))
    if meta.get("positive"):
        out.append("&gt; 0")
    if "range" in meta:
        out.append(text("[{}, {}]".format(*meta["range"])))
    if "length" in meta:
        out.append(f"{meta['length']} values")
    return "; ".join(out)


def default_of(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def field_row(dotted: str, f: dataclasses.Field) -> list:
    """key (with an anchor named after it), type (the annotation), default, allowed values, help."""
    key = f'<a id="{dotted}"></a>{code(dotted)}'
    return [key, code(f.type), code(yaml_value(default_of(f))), allowed(f), text(f.metadata.get("help", ""))]


FIELD_HEADER = ["key", "type", "default", "allowed", "help"]


def fields_table(cls, prefix: str) -> str:
    return table(FIELD_HEADER, [field_row(prefix + f.name, f) for f in dataclasses.fields(cls)])


# -- config keys ------------------------------------------------------------------------------------


def section_help(path: str) -> str:
    cls, out = config.Config, ""
    for part in path.split("."):
        out = next(f for f in dataclasses.fields(cls) if f.name == part).metadata.get("help", "")
        cls = typing.get_type_hints(cls)[part]
    return out


def config_page() -> str:
    sections: dict = {}
    for dotted, f in config.all_keys().items():
        section = dotted.rpartition(".")[0]
        sections.setdefault(section, []).append(field_row(dotted, f))
    out = [
        "# Config keys\n",
        GENERATED,
        "One nested config holds every knob of a run: the sections `data`, `model`, `train` (with "
        "`train.augmentation`) and `test`, and a few keys at the top. Every key has a default (the "
        "paper's protocol). A config is built from the defaults, then a YAML file (`--config FILE`, "
        "nested sections), then each `--set key=value` in order (a dotted key; the value is read as "
        "YAML: `--set data.resize=[240,320]`). Unknown keys, wrong types, values outside what is "
        "allowed and the paper's illegal combinations are refused when the config is loaded, naming the "
        "key. `vgray eval --help-config` prints the same keys.\n",
    ]
    for section in [s for s in sections if s] + [""]:
        title = f"`{section}`: {section_help(section)}" if section else "Top level"
        out += [f"## {title}\n", table(FIELD_HEADER, sections[section])]
    return "\n".join(out)


# -- command line -------------------------------------------------------------------------------------


def option_rows(parser: argparse.ArgumentParser) -> list:
    rows = []
    for a in parser._actions:
        if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        names = ", ".join(a.option_strings) or (a.metavar or a.dest)
        takes_value = a.nargs != 0
        metavar = (a.metavar or a.dest.upper()) if takes_value and a.option_strings else ""
        shown = takes_value and a.default is not None and a.default not in (argparse.SUPPRESS, [])
        default = code(yaml_value(a.default)) if shown else ""
        choices = ", ".join(code(c) for c in a.choices) if a.choices else ""
        rows.append([code(names), code(metavar), default, choices, text(a.help or "")])
    return rows


def subcommands(parser: argparse.ArgumentParser) -> list:
    """``(name, help, subparser)`` of the parser's subcommands, in the order they were added."""
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helps = {c.dest: c.help for c in a._choices_actions}
            return [(name, helps.get(name, ""), p) for name, p in a.choices.items()]
    return []


def command_section(parser: argparse.ArgumentParser, level: int) -> list:
    out = [f"```\n{parser.format_usage().strip()}\n```\n"]
    rows = option_rows(parser)
    if rows:
        out.append(table(["option", "metavar", "default", "choices", "help"], rows))
    for _, help, sub in subcommands(parser):
        out += [f"{'#' * level} `{sub.prog}`\n", f"{text(help)}\n", *command_section(sub, level + 1)]
    if parser.prog == "vgray bench":
        rows = [[code(n), doc_text(summary(importlib.import_module(m)))] for n, m in BENCHMARKS.items()]
        out += ["The benchmarks (`vgray bench NAME --help` lists each one's options):\n", table(["NAME", "what"], rows)]
    return out


def cli_page() -> str:
    parser = build_parser()
    intro = [
        "# Command line\n",
        GENERATED,
        f"{text(parser.description)}. Exit status 0 on success, 2 on a bad config or bad input (one "
        "line on stderr naming the key, file or value at fault), 1 on a failure while running.\n",
    ]
    return "\n".join(intro + command_section(parser, 2))


# -- sweep YAML -----------------------------------------------------------------------------------------

SWEEP_SECTIONS = {
    "search": spec.Search,
    "search.space.KEY": spec.Dimension,
    "scheduler": spec.Scheduler,
    "resources": spec.Resources,
    "mlflow": spec.MLflow,
}


def sweep_page() -> str:
    options = {f.name: f for f in dataclasses.fields(spec.Options)}
    rows = []
    for key, help in spec.TOP_KEYS.items():
        f = options.get(key)
        if f is not None:
            rows.append(field_row(key, f))
        else:
            link = f" ([below](#{key}-section))" if key in SWEEP_SECTIONS else ""
            rows.append([f'<a id="{key}"></a>{code(key)}', "", "", "", text(help) + link])
    out = [
        "# Sweep YAML\n",
        GENERATED,
        "A sweep file describes one study: `vgray sweep SWEEP.yaml` expands it into trials and runs "
        "them on Ray. Keys under `base`, `grid`, `variants` and `search.space` are [config keys]"
        "(config.md), dotted. Any other key is refused, naming the nearest allowed ones.\n",
        "## Top-level keys\n",
        table(FIELD_HEADER, rows),
    ]
    for section, cls in SWEEP_SECTIONS.items():
        anchor = section.replace(".KEY", "").replace(".", "-")
        out += [f"## `{section}` {{#{anchor}-section}}\n", f"{doc_text(summary(cls))}\n"]
        out.append(fields_table(cls, section + "."))
    return "\n".join(out)


# -- registries -------------------------------------------------------------------------------------------


def member_summary(reg: registry.Registry, name: str) -> str:
    """What a registry member is: its builder's docstring, else its class's, else the first line of
    its module's docstring where that module holds no other member of the registry (one per file)."""
    builder, kind = reg._builders[name], reg.info(name).get("type")
    for obj in (builder, kind):
        if obj is not None and getattr(obj, "__name__", "") != "<lambda>" and summary(obj):
            return summary(obj)
    module = getattr(kind or builder, "__module__", "")
    peers = [n for n in reg.names() if getattr(reg.info(n).get("type") or reg._builders[n], "__module__", "") == module]
    doc = sys.modules[module].__doc__ if module in sys.modules and peers == [name] else None
    return (doc or "").strip().split("\n", 1)[0]


def registries_page() -> str:
    out = [
        "# Registries\n",
        GENERATED,
        "Components are registered under the names configs use. A config key that names a member is "
        "checked against its registry when the config is loaded.\n",
    ]
    for reg in [r for r in vars(registry).values() if isinstance(r, registry.Registry)]:
        rows = []
        for name in reg.names():
            info = reg.info(name)
            kind = info.get("type")
            facts = "; ".join(f"{k}={yaml_value(v)}" for k, v in info.items() if k not in ("type", "check"))
            rows.append(
                [code(name), doc_text(member_summary(reg, name)), text(facts), code(kind.__name__) if kind else ""]
            )
        key = f"named by [`{reg.key}`](config.md#{reg.key})" if reg.key else ""
        out += [
            f"## {reg.family} {{#{reg.family.replace(' ', '-')}}}\n",
            f"{len(rows)} members; {key}.\n",
            table(["name", "what", "declared", "class"], rows),
        ]
    return "\n".join(out)


# -- pretrained sources, datasets -----------------------------------------------------------------------------


def sources_page() -> str:
    rows = []
    for (arch, source), rec in sorted(RECORDS.items(), key=lambda item: (item[0][1], item[0][0])):
        size = "x".join(map(str, rec.input_size)) if rec.input_size else "any"
        link = f'<a href="{text(rec.url)}">{text(rec.file)}</a>'
        dims = ", ".join(map(str, rec.dims))
        norm = f"{list(rec.mean)} / {list(rec.std)}"
        rows.append([code(source), code(arch), link, text(dims), size, text(norm), text(rec.licence)])
    out = [
        "# Pretrained sources\n",
        GENERATED,
        "`model.pretrained` names one of these sources (or `none`, or a weights file). A source is "
        "published per architecture (the backbone's source network); downloads are cached in torch's "
        "hub folder. Where a source is released per descriptor size, `{dim}` in its file stands for "
        "`model.fc_output_dim`, one of the sizes listed.\n",
        table(["source", "architecture", "file", "sizes", "input (HxW)", "mean / std", "licence"], rows),
    ]
    return "\n".join(out)


def datasets_page() -> str:
    rows = [
        [
            code(r["name"]) + (" &#42;" if r["paper"] else ""),
            text(r["title"]),
            text(", ".join(r["layouts"])),
            text(r["split"]),
            text(r["database_text"]),
            text(r["queries_text"]),
            text("" if r["scored"] is None else r["scored_text"]),
            text(r["source"]),
            text(r["note"]),
        ]
        for r in catalog_rows()
    ]
    aliases = [[code(k.name), ", ".join(map(code, k.aliases))] for k in CATALOG.values() if k.aliases]
    out = [
        "# Datasets catalogue\n",
        GENERATED,
        "The known datasets with the published sizes of each split, as `vgray datasets list` prints "
        "them; `vgray datasets check ROOT` counts a folder against them. \\* marks the paper's six; ~ a "
        "figure rounded as the paper's Table 2 prints it (a count agrees when it rounds to it); ? is "
        "unknown (no source states it); scored: the queries scored, where a source states them apart "
        "(MSLS val: 740 of its 747 candidates).\n",
        table(["name", "title", "layouts", "split", "database", "queries", "scored", "source", "note"], rows),
        "## Aliases\n",
        "`vgray datasets check --name` also takes these names:\n",
        table(["name", "aliases"], aliases),
    ]
    return "\n".join(out)


def environment_page() -> str:
    rows = [
        [f'<span id="{name}"></span>' + code(name), "yes" if name in CHECKS else "no", text(meaning)]
        for name, meaning in VARIABLES.items()
    ]
    out = [
        "# Environment variables\n",
        GENERATED,
        "Every variable vgray, or a library for vgray, reads (`vgray.environment.VARIABLES`). Those "
        "checked are checked once, when `vgray` starts (after its options are read, before the command "
        "runs): a bad value ends the command with exit status 2 and one line naming the variable. See "
        "[Inputs and their doors](../guides/inputs.md).\n",
        table(["variable", "checked at start-up", "who reads it, what it means, what is checked"], rows),
    ]
    return "\n".join(out)


PAGES = {
    "reference/config.md": config_page,
    "reference/cli.md": cli_page,
    "reference/sweep-yaml.md": sweep_page,
    "reference/registries.md": registries_page,
    "reference/sources.md": sources_page,
    "reference/datasets.md": datasets_page,
    "reference/environment.md": environment_page,
}
for path, page in PAGES.items():
    with mkdocs_gen_files.open(path, "w") as out:
        out.write(page())
