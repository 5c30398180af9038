"""The metrics' textfile under a real systemd (PID 1 in a sandbox, tests/sandbox.py): the
unit as shipped, plus the drop-in the README tells operators to add (``ReadWritePaths=``
of node_exporter's directory, which ``ProtectSystem=strict`` makes read-only), the service
running as the ``nerve`` user with ``UMask=0027``.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sandbox import Sandbox, ensure_nerve_user, unavailable
from support import QUICK, wait_until

pytestmark = pytest.mark.systemd

WHY_NOT = unavailable()


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    if WHY_NOT:
        pytest.skip(WHY_NOT)
    ensure_nerve_user()
    box = Sandbox(f"nt-{os.getpid()}-{request.node.name[5:30]}")
    try:
        yield box
    finally:
        box.stop()


def test_the_textfile_appears_and_parses(sandbox: Sandbox) -> None:
    exporter = sandbox.dir / "node-exporter"  # as /var/lib/prometheus/node-exporter
    textfile = exporter / "nerve.prom"
    config = f"workflows:\n  quick:\nmetrics: {{textfile: {textfile}, interval: 1s}}\n"
    sandbox.prepare(config, {"quick": QUICK})
    exporter.mkdir()
    nerve = pwd.getpwnam("nerve")
    os.chown(exporter, nerve.pw_uid, nerve.pw_gid)
    (sandbox.units / "nerved.service.d" / "60-metrics.conf").write_text(
        f"[Service]\nReadWritePaths={exporter}\n"
    )
    sandbox.start()
    sandbox.systemctl("start", "nerved.service")
    run = sandbox.nervectl_json("workflow", "trigger", "quick", "--wait")
    assert run["status"] == "completed"

    def completed() -> float | None:
        if not textfile.exists():
            return None
        for family in text_string_to_metric_families(textfile.read_text()):
            for sample in family.samples:
                if sample.name == "nerve_runs_total" and sample.labels == {
                    "workflow": "quick",
                    "status": "completed",
                }:
                    return sample.value or None
        return None

    assert wait_until(completed, timeout=10, what="the textfile with the run") == 1
    info = textfile.stat()
    assert (info.st_mode & 0o777, info.st_uid) == (0o644, nerve.pw_uid)  # despite UMask=0027
    assert sorted(os.listdir(exporter)) == ["nerve.prom"]  # no temporary file left
    text = sandbox.nervectl("metrics").stdout
    assert 'nerve_runs_total{status="completed",workflow="quick"} 1.0' in text
    assert not any("metrics:" in str(e.get("MESSAGE")) for e in sandbox.journal("-p", "warning"))
    assert Path(textfile).read_text().startswith("# HELP nerve_build_info")
