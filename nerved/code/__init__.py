"""User code as nerve handles it: the packages' snapshots (what the master reads),
their import from a snapshot (in a worker), and the import check.
"""
