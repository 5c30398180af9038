"""The 1-minute load average per CPU; signals only when the host is busy."""

import os

from nerved import SenseContext


async def compute(ctx: SenseContext) -> dict[str, float] | None:
    one, _five, _fifteen = os.getloadavg()
    per_cpu = one / (os.cpu_count() or 1)
    return {"load1": one, "perCpu": round(per_cpu, 3)} if per_cpu > 1.0 else None
