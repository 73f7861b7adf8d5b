"""The forward proxy: HTTP, CONNECT, SOCKS5 and SOCKS4/4a on one port."""
