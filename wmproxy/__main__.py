"""``python -m wmproxy``: wmproxy-server (its arguments, its help)."""

from wmproxy.launch import server

server()
