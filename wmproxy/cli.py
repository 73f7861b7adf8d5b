"""Command lines of ``wmproxy-server`` and ``wmproxy-client`` (configargparse).

Three layers, highest first: flags, ``WMPROXY_*`` environment variables, the TOML file
(``-c FILE``). Without a file the embedded default runs: a forward proxy on 127.0.0.1:8090.
Flags and variables are placed at their key path and validated with the file, so an error
names where the value came from.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

import configargparse

from . import __version__, config
from .errors import ConfigError

EMBEDDED_DEFAULT: dict = {"proxy": {}}
COMMANDS = ("run", "status", "reload", "stop", "file-server")
FILE_SERVER_BIND = "127.0.0.1:8869"


def file_server_config(root: str, listen: str, browse: bool) -> dict:
    """The config of ``file-server``: one [http] server with one file_server location."""
    return {"http": {"server": [{"bind": listen, "location": [
        {"rule": "/", "file_server": {"root": os.path.abspath(root), "browse": browse}}]}]}}


@dataclass(frozen=True)
class Opt:
    """A flag that sets one config key."""

    flags: tuple[str, ...]
    path: tuple[str, ...]
    help: str
    metavar: str
    append: bool = False

    @property
    def dest(self) -> str:
        return "_".join(self.path)

    @property
    def env(self) -> str:
        """WMPROXY_ and the last long flag: --password -> WMPROXY_PASSWORD."""
        return "WMPROXY_" + self.flags[-1].lstrip("-").replace("-", "_").upper()


OPTIONS = (
    Opt(("-b", "--bind"), ("proxy", "bind"), "forward proxy address (default 127.0.0.1:8090)", "ADDR"),
    Opt(("--user", "--username"), ("proxy", "username"), "username clients must give", "USER"),
    Opt(("--pass", "--password"), ("proxy", "password"),
        "password clients must give (prefer WMPROXY_PASSWORD: flags show in ps)", "PASS"),
    Opt(("--center-bind",), ("center", "bind"), "be a center server: address center clients connect to", "ADDR"),
    Opt(("--server",), ("center", "server"), "be a center client of this center server", "ADDR"),
    Opt(("--tls",), ("center", "tls"), "TLS on the center link: true (default) or false", "BOOL"),
    Opt(("--ca",), ("center", "ca"), "center client: CA file to verify the server with", "FILE"),
    Opt(("--server-name",), ("center", "server_name"), "center client: name the server certificate carries",
        "NAME"),
    Opt(("--cert",), ("center", "cert"), "center link certificate (PEM)", "FILE"),
    Opt(("--key",), ("center", "key"), "center link private key (PEM)", "FILE"),
    Opt(("--allow",), ("proxy", "allow"), "client network allowed, e.g. 10.0.0.0/8 (repeatable)", "CIDR",
        append=True),
    Opt(("--deny",), ("proxy", "deny"), "client network refused (repeatable)", "CIDR", append=True),
    Opt(("--udp-bind",), ("proxy", "udp_bind"), "enable SOCKS5 UDP ASSOCIATE with relay sockets on this "
        "address, port 0, e.g. 127.0.0.1:0", "ADDR"),
    Opt(("--flag",), ("proxy", "flag"), "protocols served: 'http https socks5 socks4'", "LIST"),
    Opt(("--connect-timeout",), ("proxy", "connect_timeout"), "upstream connect timeout, e.g. 10s", "TIME"),
    Opt(("--idle-timeout",), ("proxy", "idle_timeout"), "close connections idle this long, e.g. 5min", "TIME"),
    Opt(("--max-connections",), ("proxy", "max_connections"), "concurrent client connections", "N"),
    Opt(("--log-level",), ("log_level",), "debug, info, warning or error", "LEVEL"),
    Opt(("--log-file",), ("log_file",), "log to FILE instead of stderr; SIGUSR1 reopens it", "FILE"),
    Opt(("--pidfile",), ("pidfile",), "write the pid to FILE; refuse to start if that pid is alive", "FILE"),
    Opt(("--control",), ("control",), "control API address, e.g. 127.0.0.1:8837 ('' disables)", "ADDR"),
    Opt(("--control-token",), ("control_token",), "bearer token for the control API (prefer the variable)", "TOKEN"),
    Opt(("--run-user",), ("user",), "started as root: bind, then serve as this user", "USER"),
    Opt(("--run-group",), ("group",), "with --run-user: serve with this group (default: the user's)", "GROUP"),
    Opt(("--grace",), ("grace",), "on stop, time live connections get to finish, e.g. 10s", "TIME"),
)


def options(prog: str) -> tuple[Opt, ...]:
    """The flags of ``prog``. In wmproxy-client --username/--password are the center link's
    credentials (its local proxy is authenticated by the server's [proxy])."""
    if prog != "wmproxy-client":
        return OPTIONS
    moved = {("proxy", "username"): ("center", "username"), ("proxy", "password"): ("center", "password")}
    return tuple(Opt(o.flags, moved[o.path], o.help.replace("clients must give", "to log in to the center server"),
                     o.metavar, o.append) if o.path in moved else o for o in OPTIONS)


def make_parser(prog: str) -> configargparse.ArgumentParser:
    p = configargparse.ArgumentParser(
        prog=prog,
        description="wmproxy: forward proxy (HTTP, HTTPS CONNECT, SOCKS5, SOCKS4/4a) on one port, "
        "the center link (tunnel), [stream] TCP forwarding, control API.",
        epilog="Each flag also reads a WMPROXY_* variable (shown in brackets). Without -c the embedded "
        "default runs: a forward proxy on 127.0.0.1:8090. The commands status, reload and stop talk to "
        "the control API named in the configuration.",
    )
    p.add_argument("command", nargs="?", default="run", choices=COMMANDS,
                   help="run (default): serve; status: print the running process's status; reload: make it "
                   "reload its configuration; stop: make it stop gracefully; file-server: serve the files "
                   "of --root on --listen (no config file)")
    p.add_argument("-r", "--root", metavar="DIR", help="file-server: the directory served (default: .)")
    p.add_argument("-l", "--listen", metavar="ADDR", help=f"file-server: address (default {FILE_SERVER_BIND})")
    p.add_argument("--browse", action="store_true", help="file-server: list directories without an index file")
    p.add_argument("-c", "--config", env_var="WMPROXY_CONFIG", metavar="FILE", help="TOML configuration file")
    p.add_argument("--check", action="store_true", help="validate the configuration, print the result, exit 0 or 1")
    p.add_argument("-V", "--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--daemon", action="store_true", env_var="WMPROXY_DAEMON",
                   help="detach and run in the background (logs to --log-file)")
    for o in options(prog):
        p.add_argument(*o.flags, dest=o.dest, env_var=o.env, help=o.help, metavar=o.metavar,
                       action="append" if o.append else "store", default=None)
    return p


def overrides(prog: str, args, argv: list[str]) -> list[config.Override]:
    """The flags and variables that were given, as config overrides naming their origin."""
    out = []
    for o in options(prog):
        value = getattr(args, o.dest)
        if value is None:
            continue
        on_line = any(a == f or a.startswith(f + "=") for a in argv for f in o.flags)
        origin = f"command line {o.flags[-1]}" if on_line else f"environment {o.env}"
        out.append(config.Override(o.path, value, origin))
    return out


def _control_command(prog: str, command: str, cfg: config.Config) -> int:
    from . import control

    method, path = {"status": ("GET", "/status"), "reload": ("POST", "/reload"), "stop": ("POST", "/stop")}[command]
    try:
        status, body = control.call(cfg, method, path)
    except control.ControlClientError as e:
        print(f"{prog} {command}: {e}", file=sys.stderr)
        return 1
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {"error": body.decode("utf-8", "replace")}
    if status >= 300:
        print(f"{prog} {command}: {answer.get('error', answer)}", file=sys.stderr)
        return 1
    if command == "status":
        print(control.format_status(answer))
    elif command == "reload":
        print(f"reloaded: added {answer['added'] or 'none'}, removed {answer['removed'] or 'none'}, "
              f"changed {answer['changed'] or 'none'}, {answer['unchanged']} unchanged")
    else:
        print(f"stopping (grace {answer['grace_seconds']}s)")
    return 0


def run(prog: str, argv: list[str] | None = None) -> int:
    """Parse, load, then run a command or serve until stopped. Returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    args = make_parser(prog).parse_args(argv)
    config_file = os.path.abspath(args.config) if args.config else None
    default = EMBEDDED_DEFAULT
    if args.command == "file-server":
        if config_file:
            print(f"{prog}: file-server takes --root and --listen, not a configuration file", file=sys.stderr)
            return 2
        default = file_server_config(args.root or ".", args.listen or FILE_SERVER_BIND, args.browse)
        args.command = "run"
    elif args.root or args.listen or args.browse:
        print(f"{prog}: --root, --listen and --browse go with the file-server command", file=sys.stderr)
        return 2
    try:
        cfg = config.load(config_file, overrides(prog, args, argv), default=default)
    except ConfigError as e:
        print(f"{prog}: configuration error: {e}", file=sys.stderr)
        return 1
    if args.check:
        from .app import check_files

        try:
            check_files(cfg, config_file)
        except ConfigError as e:
            print(f"{prog}: configuration error: {e}", file=sys.stderr)
            return 1
        print(f"{prog}: configuration OK ({args.config or 'embedded default'})")
        return 0
    if args.command != "run":
        return _control_command(prog, args.command, cfg)
    from .process import serve  # imported late: --check, --help and the commands need no gevent hub

    return serve(prog, cfg, config_file, overrides(prog, args, argv), daemon=args.daemon)


def _quiet_on_closed_stdout(prog: str) -> int:
    """run(prog), ending quietly when stdout is a pipe whose reader went away
    (``wmproxy-server status | head -3``): as other Unix tools do, no traceback."""
    try:
        status = run(prog)
        sys.stdout.flush()
        return status
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)  # (Python would flush into the closed pipe at exit)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def server_main() -> int:
    return _quiet_on_closed_stdout("wmproxy-server")


def client_main() -> int:
    return _quiet_on_closed_stdout("wmproxy-client")
