#!/usr/bin/env python3
"""Generate what is derived from the code: docs/CONFIG.md (every key of the typed config, its
default and meaning), the man pages (docs/man/*.1, from the argument parsers, with
docs/man/sections.txt) and the shell completions (conf/completion/, bash and zsh).

    .venv/bin/python tools/gen_docs.py          # write them
    .venv/bin/python tools/gen_docs.py --check  # exit 1 if one is not current (tests/unit/test_generated.py)

Needs argparse-manpage and shtab (the test extras)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wmproxy import __version__, config  # noqa: E402
from wmproxy.cli import CLIENT, SERVER, make_parser  # noqa: E402

PROGRAMS = (SERVER, CLIENT)
COMPLETE_FILES = {"bash": "_shtab_compgen_files", "zsh": "_files"}
COMPLETE_DIRS = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/"}


# -- docs/CONFIG.md ----------------------------------------------------------------------------


def _default(f: dataclasses.Field) -> str:
    value = f.default
    conv = f.metadata.get("conv")
    if value is config.REQUIRED:
        return "**required**"
    if value is None or value == () or value == "":
        return "-"
    if conv is config.to_duration:
        return f'`"{value:g}s"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, frozenset):
        return "`[" + ", ".join(f'"{v}"' for v in sorted(value)) + "]`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value) + "]`"
    if isinstance(value, str):
        return f'`"{value}"`'
    return f"`{value}`"


def _rows(cls: type, path: str, out: list[str], tables: list[tuple[str, type, str]]) -> None:
    for f in dataclasses.fields(cls):
        meta = f.metadata
        name = f"{path}.{f.name}" if path else f.name
        if "section" in meta:
            tables.append((f"[{name}]", meta["section"], meta["doc"]))
            continue
        table = getattr(meta["conv"], "table", None)
        if table is not None:
            tables.append((f"[[{name}]]", table, meta["doc"]))
            continue
        aliases = f" (also: {', '.join(meta['aliases'])})" if meta["aliases"] else ""
        doc = meta["doc"].replace("|", "\\|")
        out.append(f"| `{f.name}`{aliases} | {_default(f)} | {doc} |")


def config_reference() -> str:
    out = [
        "# Configuration reference",
        "",
        "Generated from the typed configuration (`wmproxy/config/`, a module per section) by",
        "`tools/gen_docs.py`; a test checks that it is current. Every key a file may hold is here: an",
        "unknown key is an error that names the file, the key path and the keys accepted there.",
        "Durations take `30`, `\"10s\"`, `\"500ms\"`, `\"2min\"`, `\"1h\"`; sizes `65536`, `\"64k\"`,",
        "`\"1m\"`; addresses `\"host:port\"`.",
        "The examples in `conf/` show them in use.",
        "",
    ]
    queue: list[tuple[str, type, str]] = [("top level", config.Config, "the file itself")]
    seen = set()
    while queue:
        title, cls, doc = queue.pop(0)
        name = title.strip("[]") if title != "top level" else ""
        if title in seen:
            continue
        seen.add(title)
        rows: list[str] = []
        tables: list[tuple[str, type, str]] = []
        _rows(cls, name, rows, tables)
        out += [f"## {title}" if title == "top level" else f"## `{title}`", "", doc[0].upper() + doc[1:] + ".", ""]
        if rows:
            out += ["| key | default | meaning |", "| --- | --- | --- |", *rows, ""]
        if tables:
            out += ["Tables inside: " + ", ".join(f"`{t}`" for t, _, _ in tables) + ".", ""]
        queue[0:0] = tables
    return "\n".join(out)


# -- man pages and completions -----------------------------------------------------------------


RUST = "wmproxy"  # the Rust wmproxy's command line (wmproxy/rustcli.py)


def _parser(prog: str):
    if prog == RUST:
        from wmproxy.rustcli import make_parser as rust_parser

        p = rust_parser()
    else:
        p = make_parser(prog)
    for action in p._actions:
        if action.metavar == "FILE":
            action.complete = COMPLETE_FILES
        elif action.metavar == "DIR":
            action.complete = COMPLETE_DIRS
    return p


def man_page(prog: str) -> str:
    from argparse_manpage.manpage import Manpage

    short = {SERVER: "forward proxy, reverse proxy and center (tunnel) server of wmproxy",
             CLIENT: "center (tunnel) client of wmproxy: local proxy and published mappings",
             RUST: "the Rust wmproxy's commands and config files, served by this wmproxy"}[prog]
    data = {"description": short, "date": f"wmproxy {__version__}", "project_name": "wmproxy", "version": __version__,
            "manual_title": "wmproxy manual"}
    if prog != RUST:  # (the environment, signals and files of the two programs)
        data["include"] = str(ROOT / "docs" / "man" / "sections.txt")
    page = Manpage(_parser(prog), _data=data)
    return str(page) if prog == RUST else str(page).replace("CONFIG_FILE", f"/etc/wmproxy/{prog.split('-')[1]}.toml")


def completion(prog: str, shell: str) -> str:
    import shtab

    return shtab.complete(_parser(prog), shell)


def render_all() -> dict[Path, str]:
    files = {ROOT / "docs" / "CONFIG.md": config_reference()}
    for prog in (*PROGRAMS, RUST):
        files[ROOT / "docs" / "man" / f"{prog}.1"] = man_page(prog)
        files[ROOT / "conf" / "completion" / f"{prog}.bash"] = completion(prog, "bash")
        files[ROOT / "conf" / "completion" / f"_{prog}"] = completion(prog, "zsh")
    return files


def main(argv: list[str]) -> int:
    stale = []
    for path, text in render_all().items():
        text = text if text.endswith("\n") else text + "\n"
        if "--check" in argv:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path.relative_to(ROOT)))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if stale:
        print("not current (run tools/gen_docs.py): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
