#!/usr/bin/env python3
"""An executor that drives a serve-mode sidecar through the shared volume
alone: the documented files and JSON records, the Python standard library,
no `sidecar_shim`. Read it as the reference for an executor written in any
language (Scala, Java, Go, a shell script); every step is one of the
numbered steps of the README's "An executor in any language, step by step".

    sidecar-entrypoint --mode serve --volume "$V" --parallel 2 -- \\
        sh -c 'awk -F, -v OFS=, "NR == 1 { print \\$0, \\"n\\"; next } { print \\$0, NR }" \\
               "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"' &
    python3 executor.py --volume "$V" --input trips.csv --tasks 8 --output out.csv --shutdown

It splits the CSV into `--tasks` parts (the header repeated in each), runs
each part as one task (many at once: the sidecar runs `--parallel` of them,
this side keeps `--in-flight` staged), reads each task's output only from
the outcome's manifest, checks its size and xxh3-64 checksum, and writes the
outputs in order (one header) to `--output`. Every task directory is closed
and gone when it exits; `--shutdown` also asks the sidecar to exit.

Exit status: 0 when every task succeeded; 1 when one did not (its outcome
on stderr: status, exit code, reason, stderr tail) or the sidecar was lost;
2 for bad arguments.
"""

import argparse
import collections
import datetime
import json
import os
import secrets
import stat
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import xxh3  # noqa: E402  (pure Python, next to this file)

#: The protocol version this executor speaks (`protocol` in every record).
PROTOCOL = 1
#: How often a pending done_flag is looked for. The standard library has no
#: inotify; a stat() every 10 ms costs nothing measurable and bounds the
#: latency. (With inotify, arm the watch on the task directory before
#: writing start_flag, and keep a tick like this one as a fallback.)
POLL = 0.01
#: How much later than the sidecar's own timeout this side gives up.
DEADLINE_SLACK = 2.0
#: Flags and records are small: a larger one is refused, never parsed.
MAX_FLAG_BYTES = 1 << 20


class ProtocolError(Exception):
    """Something in the volume is not what the protocol says it must be."""


class TaskFailed(Exception):
    """A task did not succeed; the message carries its outcome."""


# ---------------------------------------------------------------------------
# Files: atomic writes, bounded reads that follow no links.


def write_atomic(path, data=b"", mode=0o644):
    """Writes `path` as a dot-prefixed temporary in the same directory, then
    renames it into place: the sidecar never sees half a flag or input."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # whatever the umask: the sidecar may be another user
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_small(path, limit=MAX_FLAG_BYTES):
    """The content of a flag or record: a regular file, not a link, not a
    FIFO (opened non-blocking), at most `limit` bytes. None if absent."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ProtocolError(f"{path}: cannot open: {e.strerror} (a link where a flag belongs?)") from e
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ProtocolError(f"{path}: not a regular file")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ProtocolError(f"{path}: over the {limit}-byte limit")
    return data


def read_json(path, what):
    data = read_small(path)
    if data is None:
        return None
    try:
        record = json.loads(data)
    except ValueError as e:
        raise ProtocolError(f"{path}: malformed {what} JSON: {e}") from e
    if not isinstance(record, dict):
        raise ProtocolError(f"{path}: the {what} is not a JSON object")
    if record.get("protocol") != PROTOCOL:
        raise ProtocolError(f"{path}: protocol version {record.get('protocol')!r} is not supported (this side speaks {PROTOCOL})")
    return record


def open_beneath(root, parts):
    """Opens `root/parts[0]/.../parts[-1]` one component at a time without
    following a link anywhere (O_NOFOLLOW from a directory descriptor), so
    a sidecar cannot point this side outside the volume."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[:-1]:
            nxt = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)


def checked_relative(path):
    """The components of an output path from the manifest: relative, no
    empty, `.` or `..` component, no NUL."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\0" in path:
        raise ProtocolError(f"output path {path!r} is not a relative path")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ProtocolError(f"output path {path!r} has an empty, '.' or '..' component")
    return parts


def rfc3339_now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# ---------------------------------------------------------------------------
# The sidecar's liveness, and ours.


class Heartbeat:
    """`sidecar/heartbeat` judged by content change on this side's clock
    (the sidecar's clock and file times are not trusted)."""

    def __init__(self, path, stale_after):
        self.path = path
        self.stale_after = stale_after
        self.last = None
        self.changed_at = time.monotonic()

    def check(self):
        try:
            now_content = read_small(self.path, 4096)
        except ProtocolError:
            now_content = None
        now = time.monotonic()
        if now_content is not None and now_content != self.last:
            self.last = now_content
            self.changed_at = now
        elif now - self.changed_at > self.stale_after:
            raise ProtocolError(
                f"sidecar unresponsive: {self.path} unchanged for {now - self.changed_at:.1f}s"
            )


class Lease(threading.Thread):
    """Refreshes `executor/lease` (a pulse: {seq, pid, at}) every second, so
    a sidecar can tell when this executor is gone. Optional in the protocol."""

    def __init__(self, volume, every=1.0):
        super().__init__(name="lease", daemon=True)
        self.dir = os.path.join(volume, "executor")
        self.every = every
        self.stopped = threading.Event()

    def beat(self, seq):
        pulse = {"seq": seq, "pid": os.getpid(), "at": rfc3339_now()}
        write_atomic(os.path.join(self.dir, "lease"), json.dumps(pulse).encode())

    def run(self):
        seq = 1
        while not self.stopped.wait(self.every):
            seq += 1
            try:
                self.beat(seq)
            except OSError as e:
                print(f"executor: cannot refresh the lease: {e}", file=sys.stderr)

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        self.beat(1)
        super().start()


def wait_ready(volume, timeout):
    """Step 1: the sidecar accepts tasks once `sidecar/ready` exists."""
    path = os.path.join(volume, "sidecar", "ready")
    deadline = time.monotonic() + timeout
    while True:
        ready = read_json(path, "ready record")
        if ready is not None:
            return ready
        if time.monotonic() > deadline:
            raise ProtocolError(f"no sidecar serves {volume}: {path} did not appear within {timeout:.0f}s")
        time.sleep(POLL)


# ---------------------------------------------------------------------------
# One task.


class Task:
    def __init__(self, volume, index, nonce, data):
        self.volume = volume
        self.index = index
        # Fencing: partition, attempt and a nonce, so a retry never reads
        # another attempt's files. [A-Za-z0-9._-]{1,128}, not starting with '.'.
        self.id = f"p{index}-a0-{nonce}"
        self.dir = os.path.join(volume, "tasks", self.id)
        self.data = data
        self.deadline = None
        self.cancelled_at = None
        self.outcome = None

    def path(self, *names):
        return os.path.join(self.dir, *names)

    def stage(self):
        """Steps 3-4: the task directory (world-writable: the sidecar may be
        another user, and it creates output/, stdout, stderr, done_flag
        there and removes it all on close), then the input, atomically."""
        for d in (self.dir, self.path("input")):
            os.mkdir(d, 0o777)
            os.chmod(d, 0o777)
        write_atomic(self.path("input", "part.csv"), self.data)

    def start(self, timeout):
        """Step 5: the start flag. Empty means all defaults: the sidecar
        hands the logic the one staged file (part.csv, so CSV in and out).
        With a timeout, the spec says so, and the sidecar enforces it too."""
        spec = b""
        if timeout is not None:
            spec = json.dumps({"protocol": PROTOCOL, "attempt": 0, "timeout_ms": int(timeout * 1000)}).encode()
        write_atomic(self.path("start_flag"), spec)
        # This side's own bound, a little later than the sidecar's: normally
        # the sidecar reports `timed_out`; the cancel_flag is the backstop.
        self.deadline = None if timeout is None else time.monotonic() + timeout + DEADLINE_SLACK

    def poll(self):
        """Step 6: the outcome, once done_flag exists (atomic: complete or absent)."""
        outcome = read_json(self.path("done_flag"), "outcome")
        if outcome is not None and outcome.get("task_id") != self.id:
            raise ProtocolError(f"{self.path('done_flag')}: names task {outcome.get('task_id')!r}, not {self.id}")
        return outcome

    def cancel(self):
        """Stops the logic (TERM, grace, KILL); a `cancelled` outcome follows."""
        if self.cancelled_at is None:
            self.cancelled_at = time.monotonic()
            write_atomic(self.path("cancel_flag"))

    def collect(self, verify):
        """Steps 7-8: judge the outcome, then read exactly the files its
        manifest lists, without following links, checking size and checksum."""
        o = self.outcome
        if o["status"] != "succeeded":
            why = describe(self.id, o)
            if self.cancelled_at is not None:
                why = f"{why}\n(cancelled by this executor: the task passed its deadline)"
            raise TaskFailed(why)
        got = {}
        for entry in o.get("outputs", []):
            parts = checked_relative(entry["path"])
            want = entry["bytes"]
            try:
                fd = open_beneath(self.volume, ["tasks", self.id, "output", *parts])
            except OSError as e:
                raise ProtocolError(f"task {self.id}: output {entry['path']}: {e.strerror}") from e
            with os.fdopen(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                    raise ProtocolError(f"task {self.id}: output {entry['path']} is not a plain file")
                data = f.read(want)
                extra = f.read(1)
            if len(data) != want or extra:
                raise ProtocolError(
                    f"task {self.id}: output {entry['path']} is not the {want} bytes the manifest lists"
                )
            if verify == "checksum" and xxh3.checksum(data) != entry["checksum"]:
                raise ProtocolError(
                    f"task {self.id}: output {entry['path']}: checksum {xxh3.checksum(data)} "
                    f"does not match the manifest's {entry['checksum']}"
                )
            got[entry["path"]] = data
        if "part.csv" not in got:
            raise TaskFailed(f"task {self.id} succeeded but wrote no output/part.csv (listed: {sorted(got)})")
        return got["part.csv"]

    def close(self):
        """Step 9: outputs collected (or given up): the sidecar removes the directory."""
        try:
            write_atomic(self.path("close_flag"))
        except FileNotFoundError:
            pass  # already gone


def describe(task_id, o):
    """An outcome as one error message, the way a user reads it."""
    parts = [f"task {task_id} {o.get('status')}"]
    if o.get("exit_code") is not None:
        parts.append(f"exit code {o['exit_code']}")
    if o.get("signal") is not None:
        parts.append(f"signal {o['signal']}")
    if o.get("reason"):
        parts.append(o["reason"])
    text = ", ".join(parts)
    tail = (o.get("stderr_tail") or "").strip()
    return f"{text}\nstderr tail:\n{tail}" if tail else text


# ---------------------------------------------------------------------------
# The job.


def split_csv(path, n):
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    if not lines:
        raise SystemExit(f"executor: {path} is empty (a CSV needs its header)")
    header, rows = lines[0], lines[1:]
    size = -(-len(rows) // n) if rows else 0
    return [header + b"".join(rows[i * size : (i + 1) * size]) for i in range(n)]


def run(args):
    volume = os.path.abspath(args.volume)
    ready = wait_ready(volume, args.ready_timeout)
    heartbeat = Heartbeat(os.path.join(volume, "sidecar", "heartbeat"), args.stale_after)
    lease = None if args.no_lease else Lease(volume)
    if lease:
        lease.start()
    parts = split_csv(args.input, args.tasks)
    nonce = secrets.token_hex(4)
    waiting = collections.deque(Task(volume, i, nonce, data) for i, data in enumerate(parts))
    in_flight = args.in_flight or 2 * int(ready["parallelism"])
    running, outputs, closed = [], {}, []
    started = time.monotonic()
    try:
        while waiting or running:
            while waiting and len(running) < in_flight:
                t = waiting.popleft()
                t.stage()
                t.start(args.timeout)
                running.append(t)
            for t in list(running):
                t.outcome = t.poll()
                if t.outcome is not None:
                    running.remove(t)
                    closed.append(t)
                    try:
                        outputs[t.index] = t.collect(args.verify)
                    finally:
                        t.close()
                    o = t.outcome
                    print(f"executor: {t.id} {o['status']} in {o['duration_ms']} ms, "
                          f"{len(outputs[t.index])} bytes", file=sys.stderr)
                elif t.deadline is not None and time.monotonic() > t.deadline:
                    if t.cancelled_at is None:
                        t.cancel()
                    elif time.monotonic() - t.cancelled_at > args.grace:
                        raise TaskFailed(f"task {t.id} passed its {args.timeout}s deadline and "
                                         f"recorded no outcome {args.grace}s after its cancel_flag")
            heartbeat.check()
            time.sleep(POLL)
    except BaseException:
        # Whatever went wrong, stop and close what is still in flight:
        # a live sidecar stops the logic and removes the directories.
        for t in running:
            for step in (t.cancel, t.close):
                try:
                    step()
                except OSError:
                    pass
        closed.extend(running)
        raise
    finally:
        if lease:
            lease.stopped.set()
        wait_gone(closed, args.stale_after)
        if args.shutdown:
            write_atomic(os.path.join(volume, "close_flag"))
    # Each output has its own header line (the logic's, which may add
    # columns): keep the first task's, drop the others'.
    with open(args.output, "wb") as out:
        for i in range(len(parts)):
            head, _, body = outputs[i].partition(b"\n")
            out.write(head + b"\n" + body if i == 0 else body)
    wall = time.monotonic() - started
    print(json.dumps({"tasks": len(parts), "output": args.output, "wall_ms": round(wall * 1000)}))


def wait_gone(tasks, limit):
    """Step 10: closed task directories disappear (the sidecar removes them)."""
    deadline = time.monotonic() + limit
    left = [t for t in tasks if os.path.lexists(t.dir)]
    while left and time.monotonic() < deadline:
        time.sleep(POLL)
        left = [t for t in left if os.path.lexists(t.dir)]
    for t in left:
        print(f"executor: {t.dir} is still there {limit:.0f}s after its close_flag", file=sys.stderr)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--volume", required=True, help="the directory a `sidecar-entrypoint --mode serve` serves")
    p.add_argument("--input", required=True, help="a CSV file with a header line")
    p.add_argument("--output", required=True, help="where the tasks' CSV outputs go, in order, one header")
    p.add_argument("--tasks", type=int, default=4, help="parts the input is split into, one task each")
    p.add_argument("--in-flight", type=int, default=0, help="tasks staged at once (default: 2 x the sidecar's parallelism)")
    p.add_argument("--timeout", type=float, default=None, help="per-task deadline, seconds (sent to the sidecar as timeout_ms)")
    p.add_argument("--grace", type=float, default=15.0, help="seconds a cancelled task has to record its outcome")
    p.add_argument("--stale-after", type=float, default=5.0, help="seconds of an unchanged heartbeat that mean the sidecar is gone")
    p.add_argument("--ready-timeout", type=float, default=30.0, help="seconds to wait for sidecar/ready")
    p.add_argument("--verify", choices=("checksum", "size"), default="checksum",
                   help="check each output's xxh3-64 checksum (pure Python, ~2 MB/s) or only its size")
    p.add_argument("--no-lease", action="store_true", help="do not refresh executor/lease")
    p.add_argument("--shutdown", action="store_true", help="write the root close_flag at the end: the sidecar drains and exits")
    args = p.parse_args(argv)
    if args.tasks < 1 or args.in_flight < 0:
        p.error("--tasks must be at least 1 and --in-flight at least 0")
    try:
        run(args)
    except (TaskFailed, ProtocolError) as e:
        print(f"executor: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
