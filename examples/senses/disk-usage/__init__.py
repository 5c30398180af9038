"""How full the root filesystem is: signals every measurement."""

import shutil

from nerved import SenseContext


def compute(ctx: SenseContext) -> dict[str, float]:
    usage = shutil.disk_usage("/")
    return {"path": "/", "used": round(usage.used / usage.total, 4), "free": usage.free}
