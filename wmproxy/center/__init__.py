"""The center link: one multiplexed (TLS) connection between wmproxy-client and wmproxy-server."""
