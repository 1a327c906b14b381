"""Fault-injection suite (issue #4): kills, fail points, leases, poison, restarts, proxies."""
