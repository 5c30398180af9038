"""Peer scripts: the same workloads on other engines, each run by the peers' own Python."""
