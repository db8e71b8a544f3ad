"""One workdir, one run: a lock file that a live run holds and a second command is refused by.

    with WorkdirLock(workdir):      # raises cli.UserError when another live run holds it
        ...train...

`<workdir>/run.lock` holds who took it (host, pid, the process's start time, since when, the
command) and is locked with `flock` while its run lives. The kernel releases a `flock` when its
process dies, however it dies (SIGKILL included), so on the same host a live holder is exactly a
held lock. A lock file left behind by a dead process (killed, or its machine rebooted) is stale:
it is taken over, and a line says so. A lock file written on another host whose `flock` this host
cannot see held (a shared file system without lock support) cannot be checked from here: it is
refused, naming its host and pid, with the command that removes it once that run is known dead.

A multi-process run (jax.distributed, one workdir on a shared file system) is one run: process 0
takes the lock and tells the others whether it got it (`trainer.loop`), so all of them go on or
stop together.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import sys
import time

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from trainer.cli import UserError

LOCK_NAME = "run.lock"


def _process_start_time(pid: int) -> str | None:
    """The kernel's start time of process `pid` (field 22 of /proc/<pid>/stat), None if gone."""
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start_time: str | None) -> bool:
    """Whether the process `pid` started at `start_time` still runs on this host (pids recycle)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    now = _process_start_time(pid)
    return now is None or start_time is None or now == start_time


def _describe(holder: dict) -> str:
    since = holder.get("since")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if since else "?"
    return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, since {when}"


class WorkdirLock:
    """The lock of a run directory: `acquire()` / `release()`, or a context manager."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = pathlib.Path(workdir).absolute()
        self.path = self.workdir / LOCK_NAME
        self._fd: int | None = None
        self.took_over: dict | None = None  # the stale holder replaced, if any

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Takes the lock, or raises UserError naming the live run that holds it."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                flocked = self._flock(fd)
                if flocked is False:
                    raise UserError(self._in_use_message(self._read(fd), certain=True))
                # The holder may have released and removed the file between open and flock:
                # then this fd locks a file no longer at the path; start again.
                try:
                    if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                        os.close(fd)
                        continue
                except FileNotFoundError:
                    os.close(fd)
                    continue
                holder = self._read(fd)
                if holder and not self._stale(holder, flocked):
                    raise UserError(self._in_use_message(holder, certain=False))
            except BaseException:
                if self._fd != fd:
                    os.close(fd)
                raise
            break
        if holder:
            self.took_over = holder
            logging.warning(
                "took over %s: its run (%s) is no longer running (killed?)",
                self.path,
                _describe(holder),
            )
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start_time": _process_start_time(os.getpid()),
            "since": time.time(),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        """Removes the lock file and releases the lock (a no-op when not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None

    @staticmethod
    def _flock(fd: int) -> bool | None:
        """True: locked; False: another process holds it; None: this file system has no flock."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None
            raise

    @staticmethod
    def _read(fd: int) -> dict:
        data = b""
        while chunk := os.pread(fd, 65536, len(data)):
            data += chunk
        try:
            holder = json.loads(data.decode() or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {"host": "?", "pid": "?"}  # half-written by a process killed while writing it
        return holder if isinstance(holder, dict) else {}

    @staticmethod
    def _stale(holder: dict, flocked: bool | None) -> bool:
        """Whether a holder recorded in the file is gone (this process holds the flock now)."""
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _alive(holder["pid"], holder.get("process_start_time"))
        # Another host: its flock, where the file system supports it, was released (the holder
        # died); without flock support nothing tells a live holder from a dead one.
        return flocked is True and holder.get("host") not in (None, "?")

    def _in_use_message(self, holder: dict, certain: bool) -> str:
        command = holder.get("command")
        running = f" ({command})" if command else ""
        message = (
            f"{self.workdir} is in use by a run in progress, {_describe(holder)}{running}: one "
            "workdir holds one run. Wait for it to end, stop it, or use another --workdir."
        )
        if not certain:
            message += (
                f"\nIf that run is known to be dead, remove the lock and rerun: rm {self.path}"
            )
        return message


@contextlib.contextmanager
def held_by_this_run(workdir: str | os.PathLike):
    """The workdir's lock for the whole run: taken by process 0, which tells the others."""
    lock = WorkdirLock(workdir) if jax.process_index() == 0 else None
    refusal = None
    if lock is not None:
        try:
            lock.acquire()
        except UserError as error:
            refusal = str(error)
    if jax.process_count() > 1:
        refused = multihost_utils.broadcast_one_to_all(np.int32(refusal is not None))
        if refused and refusal is None:
            refusal = f"{workdir} is in use by another run (process 0's log says which)"
    if refusal is not None:
        raise UserError(refusal)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
