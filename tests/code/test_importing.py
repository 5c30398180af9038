"""Where an error in user code is placed (nerved.code.importing.user_frame)."""

from __future__ import annotations

import traceback
from pathlib import Path

import nerved
from nerved.code.importing import user_frame

NERVED = Path(nerved.__file__).resolve().parent


def frame(filename: str | Path) -> traceback.FrameSummary:
    return traceback.FrameSummary(str(filename), 1, "f")


def test_nerves_own_frames_are_never_the_place() -> None:
    """None of nerve's own modules, wherever in nerved/ (the worker's, not only the import
    machinery's), is shown as the place of an error."""
    library = frame("/usr/lib/python3/json/decoder.py")
    frames = [library, frame(NERVED / "worker" / "sense.py"), frame(NERVED / "code" / "x.py")]
    assert user_frame(frames) is library
    assert user_frame([frame(NERVED / "worker" / "port.py"), frame("<string>")]) is None
