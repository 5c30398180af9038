"""``python -m bench`` (``make bench``): every benchmark, one after the other."""

from __future__ import annotations

import runpy
import sys

for name in (
    "bench.control",
    "bench.workflows",
    "bench.growth",
    "bench.scale",
    "bench.retries",
    "bench.waits",
    "bench.timebox",
    "bench.recovery",
    "bench.abuse",
):
    print(f"\n== {name}", flush=True)
    sys.argv = [name]
    runpy.run_module(name, run_name="__main__")
