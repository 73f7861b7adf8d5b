"""``python -m wmproxy``: wmproxy-server (its arguments, its help)."""

import sys

from gevent import monkey

monkey.patch_all()  # before anything opens a socket, as bin/wmproxy-server does

from wmproxy.cli import server_main  # noqa: E402

sys.exit(server_main())
