"""The programs' entry points (console scripts, ``bin/``, ``python -m wmproxy``).

Imported before anything else of wmproxy: signals that would kill a starting process are
ignored, and gevent patches the standard library before any module takes a socket from it.
"""

import signal
import sys


def _prepare() -> None:
    # Reload (SIGHUP), log reopening (SIGUSR1) and upgrade (SIGUSR2) must never kill a starting process: ignored
    # until the running process installs its handlers.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)  # (a master's upgrade; nothing else's)
    import gevent
    from gevent import monkey

    # gevent records, by default, the stack that spawned each greenlet (for its debugging tree): a
    # stack walk per connection and per HTTP/2 stream that nothing here reads (GEVENT_TRACK_GREENLET_TREE
    # says otherwise for a debugging session)
    if "GEVENT_TRACK_GREENLET_TREE" not in __import__("os").environ:
        gevent.config.track_greenlet_tree = False
    # patch_all tells gevent's plugins of each step through entry points: 25 look-ups, each of
    # which reads the metadata of every installed distribution (a quarter of a second of CPU in a
    # venv of 100 of them, at every start). The plugins are found once here, as gevent would
    # find them, and the look-ups answered from that.
    from importlib import metadata

    real = metadata.entry_points
    found = real()
    metadata.entry_points = lambda **params: found.select(**params)  # type: ignore[assignment]
    try:
        monkey.patch_all()
    finally:
        metadata.entry_points = real


def server() -> None:
    """wmproxy-server; exits with its status."""
    _prepare()
    from .cli import server_main

    sys.exit(server_main())


def client() -> None:
    """wmproxy-client; exits with its status."""
    _prepare()
    from .cli import client_main

    sys.exit(client_main())


def rust() -> None:
    """wmproxy, the Rust wmproxy's command line (wmproxy/rustcli.py); exits with its status.
    With --forever a plain supervisor (no gevent) runs it again each time it dies."""
    if "--forever" in sys.argv[1:] and "--daemon" not in sys.argv[1:]:
        from .rustcli import forever

        sys.exit(forever(sys.argv[1:]))
    _prepare()
    from .rustcli import main

    sys.exit(main())


def worker() -> None:
    """A worker process of a master (wmproxy/workers.py starts ``python -m wmproxy.launch
    worker <program>``); exits with its status."""
    _prepare()
    from .workers import worker_main

    sys.exit(worker_main())


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker()
elif __name__ == "__main__" and sys.argv[1:2] == ["rust"]:  # (rustcli.forever's child)
    del sys.argv[1]
    rust()
