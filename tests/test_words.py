"""What operators read says counts and fields in words: ``1 group`` and ``2 groups`` (never
``1 groups``), ``retry of`` (never ``retryOf``), no ``attempts: 0`` on every run, and a
``nerved --help`` that names the defaults this nerved would use (issue 13, item 5).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import REPO, make_root

from nervectl import render, replay, workflows
from nerved.words import plural

SENSE = "def compute(ctx):\n    return None\n"
WORKFLOW = """
    from nerved import WorkflowDefinition

    def noop(prompt, ctx):
        return {"type": "done"}

    def moderate(thread, event):
        return None

    workflow = WorkflowDefinition(roles={"noop": noop}, moderate=moderate)
"""


@pytest.mark.parametrize(
    ("count", "said"),
    [(0, "0 groups"), (1, "1 group"), (2, "2 groups")],
)
def test_a_count_agrees_with_its_noun(count: int, said: str) -> None:
    assert plural(count, "group") == said
    assert render.plural is plural  # one helper: nervectl says counts as nerved does


@pytest.mark.parametrize(
    ("count", "said"),
    [(0, "0 reflexes"), (1, "1 reflex"), (2, "2 reflexes")],
)
def test_a_noun_with_its_own_plural(count: int, said: str) -> None:
    assert plural(count, "reflex", "reflexes") == said


@pytest.mark.parametrize(
    ("checked", "said"),
    [(0, "checked 0 runs: nothing to compare"), (1, "checked 1 run: "), (2, "checked 2 runs: ")],
)
def test_replay_counts_runs_in_words(checked: int, said: str) -> None:
    assert replay.summary(checked, 0).startswith(said)


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("retryOf", "retry of"),
        ("updatedAt", "updated"),
        ("waitFor", "waits for"),
        ("idempotencyKey", "key"),
        ("attempts", "workers lost"),
        ("stateDir", "state dir"),
        ("lastFiredAt", "last fired at"),  # unknown: split where its case changes
        ("workerPID", "worker pid"),
        ("exit_code", "exit code"),
        ("active workflows", "active workflows"),  # words already: unchanged
    ],
)
def test_a_field_name_is_shown_in_words(key: str, words: str) -> None:
    assert render.label(key) == words
    assert render.fields([(key, "x")]) == f"{words}:  x"


FINAL_RUN = {
    "runId": "7485e7e12dd842c19c73fde49a16e04e",
    "workflow": "code-review",
    "status": "completed",
    "createdAt": 1795995948491,
    "updatedAt": 1795995948661,
    "steps": 6,
    "error": None,
    "attempts": 0,
    "retryOf": None,
    "tries": 0,
    "retryAt": None,
    "idempotencyKey": None,
    "waitFor": None,
    "wakeAt": None,
    "triggerPayload": {"title": "x"},
    "progress": None,
    "pendingSignals": [],
}


def _labels(block: str) -> list[str]:
    return [line.split(":", 1)[0] for line in block.splitlines()]


def test_a_run_says_nothing_of_what_it_does_not_have() -> None:
    """No ``attempts: 0``, ``retryOf: -``, ``error: -``, ``tries``, ``retryAt``: each of
    these is shown when it says something."""
    block = workflows.run_fields(dict(FINAL_RUN))
    assert _labels(block) == ["run", "workflow", "status", "steps", "created", "updated", "payload"]
    assert 'payload:   {"title":"x"}' in block


def test_a_run_says_in_words_what_it_has() -> None:
    run = {
        **FINAL_RUN,
        "status": "crashed",
        "error": "its worker died 2 times under it",
        "attempts": 2,
        "retryOf": "0123456789abcdef0123456789abcdef",
        "idempotencyKey": "pr-42",
        "lastFiredAt": 17,  # a field a newer daemon adds: in words too
        "someNull": None,
    }
    block = workflows.run_fields(run)
    assert _labels(block) == [
        "run", "workflow", "status", "steps", "created", "updated", "error", "workers lost",
        "retry of", "key", "payload", "last fired at",
    ]  # fmt: skip
    assert "workers lost:   2\n" in block
    assert not any(char.isupper() for label in _labels(block) for char in label)


@pytest.mark.parametrize(
    ("steps", "said"),
    [(1, "the next step is run abc's"), (2, "the next 2 steps are run abc's")],
)
def test_a_copied_history_counts_its_steps(steps: int, said: str) -> None:
    entry = {"type": "copied", "payload": {"steps": steps, "from": "abc"}}
    assert workflows.summarise(entry).startswith(said)


def _check(root: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nerved", "check", "--root", str(root)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    ("count", "said"),
    [
        (0, "ok (0 senses, 0 workflows, 0 reflexes)"),
        (1, "ok (1 sense, 1 workflow, 1 reflex)"),
        (2, "ok (2 senses, 2 workflows, 2 reflexes)"),
    ],
)
def test_nerved_check_counts_in_words(tmp_path: Path, count: int, said: str) -> None:
    names = [f"s{i}" for i in range(count)]
    senses = ", ".join(f"{n}: {{}}" for n in names)
    flows = ", ".join(f"w{n}: {{}}" for n in names)
    reflexes = ", ".join(f"{{kind: sense, sense: {n}, interval: 1m}}" for n in names)
    config = f"senses: {{{senses}}}\nworkflows: {{{flows}}}\nreflexes: [{reflexes}]\n"
    root = make_root(
        tmp_path, config, {n: SENSE for n in names}, {f"w{n}": WORKFLOW for n in names}
    )
    assert said in _check(root)


def _help(env: dict[str, str]) -> str:
    kept = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "PYTHONPATH")}
    done = subprocess.run(
        [sys.executable, "-m", "nerved", "--help"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
        env={**kept, "COLUMNS": "400", **env},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return " ".join(done.stdout.split())


def test_nerved_help_shows_the_defaults_it_would_use_from_the_environment(tmp_path):
    said = _help(
        {
            "HOME": str(tmp_path),
            "NERVE_ROOT": str(tmp_path / "root"),
            "STATE_DIRECTORY": f"{tmp_path / 'state'}:/elsewhere",
            "NERVE_SOCKET": str(tmp_path / "s.sock"),
        }
    )
    assert f"--root DIR the nerve root (default: {tmp_path / 'root'}: the first of" in said
    assert f"--state-dir DIR where logs.db lives (default: {tmp_path / 'state'}: " in said
    assert f"--socket PATH the control socket (default: {tmp_path / 's.sock'}: " in said
    assert "(default: info)" in said


def test_nerved_help_shows_the_defaults_of_the_user_running_it(tmp_path):
    """Nothing in the environment: root's places as root, the home directory's otherwise."""
    said = _help({"HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path / "run")})
    if os.geteuid() == 0:
        root, state, sock = "/etc/nerve", "/var/lib/nerve", "/run/nerve/nerved.sock"
    else:
        root = f"{tmp_path}/.config/nerve"
        state = f"{tmp_path}/.local/state/nerve"
        sock = f"{tmp_path}/run/nerve/nerved.sock"
    assert f"the nerve root (default: {root}: the first of $NERVE_ROOT," in said
    assert f"where logs.db lives (default: {state}: the first of $STATE_DIRECTORY," in said
    assert f"the control socket (default: {sock}: the first of $NERVE_SOCKET," in said
