"""bash, driven as on a TAB: what it offers for a ``nervectl`` command line.

For tests/test_docs.py (the completion a checkout builds) and tests/test_packaging.py (the
one the package installs, found as bash-completion finds it).
"""

from __future__ import annotations

import subprocess

# After ``setup`` (shell code that makes nervectl's completion known to bash), find the
# function ``complete -p nervectl`` names, fill COMP_WORDS and friends as bash does for the
# line, call it, print COMPREPLY.
_DRIVE = r"""
eval "$1" || exit 3
spec=$(complete -p nervectl) || exit 4
fn=${spec##*-F }; fn=${fn%% *}
read -r -a COMP_WORDS <<< "$2"
[[ $2 == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); COMP_LINE=$2; COMP_POINT=${#COMP_LINE}
"$fn" nervectl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""

# What an interactive bash with bash-completion does on the first TAB after ``nervectl``:
# load /usr/share/bash-completion/completions/nervectl through its loader; without
# bash-completion, source the file, as its header says to.
INSTALLED = r"""
if [ -r /usr/share/bash-completion/bash_completion ]; then
    . /usr/share/bash-completion/bash_completion
    __load_completion nervectl 2>/dev/null || _completion_loader nervectl
else
    . /usr/share/bash-completion/completions/nervectl
fi
"""


def bash_completes(setup: str, line: str, env: dict[str, str] | None = None) -> list[str]:
    """The words bash offers on a TAB at the end of ``line``, once ``setup`` has run."""
    done = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", _DRIVE, "bash", setup, line],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr}"
    return [word for word in done.stdout.splitlines() if word]
