"""wmproxy: a proxy suite on gevent (forward proxy, center link, reverse proxy, forwarding)."""

__version__ = "0.1.0"
