"""A/B of two checkouts of wmproxy on one `[http]` location, side by side in alternating rounds:
the CPU per request (user + system of each server) and requests/s of small keep-alive GETs, the
way docs/BENCHMARKS.md's "what was cut" rows are measured when callgrind's count would miss the
kernel's part (a syscall saved, say).

    git worktree add /tmp/before HEAD~1
    tools/in-netns .venv/bin/python bench/ab.py /tmp/before . --location 'file_server = { root = "{www}" }' \\
        --path /small.txt --rounds 5 --seconds 4

Both servers run from the start, pinned to CPU 0, and only the measured one gets load (wrk
-c50 on CPU 1): what one changes, the other is measured beside it in the same minutes. ``{www}``
in the location is a directory with small.txt (17 bytes); ``{origin}`` the port of an nginx
origin serving it (for a proxy_url location). Prints each round and the medians.
"""

from __future__ import annotations

import argparse
import re
import statistics
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
    b = Bench(args.seconds, 50)
    try:
        www = b.www()
        origin = b.nginx() if "{origin}" in args.location else 0
        location = args.location.replace("{www}", str(www)).replace("{origin}", str(origin))
        servers = {}
        for name, root in (("before", args.before), ("after", args.after)):
            port = free_port()
            conf = b.tmp / f"ab-{name}.toml"
            conf.write_text(f'log_level = "warning"\n[[http.server]]\nbind = "127.0.0.1:{port}"\n'
                            f'[[http.server.location]]\n{location}\n')
            proc = b.start(f"wmproxy-{name}", [sys.executable, str(root.resolve() / "bin" / "wmproxy-server"), "-c",
                                                str(conf)], port)
            servers[name] = (proc, port)
        cpu: dict[str, list[float]] = {"before": [], "after": []}
        rates: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.rounds):
            for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
                proc, port = servers[name]
                out, used, _ = b.load(["wrk", "-c50", "-t1", f"-d{args.seconds}s", f"http://127.0.0.1:{port}{args.path}"],
                                      [proc])
                found = re.search(r"Requests/sec:\s+([\d.]+)", out)
                if found is None:
                    print(f"  wrk failed against {name}: {out[-300:]}")
                    return 1
                rps = float(found.group(1))
                cpu[name].append(1e6 * used / (rps * args.seconds))
                rates[name].append(rps)
                print(f"  round {r + 1} {name:<6}  CPU {cpu[name][-1]:6.1f} us/request  {rps:8.0f} req/s", flush=True)
        for name in ("before", "after"):
            print(f"{name:<6} median CPU {statistics.median(cpu[name]):.1f} us/request "
                  f"({', '.join(f'{x:.1f}' for x in cpu[name])}), {statistics.median(rates[name]):.0f} req/s")
        return 0
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(main())
