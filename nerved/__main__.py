"""``python -m nerved``: as the ``nerved`` command."""

from nerved import early

early.hold()  # first of all: a SIGHUP while nerved starts is a reload request, not its death

from nerved.cli import main  # noqa: E402

raise SystemExit(main())
