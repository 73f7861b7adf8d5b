"""ACME: certificates obtained and renewed on their own (client.py: one order with certbot's
``acme`` library; manager.py: which names, when, and what went wrong). The files live in
acme_dir, read by the listeners through net/certstore.py."""
