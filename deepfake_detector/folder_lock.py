"""One writer per folder: every command that writes a folder holds an exclusive lock on it.

Two `split` commands into one --out would each write a split (and leave images of both, some in
train/ and val/ at once); two `train` commands into one run would mix their files. So a command
takes the folder's lock first (`folder_lock`, or `locks_folders` on a library entry point, which
the notebook calls too): an exclusive `fcntl.flock` on the file `.deepfake_detector.lock` inside
the folder, which holds the pid of the command that has it.

A second command into a locked folder REFUSES at once, in one line naming the folder and the
holder's pid (FolderBusyError, an OSError: the command line prints it and exits 2); it does not
wait. Waiting would look like a hang, with nothing on the screen for as long as a training run
lasts, and whatever the second command was about to write would be decided by the folder the
first one leaves behind; refusing says who holds it, and the user decides (wait for it, stop it,
or choose another folder).

* The kernel releases a flock when its process ends, however it ends (an error, Ctrl-C, kill -9):
  a lock file left by a dead process blocks nothing; the next command takes it over.
* The lock file is removed when the lock is released (while still held, so nobody locks a file
  that is about to go), and a folder the lock had to create is removed too if it is still empty:
  nothing is left in or around the outputs. Run and split manifests never count it as a file of
  their own or a foreign one (manifest.py).
* Nested locks of one folder in one process (cross-eval calls evaluate on the same run) are one
  lock. Under torchrun only rank 0 writes files, so only rank 0 locks.
* Where locks are not available (no fcntl on Windows; filesystems that do not support flock,
  some NFS, SMB or FUSE mounts: ENOLCK, EOPNOTSUPP), the command warns (FolderLockWarning) and
  goes on without one. Where the lock file cannot be created at all (a folder that cannot be
  written), the command goes on too and fails on its own, with its own message.

No torch here.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".deepfake_detector.lock"
# flock's answers on a filesystem that cannot lock (NFS without lockd, SMB/CIFS, some FUSE)
NO_LOCKS_HERE = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
TRIES = 20  # takes of a lock file that its holder removed meanwhile, before giving up


class FolderBusyError(OSError):
    """Another command is writing the folder; the message names the folder and its pid."""


class FolderLockWarning(UserWarning):
    """The folder could not be locked (no support for locks there); the command went on."""


@dataclass
class Held:
    folder: Path
    fd: int | None                                    # None: going on without a lock
    created: list[Path] = field(default_factory=list)  # folders made for the lock, deepest first
    depth: int = 1


_held: dict[Path, Held] = {}
_guard = threading.Lock()


def holds_anything(folder) -> bool:
    """Whether `folder` holds any entry but a lock file (the check "is this folder empty?")."""
    return any(entry.name != LOCK_FILE for entry in Path(folder).iterdir())


def writes_files() -> bool:
    """False in torchrun's ranks other than 0: they write nothing, so they lock nothing."""
    dist = sys.modules.get("torch.distributed")
    return not (dist is not None and dist.is_available() and dist.is_initialized()
                and dist.get_rank() != 0)


@contextlib.contextmanager
def folder_lock(*folders):
    """Hold the lock of each folder (None: skipped) for the block; FolderBusyError, naming the
    folder and the holder's pid, when another process holds one. Missing folders are created
    (and removed at the end if still empty)."""
    taken = []
    try:
        for folder in dict.fromkeys(Path(f).expanduser().resolve() for f in folders
                                    if f is not None):
            taken.append(acquire(folder))
        yield
    finally:
        for held in reversed(taken):
            release(held)


def locks_folders(folders_of):
    """Decorate a library entry point: folders_of(arguments) gives the folders it writes (from
    its arguments by name, defaults applied; None entries skipped), locked for the whole call."""
    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with folder_lock(*folders_of(bound.arguments)):
                return function(*args, **kwargs)
        return locked
    return decorate


def acquire(folder: Path) -> Held | None:
    with _guard:
        if folder in _held:  # this process holds it already: the same lock, once more
            _held[folder].depth += 1
            return _held[folder]
        if not writes_files() or (folder.exists() and not folder.is_dir()):
            return None  # a file where the folder should be: the command itself says so
        created = [p for p in (folder, *folder.parents) if not p.exists()]
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None  # it cannot be written: the command fails on its own, in its words
        try:
            held = Held(folder, lock_fd(folder), created)
        except BaseException:
            remove_empty(created)
            raise
        _held[folder] = held
        return held


def lock_fd(folder: Path) -> int | None:
    """The open, flocked lock file of `folder` with this pid in it; None where locks are not
    supported (warned) or the file cannot be created."""
    path = folder / LOCK_FILE
    if fcntl is None:
        warn_no_lock(folder, "file locks are not available on this system (no fcntl)")
        return None
    for _ in range(TRIES):
        try:
            folder.mkdir(parents=True, exist_ok=True)  # (its holder may have removed it)
            existed = path.exists()
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            pid = holder_pid(fd) if isinstance(error, BlockingIOError) else None
            os.close(fd)
            if isinstance(error, BlockingIOError):
                raise FolderBusyError(
                    f"{folder} is being written by another command (pid {pid}); nothing was "
                    "changed. Wait for it to finish, or choose another folder.") from None
            if error.errno in NO_LOCKS_HERE:
                if not existed:
                    path.unlink(missing_ok=True)  # no lock: no lock file either
                warn_no_lock(folder, f"its filesystem does not support file locks ({error.strerror})")
                return None
            raise
        if same_file(fd, path):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)  # its holder removed it while we opened it: take the new one
    raise FolderBusyError(f"{folder}: its lock file {LOCK_FILE} keeps being replaced; nothing was "
                          "changed. Try again.")


def holder_pid(fd: int) -> str:
    """The pid the holder wrote (it writes it just after taking the lock: wait a moment)."""
    for _ in range(20):
        text = os.pread(fd, 64, 0).decode(errors="replace").split()
        if text:
            return text[0]
        time.sleep(0.01)
    return "unknown"


def same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def warn_no_lock(folder: Path, why: str) -> None:
    warnings.warn(f"{folder} is not locked: {why}. Going on without a lock, so another command "
                  "writing this folder at the same time is not stopped.", FolderLockWarning,
                  stacklevel=5)


def release(held: Held | None) -> None:
    if held is None:
        return
    with _guard:
        held.depth -= 1
        if held.depth:
            return
        del _held[held.folder]
        if held.fd is not None:
            path = held.folder / LOCK_FILE
            with contextlib.suppress(OSError):
                if same_file(held.fd, path):
                    path.unlink()  # while still locked: nobody takes a file about to go
            os.close(held.fd)
        remove_empty(held.created)


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders a lock created (deepest first), as long as they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return
