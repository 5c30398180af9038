"""The Debian package: packaging/build-deb builds it, and it installs, runs, removes and purges.

Opt-in (NERVE_TEST_PACKAGING=1, as root on Debian 12): the build takes a minute or more and
installs build dependencies with apt-get, and the test installs the package on this machine.
Whatever happens, the machine is left without the package (purged); the `nerve` system user
stays, as Debian policy wants of a purge.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from completion import INSTALLED, bash_completes

if os.environ.get("NERVE_TEST_PACKAGING") != "1":
    pytest.skip(
        "packaging test is opt-in: set NERVE_TEST_PACKAGING=1 (builds the .deb for minutes, "
        "installs build dependencies and the package on this machine as root)",
        allow_module_level=True,
    )
if os.geteuid() != 0 or shutil.which("dpkg") is None:
    pytest.skip("packaging test needs root on a Debian machine (dpkg)", allow_module_level=True)

pytestmark = pytest.mark.packaging

REPO = Path(__file__).resolve().parent.parent
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
PACKAGE = "nerve"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/root"}

UNITS = Path("/lib/systemd/system")
INSTALLED_FILES = {
    # path on the machine: the file of the checkout it must be, byte for byte (or None)
    UNITS / "nerved.service": REPO / "systemd/nerved.service",
    UNITS / "nerved.socket": REPO / "systemd/nerved.socket",
    Path("/usr/lib/sysusers.d/nerve.conf"): REPO / "systemd/nerve-sysusers.conf",
    Path("/usr/lib/tmpfiles.d/nerve.conf"): REPO / "systemd/nerve-tmpfiles.conf",
    Path("/usr/lib/systemd/catalog/nerve.catalog"): REPO / "systemd/nerve.catalog",
    Path("/etc/nerve/nerve.yaml"): REPO / "packaging/nerve.yaml",
    Path("/usr/share/doc/nerve/README.md"): REPO / "README.md",
    Path("/usr/share/doc/nerve/docs/guide.md"): REPO / "docs/guide.md",
    Path("/usr/share/doc/nerve/docs/configuration.md"): REPO / "docs/configuration.md",
    Path("/usr/share/doc/nerve/docs/protocol.md"): REPO / "docs/protocol.md",
    Path("/usr/share/man/man8/nerved.8.gz"): None,
    Path("/usr/share/man/man1/nervectl.1.gz"): None,
    Path("/usr/share/man/man5/nerve.yaml.5.gz"): None,
    Path("/usr/share/bash-completion/completions/nervectl"): None,
    Path("/usr/share/zsh/vendor-completions/_nervectl"): None,
    Path("/usr/bin/nerved"): None,
    Path("/usr/bin/nervectl"): None,
    Path("/opt/venvs/nerve/bin/python3"): None,
}
STATE = Path("/var/lib/nerve")
RUNTIME = Path("/run/nerve")
WANTS = [
    Path("/etc/systemd/system/multi-user.target.wants/nerved.service"),
    Path("/etc/systemd/system/sockets.target.wants/nerved.socket"),
]
# dpkg's only expected complaint: /opt is owned by no package here and holds other things.
BENIGN = re.compile(r"dpkg: warning: while removing nerve, directory '/opt' not empty")


def run(
    *cmd: str | Path, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=ENV,
        cwd=cwd, check=False,
    )  # fmt: skip


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (
        f"{' '.join(map(str, done.args))}: exit {done.returncode}\n"
        f"--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    )
    return done.stdout


def complaints(stderr: str) -> list[str]:
    """dpkg's and the maintainer scripts' warnings and errors, less the explained ones."""
    return [
        line
        for line in stderr.splitlines()
        if re.search(r"error|warning|fail|not empty", line, re.I) and not BENIGN.search(line)
    ]


def package_status() -> str:
    done = run("dpkg-query", "-W", "-f=${Status}", PACKAGE)
    return done.stdout.strip() if done.returncode == 0 else "not-installed"


def purge() -> None:
    if package_status() != "not-installed":
        run("dpkg", "-P", PACKAGE, timeout=300)


@pytest.fixture(scope="module")
def deb() -> Path:
    started = time.monotonic()
    done = run(REPO / "packaging/build-deb", timeout=1800, cwd=REPO)
    ok(done)
    path = Path(done.stdout.strip().splitlines()[-1])
    print(f"built {path} ({path.stat().st_size} bytes) in {time.monotonic() - started:.0f} s")
    assert path.parent == REPO / "dist", path
    assert path.name.startswith(f"{PACKAGE}_{VERSION}-1_"), path
    return path


@pytest.fixture
def clean_machine() -> Iterator[None]:
    purge()
    yield
    purge()
    assert package_status() == "not-installed"


def test_package_metadata(deb: Path) -> None:
    fields = ok(run("dpkg-deb", "-f", deb, "Package", "Version", "Depends"))
    assert f"Package: {PACKAGE}\n" in fields
    assert f"Version: {VERSION}-1\n" in fields
    assert "python3 (>= 3.11)" in fields
    assert "systemd-sysusers" in fields  # dh_installsysusers' dependency
    contents = ok(run("dpkg-deb", "-c", deb))
    for path in INSTALLED_FILES:
        assert f" .{path}" in contents, f"{path} is not in {deb.name}"
    for folder in ("/etc/nerve/senses/", "/etc/nerve/workflows/"):
        assert f" .{folder}\n" in contents
    conffiles = ok(run("dpkg-deb", "-I", deb, "conffiles"))
    assert conffiles.split() == ["/etc/nerve/nerve.yaml"]


def check_man_pages() -> None:
    """``man nerved`` and the others find the installed pages, and they render."""
    assert shutil.which("man"), "no man(1) here: apt-get install man-db"
    pages = {"nerved": "man8/nerved.8.gz", "nervectl": "man1/nervectl.1.gz",
             "nerve.yaml": "man5/nerve.yaml.5.gz"}  # fmt: skip
    for name, where in pages.items():
        assert ok(run("man", "-w", name)).strip() == f"/usr/share/man/{where}"
        done = run("man", "-P", "cat", name)
        text = ok(done)
        assert done.stderr == "", done.stderr
        assert "SYNOPSIS" in text and "SEE ALSO" in text and VERSION in text, text[:2000]
    assert "maxConnections" in ok(run("man", "-P", "cat", "5", "nerve.yaml"))


def check_bash_completion() -> None:
    """bash completes ``nervectl workflow tr<TAB>`` from the installed completion, found
    where bash-completion looks for it."""
    assert bash_completes(INSTALLED, "nervectl workflow tr", env=ENV) == ["trigger"]
    assert "--from-step" in bash_completes(INSTALLED, "nervectl workflow retry --", env=ENV)
    zsh = Path("/usr/share/zsh/vendor-completions/_nervectl").read_text()
    assert zsh.startswith("#compdef nervectl"), zsh[:200]


def asks_metrics(socket: Path) -> None:
    """``nervectl metrics``: the installed daemon's OpenMetrics text, which parses, with its
    version (prometheus-client was bundled in the package's virtualenv)."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    text = ok(run("/usr/bin/nervectl", "--socket", socket, "metrics"))
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"nerve_build_info", "nerve_store_size_bytes", "nerve_runs"} <= names, names
    assert f'nerve_build_info{{version="{VERSION}"}} 1.0' in text


def run_as_nerve(socket: Path) -> None:
    """Run nerved as systemd would (user nerve, the packaged paths), ask it, stop it."""
    daemon = subprocess.Popen(
        ["/usr/bin/nerved", "--root", "/etc/nerve", "--state-dir", str(STATE),
         "--socket", str(socket), "--no-watch"],
        user="nerve", group="nerve", extra_groups=[], env=ENV, cwd="/",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not socket.exists() and daemon.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert socket.exists(), f"nerved did not listen on {socket}"
        status = json.loads(ok(run("/usr/bin/nervectl", "--socket", socket, "--json", "status")))
        assert (status["version"], status["state"]) == (VERSION, "running"), status
        asks_metrics(socket)
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            output, _ = daemon.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            output, _ = daemon.communicate()
    assert daemon.returncode == 0, output


def test_install_run_remove_purge(deb: Path, clean_machine: None) -> None:
    user_existed = run("getent", "passwd", "nerve").returncode == 0

    # --- install ------------------------------------------------------------------------
    done = run("dpkg", "-i", deb, timeout=300)
    ok(done)
    assert complaints(done.stderr) == [], done.stderr
    assert package_status() == "install ok installed"

    for path, source in INSTALLED_FILES.items():
        assert path.exists(), f"{path} missing after install"
        if source is not None:
            assert path.read_bytes() == source.read_bytes(), f"{path} differs from {source}"
    assert os.path.realpath("/usr/bin/nerved") == "/opt/venvs/nerve/bin/nerved"
    assert os.path.realpath("/usr/bin/nervectl") == "/opt/venvs/nerve/bin/nervectl"
    assert os.path.realpath("/opt/venvs/nerve/bin/python3").startswith("/usr/bin/python3")
    for folder in ("senses", "workflows"):
        assert list(Path("/etc/nerve", folder).iterdir()) == []

    check_man_pages()
    check_bash_completion()

    assert ok(run("/usr/bin/nervectl", "--version")).strip() == f"nervectl {VERSION}"
    assert ok(run("/usr/bin/nerved", "--version")).strip() == f"nerved {VERSION}"
    ok(run("/usr/bin/nerved", "check", "--root", "/etc/nerve"))

    # sysusers ran in postinst (PID 1 need not be systemd), then tmpfiles.
    passwd = ok(run("getent", "passwd", "nerve")).strip().split(":")
    assert passwd[5:] == ["/var/lib/nerve", "/usr/sbin/nologin"], passwd
    if user_existed:
        print("the nerve user existed before the install: its creation was not observed")
    ok(run("getent", "group", "nerve"))
    for made, mode in ((STATE, 0o750), (RUNTIME, 0o755)):
        info = made.stat()
        assert (info.st_mode & 0o7777, info.st_uid) == (mode, int(passwd[2])), made

    verify = run("systemd-analyze", "verify", UNITS / "nerved.service", UNITS / "nerved.socket")
    assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr

    # --- nerved runs as the nerve user on the packaged root, state and socket ------------
    socket = RUNTIME / "nerved.sock"
    if Path("/run/systemd/system").is_dir():
        # A systemd host: postinst enabled and started the service (start waits for READY=1).
        ok(run("systemctl", "is-active", "nerved.service"))
        status = json.loads(ok(run("/usr/bin/nervectl", "--socket", socket, "--json", "status")))
        assert (status["version"], status["state"]) == (VERSION, "running"), status
        asks_metrics(socket)
    else:
        run_as_nerve(socket)
    assert (STATE / "logs.db").is_file()

    # --- remove: programs gone, configuration and state kept -----------------------------
    done = run("dpkg", "-r", PACKAGE, timeout=300)
    ok(done)
    assert complaints(done.stderr) == [], done.stderr
    assert package_status() == "deinstall ok config-files"
    for path in INSTALLED_FILES:
        if path != Path("/etc/nerve/nerve.yaml"):
            assert not path.exists() and not path.is_symlink(), f"{path} left after remove"
    assert not Path("/opt/venvs/nerve").exists()
    assert Path("/etc/nerve/nerve.yaml").is_file(), "remove must keep the conffile"
    assert (STATE / "logs.db").is_file(), "remove must keep the state"

    # --- purge: state and configuration gone, the user stays (Debian policy) -------------
    done = run("dpkg", "-P", PACKAGE, timeout=300)
    ok(done)
    assert complaints(done.stderr) == [], done.stderr
    assert package_status() == "not-installed"
    for path in (STATE, RUNTIME, Path("/etc/nerve"), *WANTS):
        assert not path.exists() and not path.is_symlink(), f"{path} left after purge"
    ok(run("getent", "passwd", "nerve"))
