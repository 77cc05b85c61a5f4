"""Checking an output path before anything is computed for it."""

from __future__ import annotations

import os

from fxcomp.errors import SaveError


def check_writable(path: str | os.PathLike) -> None:
    """Raise :class:`fxcomp.SaveError` unless a file can be written at ``path``.

    Checked up front so a long compression does not end in an unwritable path. An open
    file object (which ``torch.save`` also takes) is left to its owner.
    """
    if not isinstance(path, (str, os.PathLike)):
        return
    target = os.fspath(path)
    if not target:
        raise SaveError("cannot write to an empty path; give a file name")
    if target.endswith(os.sep) or os.path.isdir(target):
        raise SaveError(f"cannot write '{target}': it is a directory; give a file name")
    if os.path.exists(target):  # an existing file (or /dev/null) needs only to be writable itself
        if not os.access(target, os.W_OK):
            raise SaveError(f"cannot write '{target}': the file is not writable; choose another path")
        return
    directory = os.path.dirname(os.path.abspath(target))
    if not os.path.isdir(directory):
        raise SaveError(f"cannot write '{target}': directory '{directory}' does not exist; create it or choose another path")
    if not os.access(directory, os.W_OK):
        raise SaveError(f"cannot write '{target}': directory '{directory}' is not writable; choose another path")
