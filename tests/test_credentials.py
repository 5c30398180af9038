"""``ctx.credential(name)`` (nerved.credentials): systemd credentials for roles and senses."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import CREDENTIAL_READER

from nerved import SenseContext, WorkflowContext, credentials


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "token").write_text("s3cret\n")
    return tmp_path


def test_roles_and_senses_read_a_credential(directory: Path) -> None:
    role = WorkflowContext("r1", "w", lambda message: None)
    sense = SenseContext("s", lambda message: None, logs=None)  # type: ignore[arg-type]
    assert role.credential("token") == "s3cret\n"
    assert sense.credential("token") == "s3cret\n"


def test_a_missing_credential_is_a_key_error_naming_it(directory: Path) -> None:
    with pytest.raises(KeyError, match=r"'other'.*not in"):
        credentials.read("other")


def test_no_credentials_directory_is_a_key_error_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(KeyError, match=r"'token'.*LoadCredential="):
        credentials.read("token")


@pytest.mark.parametrize("name", ["", ".", "..", "../token", "a/b", "/etc/shadow", "a\0b"])
def test_a_name_that_is_not_a_file_name_is_refused(directory: Path, name: str) -> None:
    (directory / "a").mkdir()
    (directory / "a" / "b").write_text("x")
    with pytest.raises(KeyError, match="not a credential name"):
        credentials.read(name)


def test_a_credential_over_1_mib_is_refused(directory: Path) -> None:
    (directory / "big").write_bytes(b"x" * (credentials.MAX_BYTES + 1))
    with pytest.raises(KeyError, match="longer than 1 MiB"):
        credentials.read("big")


def test_a_worker_reads_the_directory_nerved_was_given(nerved_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    creds = tmp_path / "creds"
    creds.mkdir(mode=0o700)
    (creds / "token").write_text("s3cret\n")
    daemon = nerved_factory("workflows:\n  k: {}\n", None, {"k": CREDENTIAL_READER})
    daemon.env["CREDENTIALS_DIRECTORY"] = str(creds)
    daemon.start()
    run = daemon.rpc("workflow.trigger", workflow="k", payload=None)
    with daemon.client(timeout=25) as client:
        done = client.call("workflow.wait", {"runId": run["runId"], "timeout": 20})
    assert done["status"] == "completed", done
    events = daemon.rpc("workflow.inspect", runId=run["runId"])["events"]
    [read] = [e["payload"]["event"] for e in events if e["type"] == "step_complete"]
    assert read["token"] == "s3cret\n"
    assert "'absent'" in read["missing"]
