"""nervectl init: scaffolds that nerved accepts as they are, and that never overwrite anything."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import REPO, Nerved, wait_until

from nervectl import scaffold
from nervectl.exits import CliError


def nervectl(
    *args: str, env: dict[str, str] | None = None, umask: int = -1
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nervectl", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO, env={**os.environ, **(env or {})},
        umask=umask,
    )  # fmt: skip


def check(root: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "nerved", "check", "--root", str(root)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, f"nerved check --root {root}:\n{done.stdout}{done.stderr}"


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
    return done.stdout


def refused(done: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert done.stderr.startswith("nervectl: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def config_of(root: Path) -> dict:
    return yaml.safe_load((root / "nerve.yaml").read_text())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    ok(nervectl("init", str(root)))
    return root


# -- init DIR -------------------------------------------------------------------------------------


def test_init_dir(root: Path) -> None:
    assert (root / "senses" / "heartbeat" / "__init__.py").is_file()
    assert (root / "workflows").is_dir()
    config = config_of(root)
    assert list(config["senses"]) == ["heartbeat"]
    assert config["reflexes"] == [{"kind": "sense", "sense": "heartbeat", "interval": "1m"}]
    assert (root / "nerve.yaml").read_text().startswith("#")  # commented for the operator
    check(root)


def test_init_dir_refuses_to_overwrite(root: Path) -> None:
    before = (root / "nerve.yaml").read_text()
    error = refused(nervectl("init", str(root)))
    assert "nerve.yaml" in error and "already exists" in error
    assert (root / "nerve.yaml").read_text() == before


def test_init_refuses_an_existing_heartbeat_package(tmp_path: Path) -> None:
    package = tmp_path / "r" / "senses" / "heartbeat"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("# mine\n")
    refused(nervectl("init", str(tmp_path / "r")))
    assert (package / "__init__.py").read_text() == "# mine\n"
    assert not (tmp_path / "r" / "nerve.yaml").exists()


def test_init_defaults_to_the_root_nerved_uses(tmp_path: Path) -> None:
    target = tmp_path / "from-env"
    out = ok(nervectl("init", env={"NERVE_ROOT": str(target)}))
    assert str(target) in out
    check(target)
    ok(nervectl("init", "sense", "extra", env={"NERVE_ROOT": str(target)}))
    assert "extra" in config_of(target)["senses"]


def test_init_makes_directories_nerved_accepts_whatever_the_umask(tmp_path: Path) -> None:
    """Issue 9 (8): under ``umask 002`` (user private groups) ``mkdir -p`` makes directories
    writable by their group, which strict modes refuse (root's group is never taken as one
    private to it): init makes them 0755, the root and its parents included."""
    root = tmp_path / "a" / "b" / "root"
    ok(nervectl("init", str(root), umask=0o002))
    ok(nervectl("init", "sense", "extra", "--root", str(root), umask=0o002))
    for directory in (tmp_path / "a", tmp_path / "a" / "b", root, root / "senses",
                      root / "senses" / "heartbeat", root / "senses" / "extra",
                      root / "workflows"):  # fmt: skip
        assert directory.stat().st_mode & 0o777 == 0o755, directory
    check(root)


def test_init_json(tmp_path: Path) -> None:
    import json

    done = json.loads(ok(nervectl("--json", "init", str(tmp_path / "r"))))
    assert done["declared"] is True
    assert sorted(Path(p).name for p in done["created"]) == ["__init__.py", "nerve.yaml"]


# -- init sense / workflow ------------------------------------------------------------------------


def test_init_sense(root: Path) -> None:
    comments = [line for line in (root / "nerve.yaml").read_text().splitlines() if "#" in line]
    out = ok(nervectl("init", "sense", "disk-free", "--root", str(root)))
    assert "declared sense disk-free" in out
    text = (root / "nerve.yaml").read_text()
    assert all(line in text.splitlines() for line in comments)  # the operator's comments stay
    assert set(config_of(root)["senses"]) == {"heartbeat", "disk-free"}
    code = (root / "senses" / "disk-free" / "__init__.py").read_text()
    for needle in ("def compute(ctx", "None", "async def", "ctx.log(", "ctx.logs.query("):
        assert needle in code
    check(root)


def test_init_workflow(root: Path) -> None:
    out = ok(nervectl("init", "workflow", "review", "--root", str(root)))
    assert "declared workflow review" in out
    assert config_of(root)["workflows"] == {"review": {"concurrency": 1, "overflow": "queue"}}
    code = (root / "workflows" / "review" / "__init__.py").read_text()
    assert "from nerved import" in code and "workflow = WorkflowDefinition(" in code
    check(root)
    ok(nervectl("init", "workflow", "second", "--root", str(root)))
    assert set(config_of(root)["workflows"]) == {"review", "second"}
    check(root)


def test_generated_workflow_runs_as_is(root: Path) -> None:
    """Its roles and moderator, driven by hand as the engine would drive them."""
    import asyncio
    import importlib.util
    import inspect

    from nerved import ThreadState, WorkflowContext

    ok(nervectl("init", "workflow", "demo", "--root", str(root)))
    path = root / "workflows" / "demo" / "__init__.py"
    spec = importlib.util.spec_from_file_location("generated_demo", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    definition = module.workflow
    for payload in ({"count": 2}, None, "not a dict", {"count": "x"}):
        events = [{"type": "thread_start", "payload": payload}]
        logged: list[str] = []
        while (
            step := definition.moderate(ThreadState("r", "demo", tuple(events)), events[-1])
        ) is not None:
            result = definition.roles[step["role"]](
                step["prompt"], WorkflowContext("r", "demo", logged.append)
            )
            event = asyncio.run(result) if inspect.isawaitable(result) else result
            assert isinstance(event["type"], str)
            events.append(event)
            assert len(events) < 10
        assert events[-1]["type"] == "reported" and logged


def test_init_sense_and_workflow_refuse_to_overwrite(root: Path) -> None:
    ok(nervectl("init", "sense", "x", "--root", str(root)))
    ok(nervectl("init", "workflow", "w", "--root", str(root)))
    config = (root / "nerve.yaml").read_text()
    assert "already exists" in refused(nervectl("init", "sense", "x", "--root", str(root)))
    assert "already exists" in refused(nervectl("init", "workflow", "w", "--root", str(root)))
    assert "already exists" in refused(nervectl("init", "sense", "heartbeat", "--root", str(root)))
    assert (root / "nerve.yaml").read_text() == config


@pytest.mark.parametrize("name", ["-dash", "has space", "a/b", "x" * 65, "..", "ünï"])
def test_init_rejects_bad_names(root: Path, name: str) -> None:
    refused(nervectl("init", "sense", name, "--root", str(root)), 2)
    refused(nervectl("init", "workflow", name, "--root", str(root)), 2)


def test_init_sense_needs_a_root(tmp_path: Path) -> None:
    error = refused(nervectl("init", "sense", "x", "--root", str(tmp_path)))
    assert "nervectl init" in error
    assert not (tmp_path / "senses").exists()


@pytest.mark.parametrize(
    "args", [("sense",), ("workflow",), ("sense", "a", "b"), ("a", "b"), ("d", "--root", "e")]
)
def test_init_usage_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    refused(nervectl("init", *args), 2)


def test_declared_sense_without_package_gets_its_package(root: Path) -> None:
    config = root / "nerve.yaml"
    config.write_text(config.read_text().replace("senses:\n", "senses:\n  later: {}\n", 1))
    before = config.read_text()
    out = ok(nervectl("init", "sense", "later", "--root", str(root)))
    assert "already declared" in out
    assert config.read_text() == before
    check(root)


# -- editing nerve.yaml ---------------------------------------------------------------------------


def write_root(tmp_path: Path, config: str) -> Path:
    root = tmp_path / "r"
    root.mkdir()
    (root / "nerve.yaml").write_text(config)
    return root


def test_section_appended_when_missing(tmp_path: Path) -> None:
    root = write_root(tmp_path, "# only a comment, no newline at the end")
    ok(nervectl("init", "workflow", "w", "--root", str(root)))
    ok(nervectl("init", "sense", "s", "--root", str(root)))
    config = config_of(root)
    assert set(config) == {"senses", "workflows"}
    assert (root / "nerve.yaml").read_text().startswith("# only a comment")
    check(root)


def test_existing_indentation_is_kept(tmp_path: Path) -> None:
    root = write_root(tmp_path, "senses:\n    # four spaces here\n    a:\n        group: g\n")
    (root / "senses" / "a").mkdir(parents=True)
    (root / "senses" / "a" / "__init__.py").write_text("def compute(ctx):\n    return None\n")
    ok(nervectl("init", "sense", "b", "--root", str(root)))
    assert "\n    b:\n" in (root / "nerve.yaml").read_text()
    assert config_of(root)["senses"]["a"] == {"group": "g"}
    check(root)


@pytest.mark.parametrize("inline", ["{}", "null", "~", "{}   # none yet"])
def test_empty_inline_section_becomes_a_block(tmp_path: Path, inline: str) -> None:
    root = write_root(tmp_path, f"senses: {inline}\n")
    ok(nervectl("init", "sense", "s", "--root", str(root)))
    assert list(config_of(root)["senses"]) == ["s"]
    check(root)


def test_inline_section_with_entries_is_refused(tmp_path: Path) -> None:
    root = write_root(tmp_path, "senses: {a: {}}\n")
    error = refused(nervectl("init", "sense", "s", "--root", str(root)))
    assert "nerve.yaml:1" in error and "inline" in error
    assert not (root / "senses" / "s").exists()
    assert (root / "nerve.yaml").read_text() == "senses: {a: {}}\n"


def test_declare_finds_quoted_and_commented_names() -> None:
    text = (
        "senses:  # mine\n  'quoted': {}\n  # commented: {}\n  plain:\n    group: g\nreflexes: []\n"
    )
    assert scaffold.declare(text, "senses", "quoted", ("group: x",), "f") is None
    assert scaffold.declare(text, "senses", "plain", ("group: x",), "f") is None
    added = scaffold.declare(text, "senses", "commented", ("group: x",), "f")
    assert added is not None and "  commented:\n    group: x\n" in added
    assert added.startswith("senses:  # mine\n")
    # a key deeper in another entry is not a declaration
    assert scaffold.declare(text, "senses", "group", ("group: x",), "f") is not None
    # nor is one in another section
    assert scaffold.declare(text, "workflows", "plain", ("x: 1",), "f") is not None


def test_declare_keeps_the_header_line_and_copes_with_no_final_newline() -> None:
    text = "senses:     # spaced as the operator likes\n  a: {}\n"
    added = scaffold.declare(text, "senses", "b", ("x: 1",), "f")
    assert added == "senses:     # spaced as the operator likes\n  b:\n    x: 1\n  a: {}\n"
    assert scaffold.declare("senses:", "senses", "b", ("x: 1",), "f") == "senses:\n  b:\n    x: 1\n"
    crlf = scaffold.declare("senses:\r\n  a: {}\r\n", "senses", "b", ("x: 1",), "f")
    assert crlf == "senses:\r\n  b:\r\n    x: 1\r\n  a: {}\r\n"


def test_declare_refuses_flow_style() -> None:
    with pytest.raises(CliError, match="inline"):
        scaffold.declare("workflows: {w: {}}\n", "workflows", "x", (), "nerve.yaml")


def test_symlinked_config_is_edited_in_place(tmp_path: Path) -> None:
    real = tmp_path / "managed.yaml"
    real.write_text("senses:\n")
    real.chmod(0o640)
    root = tmp_path / "r"
    root.mkdir()
    (root / "nerve.yaml").symlink_to(real)
    ok(nervectl("init", "sense", "s", "--root", str(root)))
    assert (root / "nerve.yaml").is_symlink()
    assert "  s:\n" in real.read_text()
    assert real.stat().st_mode & 0o777 == 0o640


# -- a real nerved on the scaffold ----------------------------------------------------------------


def test_nerved_runs_the_scaffold(tmp_path: Path) -> None:
    root = tmp_path / "root"
    ok(nervectl("init", str(root)))
    ok(nervectl("init", "sense", "x", "--root", str(root)))
    ok(nervectl("init", "workflow", "w", "--root", str(root)))
    check(root)
    daemon = Nerved(root, tmp_path / "run")
    try:
        daemon.start()
        assert daemon.ctl("sense", "trigger", "x").returncode == 0

        def x_signals() -> list[dict]:
            return daemon.rpc("logs.query", source="sense", type="signal", refId="x")

        signal = wait_until(x_signals, what="x's signal")[0]
        assert signal["payload"]["count"] == 1
        assert daemon.ctl("sense", "trigger", "x").returncode == 0
        second = wait_until(lambda: len(x_signals()) == 2 and x_signals(), what="x again")[1]
        assert second["payload"]["count"] == 2  # it read its last signal through ctx.logs

        logged = daemon.rpc("logs.query", source="sense", type="log", refId="x")
        assert [e["payload"] for e in logged] == ["x: first signal"]
        assert daemon.sense("x")["errors"] == 0

        run = daemon.ctl_json("workflow", "trigger", "w", "--payload", '{"count": 2}', "--wait")
        assert run["status"] == "completed" and run["steps"] == 2, run
        ok(daemon.ctl("workflow", "inspect", run["runId"]))
    finally:
        daemon.cleanup()
