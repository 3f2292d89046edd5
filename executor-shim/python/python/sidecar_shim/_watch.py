"""Event-driven waits on a directory, in pure Python: inotify through
ctypes, with a polling fallback.

A :class:`DirWatch` is armed *before* the condition is first checked, so a
file created between the check and the wait still wakes it. Events are not
parsed: any change in the directory means "look again". Where inotify
cannot be set up (not Linux, watch limits exhausted, a network filesystem
that delivers no events is indistinguishable, hence the tick) the wait
degrades to checking every ``POLL`` seconds.
"""

from __future__ import annotations

import ctypes
import os
import select
import time
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

#: The polling fallback's interval (the entrypoint's default `--poll`).
POLL = 0.02

_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
# IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE |
# IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
_MASK = 0x4 | 0x8 | 0x40 | 0x80 | 0x100 | 0x200 | 0x400 | 0x800

try:
    _LIBC: Optional[ctypes.CDLL] = ctypes.CDLL(None, use_errno=True)
    _LIBC.inotify_init1.argtypes = [ctypes.c_int]
    _LIBC.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
except (OSError, AttributeError):
    _LIBC = None


class DirWatch:
    """Wakes on any change in one directory (or every ``POLL`` s without inotify)."""

    def __init__(self, path: str):
        self.path = path
        self.fd: Optional[int] = None
        if _LIBC is None:
            return
        fd = _LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            return  # EMFILE / ENOSYS: poll
        if _LIBC.inotify_add_watch(fd, os.fsencode(path), _MASK) < 0:
            os.close(fd)  # ENOSPC (watch limit), ENOENT: poll
            return
        self.fd = fd

    @property
    def polling(self) -> bool:
        return self.fd is None

    def wait(self, timeout: float) -> None:
        """Returns after an event in the directory, or after ``timeout`` s."""
        if self.fd is None:
            time.sleep(max(0.0, min(timeout, POLL)))
            return
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if ready:
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "DirWatch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def wait_until(
    directory: str,
    check: Callable[[], Optional[T]],
    deadline: Optional[float],
    tick: float = 0.25,
    on_tick: Optional[Callable[[], None]] = None,
) -> Optional[T]:
    """Waits until ``check()`` returns something other than None, and returns it.

    ``deadline`` is a ``time.monotonic()`` value (None: no limit); past it,
    returns None. ``on_tick`` runs at least every ``tick`` seconds (a
    liveness check that raises to end the wait).
    """
    with DirWatch(directory) as watch:
        while True:
            got = check()
            if got is not None:
                return got
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return None
            if on_tick is not None:
                on_tick()
            remaining = tick if deadline is None else min(tick, deadline - now)
            watch.wait(remaining)
