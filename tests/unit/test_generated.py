"""What tools/gen_docs.py derives from the code is current, and works where it is used."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest

from wmproxy import config

ROOT = Path(__file__).resolve().parents[2]


def test_generated_files_are_current():
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_docs.py"), "--check"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def _keys(cls: type, path: str = ""):
    for f in dataclasses.fields(cls):
        name = f"{path}.{f.name}" if path else f.name
        inner = f.metadata.get("section") or getattr(f.metadata.get("conv"), "table", None)
        if inner is not None:
            yield from _keys(inner, name)
        else:
            yield path, f.name


def test_the_reference_has_every_key_under_its_table():
    text = (ROOT / "docs" / "CONFIG.md").read_text()
    sections = {}
    for block in text.split("\n## ")[1:]:
        title = block.split("\n", 1)[0].strip("`[] ")
        sections[title if title != "top level" else ""] = block
    for table, key in _keys(config.Config):
        assert f"| `{key}`" in sections[table], f"{table}.{key}"


@pytest.mark.parametrize("prog,typed,expected", [
    ("wmproxy-client", "--ser", {"--server", "--server-name"}),
    ("wmproxy-server", "--center", {"--center-bind"}),
    ("wmproxy-server", "re", {"reload"}),
])
def test_bash_completion_completes_options_and_commands(prog, typed, expected):
    script = ROOT / "conf" / "completion" / f"{prog}.bash"
    func = "_shtab_" + prog.replace("-", "_")
    r = subprocess.run(["bash", "-c", f'source "{script}"; COMP_WORDS=({prog} {typed}); COMP_CWORD=1; '
                        f'COMP_LINE="{prog} {typed}"; COMP_POINT=${{#COMP_LINE}}; {func}; printf "%s\\n" "${{COMPREPLY[@]}}"'],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert {w.strip() for w in r.stdout.split()} == expected


def test_client_completion_offers_no_server_only_option():
    text = (ROOT / "conf" / "completion" / "wmproxy-client.bash").read_text()
    assert "--center-bind" not in text and "file-server" not in text


@pytest.mark.parametrize("prog", ["wmproxy-server", "wmproxy-client"])
def test_man_page_renders_without_warnings(prog):
    page = ROOT / "docs" / "man" / f"{prog}.1"
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True, timeout=30)
    if r.returncode == 127:
        pytest.skip("groff missing")
    assert r.returncode == 0 and not r.stderr, r.stderr
    text = page.read_text()
    for section in ("NAME", "SYNOPSIS", "SIGNALS", "ENVIRONMENT", "FILES", "EXIT STATUS"):
        assert f".SH {section}" in text
    assert "--run-user" in text.replace("\\-", "-")


def test_readme_first_screen_and_links():
    text = (ROOT / "README.md").read_text()
    first = text.splitlines()[:12]
    assert any(line.strip().startswith("make run") for line in first)
    assert any(line.strip().startswith("make test") for line in first)
    assert "Python 3.11" in "\n".join(first)
    for doc in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        body = doc.read_text()
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", body):
            assert (doc.parent / target).exists(), f"{doc.name} links {target}"
        for stale in ("shared/docs", "see #7", "issue 4", "yet to come"):
            assert stale not in body, f"{doc.name}: {stale}"
    for conf in (ROOT / "conf").glob("*.toml"):
        assert "Until the center link lands" not in conf.read_text()
    for source in (ROOT / "wmproxy").rglob("*.py"):  # the spec is cited from the project's own copy
        assert "shared/docs" not in source.read_text(), source
