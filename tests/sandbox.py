"""A real systemd as PID 1 for service tests, adapted from the systemd-sandbox tool its authors used.

The tool is vendored in tests/tools/ (so that a clean clone has it). A sandbox boots
systemd in private namespaces with the host's file system: units come from a directory of
ours, the service runs as the real ``nerve`` user, journald runs inside. Tests that need it
skip cleanly where the machine cannot run one (not root, no systemd binaries, no cgroup2).

The service must be able to run nerve as the ``nerve`` user, under the unit's sandboxing:
the development venv (a Python under /root) is out of its reach, and so is a checkout under
/tmp (``PrivateTmp=yes``). So :func:`service_venv` keeps a venv from Debian's
/usr/bin/python3 under /var/lib/nerve-test and installs the checkout into it (not
editable) once per test session; the sandboxes' roots live there too. Each checkout (a git
worktree) has a venv of its own there, so that test sessions of two checkouts at once do
not install over each other's code.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest
from support import REPO, wait_until

# Set to 1 by whoever runs the suite as root but wants the host left as it is (README,
# Quickstart): no sandbox is booted, no `nerve` user added, nothing written under SCRATCH;
# the tests that need them skip, saying why.
NO_SYSTEMD = os.environ.get("NERVE_TEST_NO_SYSTEMD") == "1"
NO_SYSTEMD_WHY = (
    "NERVE_TEST_NO_SYSTEMD=1: no systemd sandbox, no nerve user, nothing in /var/lib/nerve-test"
)

TOOLS = REPO / "tests" / "tools"
SANDBOX = TOOLS / "systemd-sandbox"
SCRATCH = Path("/var/lib/nerve-test")
SERVICE_VENV = SCRATCH / f"venv-{hashlib.sha256(str(REPO).encode()).hexdigest()[:8]}"
_installed = False


def unavailable() -> str | None:
    """Why sandboxes cannot run here, or None."""
    if NO_SYSTEMD:
        return NO_SYSTEMD_WHY
    if os.geteuid() != 0:
        return "systemd sandboxes need root"
    check = subprocess.run([str(SANDBOX), "check"], capture_output=True, text=True)
    if check.returncode != 0:
        return f"systemd-sandbox check: {check.stderr.strip() or check.stdout.strip()}"
    if not Path("/usr/bin/python3").exists():
        return "no /usr/bin/python3 for the service's venv"
    return None


def service_venv() -> Path:
    """A venv the ``nerve`` user can run (Debian's python3), with this checkout installed."""
    global _installed
    if NO_SYSTEMD:
        pytest.skip(NO_SYSTEMD_WHY)
    pip = [str(SERVICE_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    if not (SERVICE_VENV / "bin" / "python").exists():
        SCRATCH.mkdir(mode=0o755, parents=True, exist_ok=True)
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(SERVICE_VENV)], check=True)
    if not _installed:
        # The dependencies as pyproject.toml has them now (one added since the venv was made
        # is installed; pip does nothing for those it has), then this checkout, not editable.
        project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
        subprocess.run([*pip, "setuptools>=77", *project["dependencies"]], check=True)
        # Built from a copy: pip builds in the source tree (build/), and two builds there
        # at once (another checkout's tests, a developer's pip) fail with EEXIST.
        with tempfile.TemporaryDirectory() as scratch:
            source = Path(scratch) / "nerve"
            shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
                ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".mypy_cache",
                ".pytest_cache", ".ruff_cache"))  # fmt: skip
            subprocess.run(
                [*pip, "--no-build-isolation", "--force-reinstall", "--no-deps", str(source)],
                check=True,
            )
        _installed = True
    return SERVICE_VENV


def ensure_nerve_user() -> None:
    """What the package's postinst does: systemd-sysusers with our sysusers.d file."""
    if NO_SYSTEMD:
        pytest.skip(NO_SYSTEMD_WHY)
    subprocess.run(
        ["systemd-sysusers", str(REPO / "systemd" / "nerve-sysusers.conf")],
        check=True,
        capture_output=True,
    )


class Sandbox:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dir = SCRATCH / name
        self.units = self.dir / "units"
        self.root = self.dir / "root"
        self.state_name = f"nerve-test-{name}"
        self.started = False

    # -- set-up -------------------------------------------------------------------------

    def prepare(self, config: str, workflows: dict[str, str] | None = None,
                watchdog: str = "30s", senses: dict[str, str] | None = None,
                service: str = "") -> Sandbox:  # fmt: skip
        """Units (ours, plus a drop-in pointing at the test root and venv) and a root.

        ``service``: more lines for the drop-in's ``[Service]`` section."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.units.mkdir(parents=True)
        for unit in ("nerved.service", "nerved.socket"):
            shutil.copy(REPO / "systemd" / unit, self.units / unit)
        dropin = self.units / "nerved.service.d"
        dropin.mkdir()
        venv = service_venv()
        # The unit's own ExecReload= line, its command taken from the test's venv.
        [reload] = [
            line.replace("/usr/bin/", f"{venv}/bin/")
            for line in (REPO / "systemd" / "nerved.service").read_text().splitlines()
            if line.startswith("ExecReload=")
        ]
        (dropin / "50-test.conf").write_text(
            textwrap.dedent(f"""\
            [Service]
            ExecStart=
            ExecStart={venv}/bin/nerved --root {self.root} --state-dir ${{STATE_DIRECTORY}} --socket ${{RUNTIME_DIRECTORY}}/nerved.sock
            ExecReload=
            {reload}
            ConfigurationDirectory=
            StateDirectory=
            StateDirectory={self.state_name}
            WatchdogSec={watchdog}
            RestartSec=200ms
            """)
            + textwrap.dedent(service)
        )
        self.root.mkdir(parents=True)
        (self.root / "nerve.yaml").write_text(textwrap.dedent(config))
        for kind, packages in (("senses", senses or {}), ("workflows", workflows or {})):
            for name, code in packages.items():
                package = self.root / kind / name
                package.mkdir(parents=True)
                (package / "__init__.py").write_text(textwrap.dedent(code))
        for path in [self.dir, *self.dir.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        shutil.rmtree(self.state_dir, ignore_errors=True)
        return self

    @property
    def state_dir(self) -> Path:
        return Path("/var/lib") / self.state_name

    # -- the sandbox --------------------------------------------------------------------

    def start(self) -> Sandbox:
        subprocess.run([str(SANDBOX), "stop", self.name], capture_output=True)
        done = subprocess.run(
            [str(SANDBOX), "start", self.name, str(self.units)], capture_output=True, text=True
        )
        assert done.returncode == 0, f"sandbox start failed:\n{done.stdout}\n{done.stderr}"
        self.started = True
        return self

    def stop(self) -> None:
        if self.started:
            subprocess.run([str(SANDBOX), "stop", self.name], capture_output=True, timeout=60)
            self.started = False
        shutil.rmtree(self.state_dir, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def run(
        self, *cmd: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(SANDBOX), "exec", self.name, *cmd], capture_output=True, text=True, timeout=timeout
        )
        if check:
            assert done.returncode == 0, (
                f"{' '.join(cmd)}: {done.returncode}\n{done.stdout}\n{done.stderr}"
            )
        return done

    def systemctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("systemctl", *args, check=check)

    def nervectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(str(SERVICE_VENV / "bin" / "nervectl"), *args, check=check)

    def nervectl_json(self, *args: str) -> Any:
        return json.loads(self.nervectl("--json", *args).stdout)

    def main_pid(self) -> int:
        out = self.systemctl("show", "-p", "MainPID", "--value", "nerved.service").stdout
        return int(out.strip() or 0)

    def state(self) -> str:
        return self.systemctl("is-active", "nerved.service", check=False).stdout.strip()

    def wait_new_main_pid(self, old: int, timeout: float = 30) -> int:
        return wait_until(
            lambda: (pid := self.main_pid()) not in (0, old) and self.state() == "active" and pid,
            timeout=timeout,
            interval=0.1,
            what="systemd to restart nerved",
        )

    def journal(self, *args: str) -> list[dict[str, Any]]:
        self.run("journalctl", "--sync", check=False)
        out = self.run("journalctl", "-u", "nerved", "-o", "json", "--no-pager", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]
