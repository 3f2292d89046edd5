"""Keeps an executor's sidecar for exactly as long as the executor lives.

Spark stops a task by killing its Python worker (a cancelled job, a
speculative loser, a stage abort) while the executor JVM goes on: the
executor's sidecar must go on too, for its next tasks. When the executor
itself goes (``spark.stop()``, a killed executor), its sidecar must go at
once. A sidecar launched by the shim counts its users through a shared
``flock`` on ``executor/sidecar.users`` and exits as soon as none is left
(``--exit-on-orphan``). The workers hold it while they live; this process
holds it for the executor: started by the first worker that uses the
volume, once per volume (``executor/anchor.lock``), in a session of its own
so that no worker's death takes it along, it waits for the workers' parent
to exit (the PySpark daemon: it lives as long as the executor's Python side
and is stopped by ``spark.stop()``) and exits then, letting the lock go.

    python -I -S _anchor.py VOLUME PID START

It prints ``ready`` once it holds the lock (or another anchor does) and
detaches. Standard library only, run without ``site``: it must start fast.
"""

import fcntl
import os
import select
import sys
import time


def started_at(pid):
    """The start time (clock ticks since boot) of `pid`, or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
        return int(data[data.rfind(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def wait_for_exit(pid, start):
    """Returns once process `pid` (started at `start`) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    if started_at(pid) != start:
        return
    if fd is not None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll(60_000):
            pass
        return
    while started_at(pid) == start:
        time.sleep(0.05)


def main(argv):
    volume, pid, start = argv[1], int(argv[2]), int(argv[3])
    executor = os.path.join(volume, "executor")
    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    anchor = os.open(os.path.join(executor, "anchor.lock"), flags, 0o644)
    try:
        fcntl.flock(anchor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print("ready (another anchor holds it)", flush=True)
        return 0
    users = os.open(os.path.join(executor, "sidecar.users"), flags, 0o644)
    fcntl.flock(users, fcntl.LOCK_SH)
    # Detach: the worker that started us reaps this process at once; the
    # child, with the same locks, lives on beside the executor.
    if os.fork() > 0:
        print("ready", flush=True)
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    wait_for_exit(pid, start)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
