"""Atomic file output: write a file or folder next to its destination, then rename it into place.

Why: an export, a saved model, a run record or a report interrupted half-way (a crash, a full disk, Ctrl-C) must
never leave something at the destination that looks finished, and an existing export is only replaced when the
caller says so.  Renames within one directory are atomic on POSIX, so readers see either the old file or the new one.
Every atomic write of the package goes through ``atomic_output``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator


class DestinationExistsError(FileExistsError):
    """An export destination that exists and may not be replaced; ``path`` names it."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path

    def __str__(self) -> str:
        return str(self.args[0])


def check_destination(path: str | os.PathLike, overwrite: bool) -> str:
    """The absolute destination path; refuses an existing one unless ``overwrite``."""
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not overwrite:
        raise DestinationExistsError(
            f"{path} already exists; pass overwrite=True to replace it, or export to another path", path)
    return path


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, overwrite: bool = False, directory: bool = False) -> Iterator[str]:
    """Yield a temporary path beside ``path`` to write into (a fresh directory if ``directory``, else a file name
    that does not exist yet); on success it replaces ``path``, on error it is removed and ``path`` is untouched."""
    path = check_destination(path, overwrite)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    base = os.path.basename(path)
    tmp = tempfile.mkdtemp(prefix=f".{base}.", suffix=".tmp", dir=parent)
    target = tmp if directory else os.path.join(tmp, base)
    try:
        yield target
        if not os.path.lexists(target):
            raise RuntimeError(f"export to {path} produced nothing at {target}")
        if directory:  # mkdtemp made it 0700; a finished folder gets the permissions of any new folder
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(target, 0o777 & ~mask)
        check_destination(path, overwrite)  # something may have appeared meanwhile
        if os.path.lexists(path):
            old = tempfile.mkdtemp(prefix=f".{base}.", suffix=".old", dir=parent)
            try:
                os.replace(path, os.path.join(old, base))
                try:
                    os.replace(target, path)
                except OSError:
                    os.replace(os.path.join(old, base), path)  # put the previous export back
                    raise
            finally:
                _remove(old)
        else:
            os.replace(target, path)
    finally:
        _remove(tmp)


LEFTOVER = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.(?:tmp|old)$")
"""The name of a temporary entry ``atomic_output`` makes (``.<name>.<random>.tmp`` / ``.old``) and leaves behind
only when its process is killed."""


def remove_leftovers(folder: str | os.PathLike) -> list[str]:
    """Remove the temporary entries killed writes of ``atomic_output`` left in ``folder``; returns their names.
    Only for a folder whose lock the caller holds (a live writer's temporary entry looks the same)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        return []
    found = sorted(name for name in os.listdir(folder) if LEFTOVER.match(name))
    for name in found:
        _remove(os.path.join(folder, name))
    return found


def write_text(path: str | os.PathLike, text: str) -> None:
    """Atomically write (or replace) a UTF-8 text file."""
    with atomic_output(path, overwrite=True) as tmp, open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)


def new_output_dir(path: str | os.PathLike, explicit: bool) -> str:
    """A folder for a new set of results that never mixes with or replaces earlier ones.

    ``explicit`` (the user named it): used if it is absent or empty, else refused.  Otherwise ``path`` is a default
    and the first of ``path``, ``path_2``, ``path_3`` … that is absent or empty is taken.  The folder is created.
    """
    path = os.path.abspath(os.fspath(path))

    def free(candidate: str) -> bool:
        return not os.path.lexists(candidate) or (os.path.isdir(candidate) and not os.listdir(candidate))

    if explicit:
        if os.path.lexists(path) and not os.path.isdir(path):
            raise FileExistsError(f"{path} is a file, not a folder; name a new or empty folder for the results "
                                  "(nothing was written)")
        if not free(path):
            raise FileExistsError(f"{path} already holds results; name a new or empty folder so nothing is "
                                  "overwritten")
        chosen = path
    else:
        chosen = path
        number = 2
        while not free(chosen):
            chosen = f"{path}_{number}"
            number += 1
    os.makedirs(chosen, exist_ok=True)
    return chosen


def move_aside(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """Move the file ``path`` into ``folder`` (created if needed) under its own name, or ``name.1``, ``name.2``, … if
    that is taken: a damaged file is kept for inspection and never overwrites one moved there before.  Returns the
    new path."""
    path, folder = os.fspath(path), os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    name = os.path.basename(path)
    destination = os.path.join(folder, name)
    number = 1
    while os.path.lexists(destination):
        destination = os.path.join(folder, f"{name}.{number}")
        number += 1
    shutil.move(path, destination)
    return destination


class WorkdirLockedError(RuntimeError):
    """Another live process is training in this workdir."""


_HELD: dict[str, tuple[int, int]] = {}
"""Locks this process holds: real path → (holding thread's id, depth).  ``flock`` locks belong to an open file, so a
second ``open`` + ``flock`` of a held lock in the same process would refuse its own holder."""
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def workdir_lock(workdir: str | os.PathLike, name: str = ".lock", what: str = "--workdir") -> Iterator[None]:
    """Hold ``<workdir>/<name>`` while a run reads and writes there; a second run is refused at once, naming the
    holder.

    The lock is an ``flock`` on an open file, which the kernel releases when the process ends, however it ends
    (``kill -9`` included): a killed run never leaves a stale lock.  The file only says who holds it.  ``what`` names
    the flag that picks another folder, for the message.  The thread that holds the lock may take it again (the
    outer ``with`` of a run and its inner steps nest); any other thread or process is refused.
    """
    import fcntl  # POSIX only; imported here so the module stays importable elsewhere

    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, name)
    key = os.path.realpath(path)
    me = threading.get_ident()
    with _HELD_GUARD:
        holder = _HELD.get(key)
        if holder is not None and holder[0] == me:
            _HELD[key] = (me, holder[1] + 1)
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[key] = (me, _HELD[key][1] - 1)
        return
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the lock's lifetime)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise WorkdirLockedError(
            f"{workdir} is in use by another run ({owner}); wait for it to finish or use another {what}. "
            "Nothing was changed. (A run that was killed releases the lock by itself.)"
        ) from None
    with _HELD_GUARD:
        _HELD[key] = (me, 1)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        yield
    finally:
        with _HELD_GUARD:
            del _HELD[key]
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
