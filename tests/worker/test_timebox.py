"""The bound on moderator calls, in a process of its own: whatever a call does, both of its
timers are disarmed when it is over (a hard timer left armed would kill an idle worker 3 s
later). What the bounds do to runs is tested through a real nerved in test_workflows.py."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from support import REPO

SCRIPT = """
    import ctypes, signal
    from nerved.worker.timebox import Overrun, Timebox, _Itimerspec

    box = Timebox(soft=0.2, hard=30)

    def spin():
        while True:
            pass

    def fail():
        raise ValueError("no")

    def swallow():
        try:
            spin()
        except BaseException:
            return "too late"

    def armed():
        remaining = _Itimerspec()
        libc = ctypes.CDLL(None)
        assert libc.timer_gettime(box._kill._timer, ctypes.byref(remaining)) == 0
        hard = remaining.it_value.tv_sec or remaining.it_value.tv_nsec
        return signal.getitimer(signal.ITIMER_REAL) != (0.0, 0.0), bool(hard)

    outcomes = []
    for function in (lambda: 42, armed, fail, spin, swallow):
        try:
            outcomes.append(box.call(function))
        except Overrun:
            outcomes.append("Overrun")
        except ValueError:
            outcomes.append("ValueError")
        assert armed() == (False, False), (function, armed())
    print(outcomes)
"""


def test_every_call_leaves_both_timers_disarmed() -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        capture_output=True, text=True, cwd=REPO, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[42, (True, True), 'ValueError', 'Overrun', 'Overrun']"
