"""Layer-4 forwarding ([stream]): TCP now, UDP later."""
