"""A role policy in nerve.yaml for a role the workflow's code does not define is refused
where the code is checked: by ``nerved check`` and by a reload's import check, whose
probe is also run when only the roles named change (nerved.code.packages).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support import REPO, Nerved, make_root

from nervectl.client import RemoteError
from nerved.code.packages import CodeSnapshot, Package, undefined_roles
from nerved.config import load_root

ROLES = """
    from nerved import WorkflowDefinition

    def reader(prompt, ctx):
        return {"type": "read"}

    def writer(prompt, ctx):
        return {"type": "written"}

    def moderate(thread, event):
        if event["type"] == "thread_start":
            return {"role": "writer", "prompt": None}
        return None

    workflow = WorkflowDefinition(roles={"writer": writer, "reader": reader}, moderate=moderate)
"""


def _config(*roles: str) -> str:
    lines = ["workflows:", "  w:", "    concurrency: 2", "    roles:"]
    for role in roles:
        lines += [f"      {role}:", "        retry: {attempts: 3}"]
    return "\n".join(lines) + "\n"


def _check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nerved", "--root", str(root), "check"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


def test_check_refuses_a_policy_for_a_role_the_code_does_not_define(tmp_path: Path) -> None:
    root = make_root(tmp_path, _config("writer", "writr", "Reader"), workflows={"w": ROLES})
    done = _check(root)
    assert done.returncode == 78, done.stderr
    assert done.stderr.splitlines() == [
        "nerve.yaml:7: workflows.w.roles.writr: workflows/w defines no role 'writr' "
        "(roles: reader, writer)",
        "nerve.yaml:9: workflows.w.roles.Reader: workflows/w defines no role 'Reader' "
        "(roles: reader, writer)",
    ]
    (root / "nerve.yaml").write_text(_config("writer", "reader"))
    done = _check(root)
    assert done.returncode == 0, done.stderr


def test_a_reload_naming_a_role_the_code_does_not_define_is_refused(
    nerved_factory: Callable[..., Nerved],
) -> None:
    """Only nerve.yaml changes, not the code: the workflow is probed all the same, the reload
    refused, and the running configuration stays."""
    daemon = nerved_factory(_config("writer"), workflows={"w": ROLES}, args=("--no-watch",))
    daemon.start()
    (daemon.root / "nerve.yaml").write_text(_config("writer", "writr").replace("2", "5"))
    with daemon.client(60) as client, pytest.raises(RemoteError) as caught:
        client.call("reload")
    assert caught.value.data["errors"] == [
        "nerve.yaml:7: workflows.w.roles.writr: workflows/w defines no role 'writr' "
        "(roles: reader, writer)"
    ]
    # The settings refused with it (concurrency 5) are not running: a reload brings them.
    (daemon.root / "nerve.yaml").write_text(_config("writer", "reader").replace("2", "5"))
    assert daemon.rpc("reload")["changed"] == ["workflow w settings"]
    run_id = daemon.rpc("workflow.trigger", workflow="w")["runId"]
    with daemon.client(30) as client:
        run = client.call("workflow.wait", {"runId": run_id, "timeout": 20})
    assert run["status"] == "completed", run


def test_only_other_role_names_bring_a_probe(tmp_path: Path) -> None:
    """What a reload probes (CodeSnapshot.changed_since): a workflow whose policies name
    other roles; not one whose policies only say other things, or moved in the file."""
    root = make_root(tmp_path, _config("writer"), workflows={"w": ROLES})

    def snapshot(config: str) -> CodeSnapshot:
        (root / "nerve.yaml").write_text(config)
        workflows = load_root(root).workflows
        return CodeSnapshot.take(root, [], workflows)

    first = snapshot(_config("writer"))
    assert first.workflows["w"].policy_roles == (("writer", 5),)
    moved = snapshot("\n\n" + _config("writer").replace("attempts: 3", "attempts: 4"))
    assert moved.workflows["w"].policy_roles == (("writer", 7),)
    assert moved.changed_since(first) == []
    other = snapshot(_config("writer", "reader"))
    assert [unit[0].label for unit in other.changed_since(first)] == ["workflows/w"]
    assert [unit[0].label for unit in first.changed_since(other)] == ["workflows/w"]
    # Named as before, in another order: the same check.
    assert snapshot(_config("reader", "writer")).changed_since(other) == []
    # By names only (no configuration), there is nothing to check.
    assert CodeSnapshot.take(root, [], ["w"]).workflows["w"].policy_roles == ()


def test_roles_of_many_are_clipped_and_roles_that_cannot_be_listed_are_said() -> None:
    from nerved import WorkflowDefinition

    def role(prompt: object, ctx: object) -> None:
        return None

    package = Package("workflows", "w", Path("/nowhere"), "", policy_roles=(("x", 4),))
    many = WorkflowDefinition(roles={f"r{i:02}": role for i in range(30)}, moderate=role)
    [message] = undefined_roles(package, many)
    assert message.startswith(
        "nerve.yaml:4: workflows.w.roles.x: workflows/w defines no role 'x' (roles: r00, r01, "
    )
    assert message.endswith(", r19, ... (30 in all))")

    class Unlistable(dict[str, object]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            raise RuntimeError("no")

    broken = WorkflowDefinition(roles={"a": role}, moderate=role)
    object.__setattr__(broken, "roles", Unlistable(a=role))  # user code may mutate its own
    [message] = undefined_roles(package, broken)
    assert message.startswith("workflows/w cannot list its roles: RuntimeError: no")
    assert undefined_roles(package, object()) == []  # a sense's compute: nothing to check
