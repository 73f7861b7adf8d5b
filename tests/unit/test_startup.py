"""What a start costs: the programs' start imports nothing that only some configurations need
(the acme library and requests under it: a third of a second; wsproto), and gevent's patching answers
its plugin look-ups from one scan of the installed distributions, leaving importlib as it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
from importlib import metadata
real = metadata.entry_points
from wmproxy import launch
launch._prepare()
import gevent.monkey, socket
import wmproxy.cli, wmproxy.app, wmproxy.process
print(json.dumps({"heavy": sorted(m for m in ("acme", "josepy", "requests", "wsproto") if m in sys.modules),
                  "restored": metadata.entry_points is real,
                  "patched": gevent.monkey.is_module_patched("socket")}))
"""


def test_a_start_imports_no_acme_nor_wsproto_and_leaves_entry_points_as_they_were():
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {"heavy": [], "restored": True, "patched": True}, got
