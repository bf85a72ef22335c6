"""One exception type for every problem a user can fix, so the CLI and the app can show it plainly, and
the one check of the paths a user names (check_path) that turns unusable ones into it."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path


class ClipevalError(Exception):
    """A user-facing error: the message names the problem and, where possible, the fix."""


class WeightsUnavailable(ClipevalError):
    """A model's weights are not on this machine (and model hubs are not reachable)."""


def _why(e: OSError) -> str:
    """An OSError's reason in words, e.g. 'permission denied', 'too many levels of symbolic links'."""
    text = (e.strerror or type(e).__name__).rstrip(".")
    return text[:1].lower() + text[1:]


def file_kind(mode: int) -> str:
    """What a path that is not a regular file is, in words (opening a FIFO would wait for a writer)."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def check_path(path, what: str, use: str, new_folders: bool = False):
    """`path`, a file or folder the user named, as a Path, if it can serve `use`; else ClipevalError
    naming the path and the problem (permission, read-only place, symlink loop, wrong kind of file).
    The one check every command runs on its paths before any work:
      'read':   an existing regular file that opens for reading;
      'folder': an existing folder whose entries can be listed;
      'write':  a file that can be created or replaced: not a folder or a special file, writable if it
                exists, in an existing folder that accepts a new file (with `new_folders`, a missing
                folder is fine where its nearest existing parent accepts one: the writer makes it).
    Permissions are tried, not inferred from mode bits: root, read-only mounts and /proc answer truly."""
    p = Path(path).expanduser()
    try:
        st = os.stat(p)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise ClipevalError(f"{what} {path}: {_why(e)}") from e
    try:
        if use == "folder":
            if st is None or not stat.S_ISDIR(st.st_mode):
                raise ClipevalError(f"{what} {path} does not exist or is not a folder")
            with os.scandir(p) as entries:
                next(entries, None)
            return p
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise ClipevalError(f"{what} {path} is a folder; give a file name")
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise ClipevalError(f"{what} {path} is {file_kind(st.st_mode)}, not a regular file")
        if use == "read":
            if st is None:
                raise ClipevalError(f"{what} {path} does not exist")
            open(p, "rb").close()
            return p
        if st is not None:
            open(p, "ab").close()  # opened to append, nothing written: the file stays as it is
        folder = p.absolute().parent
        if not new_folders and not folder.is_dir():
            raise ClipevalError(f"{what} {path} cannot be written: folder {folder} does not exist")
        folder = _nearest_existing(folder)
        try:
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".clipeval-write-check-")
        except OSError as e:
            raise ClipevalError(
                f"{what} {path} cannot be written: its folder {folder} does not accept new files ({_why(e)})"
            ) from e
        os.close(fd)
        os.unlink(probe)
        return p
    except OSError as e:
        raise ClipevalError(f"{what} {path} cannot be {'written' if use == 'write' else 'read'}: {_why(e)}") from e


def out_of_space(e: BaseException) -> bool:
    """Whether `e` is a full disk: an OSError ENOSPC, or DuckDB's error that carries its text."""
    return (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e)


def _nearest_existing(path) -> str:
    where = os.path.abspath(path)
    while not os.path.exists(where):
        where = os.path.dirname(where)
    return where


class NoSpace(ClipevalError):
    """A write found its disk full."""


def no_space(path, need_bytes: int | None = None) -> NoSpace:
    """The error for a full disk: the mount that holds `path`, what it has free and, where known,
    about what was needed."""
    mount = where = _nearest_existing(path)
    while not os.path.ismount(mount):
        mount = os.path.dirname(mount)
    free = shutil.disk_usage(where).free
    need = f"needed about {need_bytes / 2**20:.1f} MB, " if need_bytes else ""
    return NoSpace(
        f"no space left on {mount} ({need}{free / 2**20:.1f} MB free) for {path}; nothing was "
        "written: free some space there or write elsewhere"
    )


def check_space(path, need_bytes: int) -> None:
    """Refuse, before anything is written, to write about `need_bytes` where the disk holding `path`
    has less free."""
    if shutil.disk_usage(_nearest_existing(path)).free < need_bytes:
        raise no_space(path, need_bytes)
