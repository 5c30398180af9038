"""What the tests of nerved.config share: a SPEC example, and parsing a dedented text."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nerved.config import ConfigError, NerveConfig, parse_config

PATH = Path("/etc/nerve/nerve.yaml")
DAY = 86_400_000

SPEC_EXAMPLE = """\
senses:
  disk-usage:
    group: system        # senses of one group share one worker process
    throttle: 10s        # at most one compute per 10 s; triggers inside the window coalesce
    timeout: 5s          # a compute running longer is abandoned and logged as an error
    gracePeriod: 2s      # on stop/reload, time an in-flight compute gets before its worker is killed
reflexes:
  - kind: sense          # recompute a sense ...
    sense: disk-usage
    interval: 30s        # ... every 30 s
  - kind: sense
    sense: disk-alert
    on: [disk-usage]     # ... or whenever these senses signal
  - kind: workflow       # start a thread of a workflow whenever these senses signal;
    workflow: cleanup    # the signal's payload becomes the thread's trigger payload
    on: [disk-alert]
workflows:
  cleanup:
    concurrency: 1       # max active threads
    overflow: drop       # drop | queue
  code-review:
    concurrency: 3
    overflow: queue
    maxQueue: 20         # queue only; default 100; when full the OLDEST queued request is dropped
    idleTimeout: 30s     # worker exits after this long with no thread; default 30s
    drainTimeout: 60s    # on code change/removal, wait this long for active threads; default 60s
    maxSteps: 1000       # a thread that takes more steps fails; default 1000
"""

# The SPEC example recomputes and listens to `disk-alert` without declaring it; declared here.
SPEC_EXAMPLE_DECLARED = SPEC_EXAMPLE.replace("reflexes:\n", "  disk-alert:\nreflexes:\n", 1)


def parse(text: str) -> NerveConfig:
    return parse_config(textwrap.dedent(text), PATH)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    assert str(caught.value) == "\n".join(caught.value.errors)
    return list(caught.value.errors)
