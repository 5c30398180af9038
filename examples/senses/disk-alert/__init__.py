"""Signals when the last disk-usage measurement is over the threshold (retrospection)."""

from nerved import SenseContext

THRESHOLD = 0.9


def compute(ctx: SenseContext) -> dict[str, object] | None:
    last = ctx.logs.query(source="sense", type="signal", ref_id="disk-usage", limit=1)
    if not last:
        return None
    used = last[0].payload["used"]
    if used < THRESHOLD:
        return None
    ctx.log(f"disk at {used:.0%}, over {THRESHOLD:.0%}")
    return {"path": last[0].payload["path"], "used": used}
