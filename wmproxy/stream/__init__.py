"""Layer-4 forwarding ([stream]): TCP (tcp.py, with the websocket bridges) and UDP sessions (udp.py)."""
