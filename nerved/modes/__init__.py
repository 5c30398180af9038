"""Strict modes: nerved refuses code and state that someone else could have written.

nerved often runs as root, and it imports the packages of its root and runs them: a package
that another local user can rewrite is that user's code run as root, within seconds (the
watch reloads on its own). Its state directory holds the files it truncates, writes and
turns into a database: one that another user controls lets them point those writes at any
file of the system. So, after OpenSSH's ``StrictModes`` (sshd_config(5); OpenSSH's
``safe_path()``), nerve trusts a path only when nobody but root and the daemon's own
user (its effective uid) could have put there what it finds:

- the path and *everything the kernel walks through to reach it*, from ``/``, symbolic links
  included (:class:`Checker`, :meth:`Checker.path`), are owned by root or the daemon's user
  and are writable by neither their group nor others;
- except an *ancestor* directory that is sticky and owned by root, such as ``/tmp``: in a
  sticky directory others may add entries but never remove or rename ours
  (``unlink(2)``, ``rename(2)``), so it cannot swap what lies below. The checked path itself
  gets no such exception, nor the directory where a missing name would be created (anyone
  may create a name in ``/tmp``);
- a symbolic link's own mode means nothing (it is always 0777), but its owner may replace it
  in a sticky directory, so it must be owned by root or the daemon's user too; then its
  target is walked like the rest (``/etc/nerve -> /srv/conf`` is fine when the link and the
  chain to ``/srv/conf`` are);
- only directories, regular files and links are checked: a device, FIFO or socket holds no
  code Python could import (``/dev/null`` is rightly 0666), and state files are refused
  unless regular (below).

What is checked, and when (callers in nerved.config, nerved.master.startup, nerved.master.ownfiles,
nerved.master.pidfile, nerved.store, nerved.master.detach):

- the root, ``nerve.yaml``, ``senses/``, ``workflows/`` and every configured package with
  everything inside it (:func:`root_violations`), at start, at every reload and by
  ``nerved check``, before any user code is imported;
- the state directory with what leads to it, the owners of the state files already there
  (:func:`file_owner_violations`), the pid file's path and the control socket's, at start,
  before anything is opened there (:func:`dir_violations`, :meth:`Checker.path`), and again
  at every reload (nerved.master.ownfiles).

A violation refuses the start (exit 78, like a bad nerve.yaml) or the reload. An operator who
chose otherwise starts ``nerved --no-strict-modes`` (sshd's ``StrictModes no``): every
violation is then a WARNING line, at start and at each reload (:func:`enforce`). The
refusals are counted (:func:`refusals`): after one, the daemon refuses reloads from file
changes until an explicit one (what others could write meanwhile must be looked at first).

*User private groups* (Debian's and Ubuntu's ``umask 002``): after Debian's sshd, a path
writable by its group is accepted when that group is its owner's own, the group of the
same name that is the owner's primary group and has no other member
(:func:`private_group`); never root's group (gid 0), which containers give to processes of
arbitrary uids.

State files (:func:`open_state_file`, :func:`prepare_db`) are another matter, checked
whatever the policy: nerved never follows a symbolic link in its state, never opens anything
but a regular file there and never one with a second hard link (a hard link to
``/etc/shadow`` is a regular file owned by root). It creates them 0600, and takes group and
other permissions off existing ones (nerved owns them): its state is its user's alone.

The package, one job per module: the policy and how a violation is reported
(:mod:`~nerved.modes.policy`: ``--no-strict-modes``, :class:`Violation`, :func:`enforce`),
the checks, which only look (:mod:`~nerved.modes.checks`), and the state files and
directories nerved makes and opens, which it fixes (:mod:`~nerved.modes.statefiles`).
Callers use the names below, from ``nerved.modes``.
"""

from __future__ import annotations

from nerved.modes.checks import (
    MAX_ENTRIES,
    MAX_LINKS,
    Checker,
    dir_violations,
    file_owner_violations,
    private_group,
    root_violations,
)
from nerved.modes.policy import HINT, Violation, configure, enforce, refusals, strict
from nerved.modes.statefiles import (
    DB_COMPANIONS,
    DIR_MODE,
    STATE_FILE_MODE,
    UnsafeStateFile,
    make_dirs,
    open_state_file,
    prepare_db,
    vet_state_fd,
)

__all__ = [
    "DB_COMPANIONS",
    "DIR_MODE",
    "HINT",
    "MAX_ENTRIES",
    "MAX_LINKS",
    "STATE_FILE_MODE",
    "Checker",
    "UnsafeStateFile",
    "Violation",
    "configure",
    "dir_violations",
    "enforce",
    "file_owner_violations",
    "make_dirs",
    "open_state_file",
    "prepare_db",
    "private_group",
    "refusals",
    "root_violations",
    "strict",
    "vet_state_fd",
]
