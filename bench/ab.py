"""A/B of two checkouts of wmproxy on one `[http]` location, side by side in alternating rounds:
the CPU per request (user + system of each server) and requests/s of small keep-alive GETs, the
way docs/BENCHMARKS.md's "what was cut" rows are measured when callgrind's count would miss the
kernel's part (a syscall saved, say).

    git worktree add /tmp/before HEAD~1
    tools/in-netns .venv/bin/python bench/ab.py /tmp/before . --location 'file_server = { root = "{www}" }' \\
        --path /small.txt --rounds 5 --seconds 4

Both servers run from the start, pinned to CPU 0, and only the measured one gets load (wrk
-c50 on CPU 1, Bench.run_wrk): what one changes, the other is measured beside it in the same
minutes. ``{www}`` in the location is a directory with small.txt (17 bytes); ``{origin}`` the
port of an nginx origin serving it (for a proxy_url location). Bench.in_rounds prints each round and the
medians of after / before, CPU per request first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench import Bench, free_port


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before", type=Path, help="the checkout measured as 'before' (a worktree of the commit before)")
    ap.add_argument("after", type=Path, help="the checkout measured as 'after'")
    ap.add_argument("--location", default='file_server = { root = "{www}" }',
                    help="the body of the [[http.server.location]] both serve ({www}, {origin} filled in)")
    ap.add_argument("--path", default="/small.txt", help="the path wrk asks for")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=4)
    args = ap.parse_args()
    b = Bench(args.seconds, 50, rounds=args.rounds)
    try:
        www = b.www()
        origin = b.nginx() if "{origin}" in args.location else 0
        location = args.location.replace("{www}", str(www)).replace("{origin}", str(origin))
        runs = []
        for name, root in (("before", args.before), ("after", args.after)):
            port = free_port()
            conf = b.tmp / f"ab-{name}.toml"
            conf.write_text(f'log_level = "warning"\n[[http.server]]\nbind = "127.0.0.1:{port}"\n'
                            f'[[http.server.location]]\n{location}\n')
            proc = b.start(f"wmproxy-{name}", [sys.executable, str(root.resolve() / "bin" / "wmproxy-server"), "-c",
                                                str(conf)], port)
            url = f"http://127.0.0.1:{port}{args.path}"
            runs.append((name, lambda name=name, url=url, proc=proc: b.run_wrk(name, [url], "ab", [proc])))
        b.in_rounds("ab", runs, [("after / before", "after", "before", 0.0)],
                    cpu_ratios=[("after / before", "after", "before", 0.0)])
        return 0
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(main())
