"""I/O helpers shared by every feature: reader, relay, dial, DNS, HTTP body moves."""
