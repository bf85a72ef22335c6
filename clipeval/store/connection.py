"""How the store is opened: for the span of one read or one transaction, never longer.

DuckDB lets either ONE read-write process or MANY read-only processes hold a database file, not
both. The app, the CLI's readers and its writers therefore never keep the file open: every read
opens a read-only connection, runs its query and closes it; every write opens a read-write
connection, runs one transaction and closes it. A writer computes everything first and opens the
file only to write (dissect, evaluate and import do); a second writer, or a reader that finds a
writer there, waits and retries (saying so) for up to `lock_timeout()` seconds.

Inside one process the same rule holds between threads (the app serves every browser session from
threads of one process): a per-file readers-writer lock lets readers share and gives a writer the
file alone, because DuckDB refuses a read-write and a read-only connection to one file in one
process as well. A connection a thread already holds is reused by nested calls on that thread.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import duckdb

from clipeval.errors import ClipevalError, check_path, file_kind, no_space, out_of_space

DEFAULT_LOCK_TIMEOUT_S = 120.0
# Read-only connections are opened with one fixed configuration (DuckDB refuses two configurations
# for one file in one process): no file, URL or extension access from SQL, DuckDB's memory bounded,
# settings frozen. The SQL console relies on it as its second line of defence; the memory limit is
# what stops one console query from building a huge value in the app server (the app's own reads
# need a small fraction of it; larger sorts and joins spill to disk).
READ_CONFIG = {"enable_external_access": False, "lock_configuration": True, "memory_limit": "1GB"}
NOT_STORE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".json", ".jsonl", ".npy", ".npz", ".xlsx", ".zip")


class StoreBusy(ClipevalError):
    """Another process held the store for longer than the lock timeout."""


def lock_timeout() -> float:
    """Seconds a command waits for the store ($CLIPEVAL_LOCK_TIMEOUT, default 120)."""
    raw = os.environ.get("CLIPEVAL_LOCK_TIMEOUT", "")
    if not raw:
        return DEFAULT_LOCK_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise ClipevalError(f"CLIPEVAL_LOCK_TIMEOUT must be a number of seconds >= 0, not {raw!r}")
    return value


def check_store_path(path: Path, must_exist: bool) -> None:
    """Refuse a path that is not (and cannot become) a DuckDB run store, before DuckDB opens it."""
    if path.is_dir():
        raise ClipevalError(f"the run store {path} is a folder; --db takes a DuckDB file (e.g. runs.duckdb)")
    if path.exists() and not path.is_file():  # opening a FIFO would wait for a writer forever
        kind = file_kind(path.stat().st_mode)
        raise ClipevalError(f"the run store {path} is {kind}; --db takes a DuckDB file (e.g. runs.duckdb)")
    if must_exist and not os.path.lexists(path):
        raise ClipevalError(f"run store {path} does not exist yet; make a run first (clipeval demo)")
    if os.path.lexists(path):  # a symlink loop, an unreadable file, a pipe: named here, not by DuckDB
        check_path(path, "run store", "read")
    if path.exists():
        with open(path, "rb") as f:
            head = f.read(16)
        if len(head) < 12 or head[8:12] != b"DUCK":
            kind = (
                "a Parquet file"
                if head[:4] == b"PAR1"
                else "empty"
                if not head
                else "a text file (CSV?)"
                if all(32 <= b < 127 or b in (9, 10, 13) for b in head)
                else "not DuckDB"
            )
            raise ClipevalError(
                f"{path} is not a DuckDB run store ({kind}); --db takes a store file such as "
                "runs.duckdb (a new name creates one)"
            )
    elif must_exist:
        raise ClipevalError(f"run store {path} does not exist yet; make a run first (clipeval demo)")
    elif path.suffix.lower() in NOT_STORE_SUFFIXES:
        raise ClipevalError(
            f"--db {path}: a run store is a DuckDB file; a {path.suffix} name looks like a "
            "mistake (use e.g. runs.duckdb)"
        )


class _FileLock:
    """Readers-writer lock for one store file within this process; a waiting writer goes first."""

    def __init__(self):
        self.cond = threading.Condition()
        self.readers = 0
        self.writer = False
        self.writers_waiting = 0

    @contextmanager
    def hold(self, write: bool):
        with self.cond:
            if write:
                self.writers_waiting += 1
                try:
                    self.cond.wait_for(lambda: not self.writer and self.readers == 0)
                finally:
                    self.writers_waiting -= 1
                self.writer = True
            else:
                self.cond.wait_for(lambda: not self.writer and self.writers_waiting == 0)
                self.readers += 1
        try:
            yield
        finally:
            with self.cond:
                if write:
                    self.writer = False
                else:
                    self.readers -= 1
                self.cond.notify_all()


_file_locks: dict[str, _FileLock] = {}
_file_locks_guard = threading.Lock()
_held = threading.local()  # per thread: resolved path -> (connection, is_write)
# One duckdb.connect at a time in this process: a thread that opens a file while another opens or closes it
# can be handed the database before the Python client has finished setting it up, and its next register()
# then fails with "Table Function with name pandas_scan does not exist" (seen with the app's warm-up
# thread beside a page; reproduced with two threads opening, registering and closing in a loop).
_connecting = threading.Lock()


def _file_lock(key: str) -> _FileLock:
    with _file_locks_guard:
        return _file_locks.setdefault(key, _FileLock())


def _lock_error(e: duckdb.Error) -> bool:
    """True for 'another process holds the file' and for DuckDB's in-process configuration clash."""
    msg = str(e)
    return (isinstance(e, duckdb.IOException) and "lock" in msg.lower()) or (
        isinstance(e, duckdb.ConnectionException) and "different configuration" in msg
    )


class Connection:
    """The store's file and how to hold it briefly. Store (clipeval.store) adds the queries."""

    def __init__(
        self,
        path: str | os.PathLike,
        read_only: bool = False,
        *,
        on_wait=None,
        timeout_s: float | None = None,
        create: bool = True,
    ):
        """`read_only`: this Store never writes (and the file must exist). `create`: a writer may make
        a new store; it does so at its first access, so a command refused before then leaves no file.
        `on_wait(message)` is told once per wait for the lock (default: print to stderr); `timeout_s`
        defaults to lock_timeout()."""
        self.path = Path(path).expanduser()
        self.read_only = read_only
        self.timeout_s = lock_timeout() if timeout_s is None else float(timeout_s)
        self.on_wait = on_wait if on_wait is not None else self._print_wait
        check_store_path(self.path, must_exist=read_only or not create)
        self._key = str(self.path.resolve())
        self._creating, self._in_create = threading.RLock(), False
        self._ready = self.path.exists()
        if self._ready:
            self._init_schema()

    def _create(self) -> None:
        """Make the store file and its tables, once, at the first read or write of a new store. Other
        threads (the app's warm-up) wait until the tables exist; the creating thread's own store calls
        (in _init_schema) pass."""
        if self._ready:
            return
        with self._creating:
            if self._ready or self._in_create:
                return
            self._in_create = True
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._init_schema()
                self._ready = True
            finally:
                self._in_create = False

    def _init_schema(self) -> None:  # Store sets up the tables
        pass

    def close(self) -> None:
        """Nothing to close: the store holds no connection between calls (kept for callers' symmetry)."""

    @staticmethod
    def _print_wait(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ opening
    def _connect(self, write: bool) -> duckdb.DuckDBPyConnection:
        """A new connection, waiting (with growing pauses) while another process holds the file."""
        start = time.monotonic()
        delay, told = 0.01, False
        while True:
            try:
                with _connecting:
                    if write:
                        return duckdb.connect(str(self.path))
                    return duckdb.connect(str(self.path), read_only=True, config=READ_CONFIG)
            except duckdb.Error as e:
                if out_of_space(e):
                    raise no_space(self.path) from e
                if not _lock_error(e):
                    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise ClipevalError(f"{self.path} cannot be opened as a DuckDB run store: {first}") from e
                waited = time.monotonic() - start
                if waited >= self.timeout_s:
                    raise StoreBusy(
                        f"the run store {self.path} stayed busy for {waited:.0f} s ({_holder(e)}); "
                        f"try again, or wait longer with CLIPEVAL_LOCK_TIMEOUT=SECONDS"
                    ) from e
                if not told and waited >= 0.5:  # brief waits (another command's short write) pass silently
                    told = True
                    self.on_wait(
                        f"waiting for the run store {self.path}: {_holder(e)} is using it; "
                        f"retrying for up to {self.timeout_s:.0f} s (CLIPEVAL_LOCK_TIMEOUT)"
                    )
                time.sleep(min(delay, max(0.0, self.timeout_s - waited)))
                delay = min(delay * 2, 0.25)

    @contextmanager
    def reading(self):
        """A read-only connection for the span of the block (reused if this thread already holds one)."""
        self._create()
        held = getattr(_held, "cons", None)
        if held is None:
            held = _held.cons = {}
        if self._key in held:
            yield held[self._key][0]
            return
        with _file_lock(self._key).hold(write=False):
            con = self._connect(write=False)
            held[self._key] = (con, False)
            try:
                yield con
            finally:
                del held[self._key]
                con.close()

    @contextmanager
    def transaction(self):
        """One read-write transaction on a connection opened for it and closed after it: all or nothing."""
        if self.read_only:
            raise ClipevalError(f"the run store {self.path} was opened read-only")
        self._create()
        held = getattr(_held, "cons", None)
        if held is None:
            held = _held.cons = {}
        if self._key in held:
            con, is_write = held[self._key]
            if not is_write:
                raise RuntimeError("a store write inside a store read on the same thread")
            yield con  # nested in a transaction of this thread: part of it
            return
        with _file_lock(self._key).hold(write=True):
            con = self._connect(write=True)
            held[self._key] = (con, True)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                    con.execute("COMMIT")
                except BaseException as e:
                    try:
                        con.execute("ROLLBACK")
                    except duckdb.Error:
                        pass  # a COMMIT that failed has already rolled back: its error is the one to show
                    if out_of_space(e):
                        raise no_space(self.path) from e
                    raise
            finally:
                del held[self._key]
                con.close()

    # ------------------------------------------------------------------ small helpers
    def df(self, sql: str, params=None):
        with self.reading() as con:
            return con.execute(sql, params or []).df()

    def rows(self, sql: str, params=None) -> list[tuple]:
        with self.reading() as con:
            return con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params=None):
        rows = self.rows(sql, params)
        return rows[0][0] if rows else None

    def execute(self, sql: str, params=None) -> None:
        """One write statement in its own transaction."""
        with self.transaction() as con:
            con.execute(sql, params or [])

    def file_stamp(self) -> tuple:
        """(size, mtime) of the store file and its write-ahead log: changes with every committed write,
        read without opening the database (the app keys its caches on it)."""
        out = []
        for p in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                st = p.stat()
                out += [st.st_size, st.st_mtime_ns]
            except FileNotFoundError:
                out += [0, 0]
        return tuple(out)


def _holder(e: Exception) -> str:
    """'process 1234' from DuckDB's lock message, or 'another process'."""

    m = re.search(r"PID (\d+)", str(e))
    if m:
        return f"process {m.group(1)}"
    return "another thread of this process" if isinstance(e, duckdb.ConnectionException) else "another process"
