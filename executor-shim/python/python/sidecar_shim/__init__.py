"""Run each partition of a PySpark DataFrame through a sidecar container.

``sidecar_shim`` turns the sidecar runtime into a function for PySpark's
``DataFrame.mapInArrow``::

    import sidecar_shim

    enrich = sidecar_shim.map_in_arrow(
        command=["sh", "-c", 'awk -F, -v OFS=, "{print \\$0, NR}" "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'],
        input_format="csv",
    )
    out = df.mapInArrow(enrich, "id long, value double, n long")

Three ways to reach a sidecar (exactly one of ``command``/``image``/``volume``):

``command=[...]`` (process provider)
    The shim starts ``sidecar-entrypoint --mode serve -- COMMAND...`` as a
    local process: no container, the default for development and for
    tools installed on the executors.
``image="name:tag"`` (docker provider)
    The shim runs the image with the volume bind-mounted, locked down
    (numeric user, read-only root, no network, no capabilities).
    ``command=`` then overrides the command run inside the image.
``volume="/opt/sidecar/shared-volumes/shared"`` (attach provider)
    A sidecar already serves that volume, e.g. the container the pod
    template puts beside each Kubernetes executor.

Theory of operation
-------------------
The function returned by :func:`map_in_arrow` is pickled to the executors.
In a Python worker, its first call finds (or starts) the *one* sidecar of
that executor: the process and docker providers use a per-executor volume
``<root>/<executor key>-<config hash>`` and the Rust side's lock file
``<volume>/executor/sidecar.lock`` makes exactly one worker start the
sidecar while the others attach to it. The executor key is the process id
and start time of the executor JVM (the nearest ``java`` ancestor of the
Python worker: the PySpark daemon's parent, or the worker's own parent when
the daemon is off), so all Python workers of one executor share a sidecar
and two executors, or two applications, never do. Each live handle
refreshes the executor lease; the sidecar is started with
``--exit-on-orphan``, so when the application ends and its Python workers
are gone the lease goes stale and the sidecar exits within
``lease_timeout``.

Each partition is one task whose id carries the Spark partition, attempt,
stage and task attempt id, so a retry never reads another attempt's files.
Batches cross between Python and Rust through the Arrow C data interface
(no copies); the GIL is released while Rust waits.

An empty partition yields no rows and runs no task (its schema is unknown).
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import pyarrow as pa

from ._native import Sidecar, SidecarError, TaskRun, reclaim_volume, task_id
from ._native import __version__ as _native_version

__all__ = [
    "FORMATS",
    "SidecarError",
    "SidecarFunction",
    "executor_key",
    "find_entrypoint",
    "map_in_arrow",
    "shutdown_all",
    "task_id",
]

__version__ = _native_version

#: The data formats a task's input and output can take.
FORMATS = ("arrow", "arrows", "parquet", "csv", "jsonl")

_ENTRYPOINT_NAME = "sidecar-entrypoint"


def find_entrypoint(explicit: Optional[str] = None) -> str:
    """Locates the ``sidecar-entrypoint`` binary for the process provider.

    In order: ``explicit``, ``$SIDECAR_ENTRYPOINT``, the copy bundled in
    this package (``sidecar_shim/bin/``), then ``PATH``. Raises
    :class:`SidecarError` naming every place looked at.
    """
    looked: List[str] = []
    candidates: List[str] = []
    if explicit:
        candidates.append(os.fspath(explicit))
    else:
        env = os.environ.get("SIDECAR_ENTRYPOINT")
        if env:
            candidates.append(env)
        candidates.append(os.path.join(os.path.dirname(__file__), "bin", _ENTRYPOINT_NAME))
    for c in candidates:
        looked.append(c)
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
        if explicit or c == os.environ.get("SIDECAR_ENTRYPOINT"):
            raise SidecarError(
                f"sidecar-entrypoint not found or not executable at {c!r} "
                f"({'entrypoint=' if explicit else '$SIDECAR_ENTRYPOINT'}); "
                "build it with `cargo build -p sidecar-entrypoint --release`"
            )
    on_path = shutil.which(_ENTRYPOINT_NAME)
    if on_path:
        return on_path
    looked.append("$PATH")
    raise SidecarError(
        "sidecar-entrypoint not found (looked at: "
        + ", ".join(looked)
        + "); pass entrypoint=, set $SIDECAR_ENTRYPOINT, or put it on PATH"
    )


# --------------------------------------------------------------------------
# The executor key: what all Python workers of one executor share.


def _proc_stat(pid: int) -> Optional[tuple]:
    """(comm, ppid, starttime) of a process, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    # comm is in parentheses and may itself contain spaces and parentheses.
    lpar, rpar = data.find("("), data.rfind(")")
    if lpar < 0 or rpar < 0:
        return None
    comm = data[lpar + 1 : rpar]
    rest = data[rpar + 2 :].split()
    try:
        return comm, int(rest[1]), int(rest[19])
    except (IndexError, ValueError):
        return None


_KEY: Optional[tuple] = None  # (pid, key): recomputed in a forked child


def executor_key() -> str:
    """A name shared by every Python worker of one Spark executor.

    The executor JVM is the nearest ``java`` ancestor of the worker (the
    PySpark daemon forks workers and is itself a child of the executor JVM;
    with ``spark.python.use.daemon=false`` the JVM starts workers directly).
    Its pid plus its start time (clock ticks since boot) cannot be reused by
    another process, so a dead executor's volume is never mistaken for a
    live one's. Outside Spark (no java ancestor) this process itself is the
    "executor".
    """
    global _KEY
    if _KEY is not None and _KEY[0] == os.getpid():
        return _KEY[1]
    _KEY = (os.getpid(), _compute_executor_key())
    return _KEY[1]


def _compute_executor_key() -> str:
    pid = os.getppid()
    for _ in range(16):
        if pid <= 1:
            break
        st = _proc_stat(pid)
        if st is None:
            break
        comm, ppid, start = st
        if comm == "java":
            return f"jvm{pid}-{start}"
        pid = ppid
    me = _proc_stat(os.getpid())
    start = me[2] if me else 0
    return f"py{os.getpid()}-{start}"


def _pid_is(pid: int, start: int) -> bool:
    """Whether process `pid` runs and started at `start` (not a reused pid)."""
    st = _proc_stat(pid)
    return st is not None and st[2] == start


_VOLUME_NAME = re.compile(r"^(?:jvm|py)(\d+)-(\d+)-[0-9a-f]{12}$")
# How often one process looks for dead executors' volumes, at most.
_GC_EVERY_S = 2.0
_GC_LAST: Dict[str, float] = {}


def _collect_garbage(root: str, keep: str) -> None:
    """Removes the volumes of executors that are gone.

    A volume is named after its executor's process (``jvm<pid>-<start>-`` or
    ``py<pid>-<start>-``); once that process is gone no task can use it, and
    its sidecar exits as soon as its last user is gone. The volume is
    removed once nobody holds its sidecar and the sidecar no longer runs
    (``reclaim_volume``). Best effort, at most every ``_GC_EVERY_S`` per
    process: a volume that cannot be removed yet is looked at again later.
    """
    now = time.monotonic()
    if now - _GC_LAST.get(root, -_GC_EVERY_S) < _GC_EVERY_S:
        return
    _GC_LAST[root] = now
    try:
        names = os.listdir(root)
    except OSError:
        return
    for name in names:
        m = _VOLUME_NAME.match(name)
        if not m or name == keep or _pid_is(int(m.group(1)), int(m.group(2))):
            continue
        try:
            reclaim_volume(os.path.join(root, name))
        except SidecarError:
            pass  # files of a container user, say: left for a later look


def _default_root() -> str:
    return os.path.join(tempfile.gettempdir(), f"sidecar-shim-{os.getuid()}")


def _ensure_private_dir(path: str) -> None:
    """Creates ``path`` (0700) or checks that an existing one is ours and private.

    The root lives in a world-writable temp dir: another user must not be
    able to pre-create it, or a symlink in its place, to redirect our
    volumes.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise SidecarError(f"cannot create the sidecar volume root {path!r}: {e}") from e
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise SidecarError(f"sidecar volume root {path!r} is not a directory")
    if st.st_uid != os.getuid():
        raise SidecarError(
            f"sidecar volume root {path!r} belongs to uid {st.st_uid}, not to us "
            f"(uid {os.getuid()}); pass volume_root= or set $SIDECAR_SHIM_ROOT"
        )


# --------------------------------------------------------------------------
# One sidecar handle per (process, config).

_LOCK = threading.Lock()
_SIDECARS: Dict[str, Sidecar] = {}
# Handles inherited through fork(): never used and never dropped in the
# child (dropping one could stop the parent's sidecar).
_INHERITED: List[Sidecar] = []


def _forget_after_fork() -> None:
    global _LOCK
    _LOCK = threading.Lock()
    _INHERITED.extend(_SIDECARS.values())
    _SIDECARS.clear()
    _GC_LAST.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _sidecar_for(cfg: Dict[str, Any]) -> Sidecar:
    """The cached handle for ``cfg`` in this process, starting or attaching on first use."""
    provider = cfg["provider"]
    if provider == "attach":
        volume = cfg["volume"]
    else:
        root = cfg["volume_root"] or os.environ.get("SIDECAR_SHIM_ROOT") or _default_root()
        _ensure_private_dir(root)
        name = f"{executor_key()}-{cfg['hash']}"
        volume = os.path.join(root, name)
        _collect_garbage(root, keep=name)
    with _LOCK:
        handle = _SIDECARS.get(volume)
        if handle is not None:
            if handle.alive():
                return handle
            # A task found this sidecar gone or hung: start afresh rather
            # than fail every later task (and Spark's retries) on it.
            del _SIDECARS[volume]
            try:
                handle.close()
            except SidecarError:
                pass
        entrypoint = find_entrypoint(cfg["entrypoint"]) if provider == "process" else None
        handle = Sidecar(
            volume,
            provider,
            command=cfg["command"],
            image=cfg["image"],
            entrypoint=entrypoint,
            parallel=cfg["parallel"],
            lease_timeout=cfg["lease_timeout"],
            ready_timeout=cfg["ready_timeout"],
            docker=cfg["docker"],
            user=cfg["user"],
        )
        if provider != "attach":
            _anchor(volume)
        _SIDECARS[volume] = handle
        return handle


_ANCHOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_anchor.py")


def _anchor(volume: str) -> None:
    """Ties the sidecar of ``volume`` to this worker's executor (see
    ``_anchor.py``): it then outlives the workers Spark kills to stop tasks,
    and goes the moment the executor's Python side does. The process
    watched is the worker's parent: the PySpark daemon, which lives as long
    as the executor's Python workers do and is stopped by ``spark.stop()``
    even in local mode, where the JVM lives on (or the JVM itself, without
    a daemon). Outside Spark the handles alone hold the sidecar."""
    if not executor_key().startswith("jvm"):
        return
    parent = os.getppid()
    st = _proc_stat(parent)
    if parent <= 1 or st is None:
        return
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", _ANCHOR, volume, str(parent), str(st[2])],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as e:
        raise SidecarError(f"cannot start the executor anchor of {volume!r}: {e}") from e
    with proc.stdout:
        ready = proc.stdout.readline()
    proc.wait()
    if not ready.startswith(b"ready"):
        raise SidecarError(f"the executor anchor of {volume!r} failed (exit status {proc.returncode})")


def shutdown_all() -> None:
    """Releases every sidecar handle of this process.

    A sidecar is stopped (root close flag, then signals) when this was its
    last handle on the executor, whichever worker started it; otherwise the
    handle is dropped and the sidecar lives on for the other workers (the
    lease they renew bounds its life). Runs at
    interpreter exit; PySpark workers leave with ``os._exit``, which is why
    the lease, not this, is what guarantees that no sidecar outlives its
    executor.
    """
    with _LOCK:
        handles = list(_SIDECARS.values())
        _SIDECARS.clear()
    for h in handles:
        try:
            h.close()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


atexit.register(shutdown_all)


# --------------------------------------------------------------------------
# The mapInArrow function.


def _to_arrow_schema(schema: Any) -> Optional[pa.Schema]:
    """A pyarrow schema from a pyarrow schema, a Spark StructType or a DDL string.

    Spark timestamps (``timestamp``) become ``timestamp[us, tz=<zone>]`` in
    the active session's ``spark.sql.session.timeZone`` (UTC without a
    session), as Spark hands them to ``mapInArrow``; the zone only labels
    the instants, which are read back exactly whatever it is.
    """
    if schema is None or isinstance(schema, pa.Schema):
        return schema
    from pyspark.sql.types import StructType, _parse_datatype_string

    if isinstance(schema, str):
        try:
            parsed = _parse_datatype_string(schema)
        except Exception as e:  # no active SparkContext, or a parse error
            raise ValueError(
                f"cannot parse schema {schema!r} as a Spark DDL string (this needs an "
                f"active SparkSession; pass a pyarrow.Schema otherwise): {e}"
            ) from e
        if not isinstance(parsed, StructType):
            raise ValueError(f"schema {schema!r} is a {parsed.simpleString()}, not a list of columns")
        schema = parsed
    if not isinstance(schema, StructType):
        raise TypeError(
            f"schema must be a pyarrow.Schema, a pyspark StructType or a DDL string, not {type(schema).__name__}"
        )
    return _struct_to_arrow(schema)


def _session_time_zone() -> str:
    try:
        from pyspark.sql import SparkSession

        session = SparkSession.getActiveSession()
        if session is not None:
            return session.conf.get("spark.sql.session.timeZone") or "UTC"
    except Exception:  # noqa: BLE001 - no JVM, or a Connect session without conf
        pass
    return "UTC"


def _struct_to_arrow(schema: Any) -> pa.Schema:
    """``to_arrow_schema`` of the installed PySpark, naming the column it cannot convert.

    PySpark 4 asserts that a time zone is given when there is a timestamp
    (a bare ``AssertionError`` otherwise); PySpark 3 has no such argument
    and always uses UTC.
    """
    import inspect

    from pyspark.sql.pandas.types import to_arrow_schema, to_arrow_type

    kwargs = {}
    if "timezone" in inspect.signature(to_arrow_schema).parameters:
        kwargs["timezone"] = _session_time_zone()
    for field in schema.fields:
        try:
            to_arrow_type(field.dataType, **kwargs)
        except Exception as e:  # PySparkTypeError, TypeError, AssertionError
            raise TypeError(
                f"schema column {field.name!r} ({field.dataType.simpleString()}) has no Arrow type: {e}"
            ) from e
    return to_arrow_schema(schema, **kwargs)


def _task_identity() -> tuple:
    """(partition, attempt, nonce) of the running Spark task."""
    try:
        from pyspark import TaskContext

        ctx = TaskContext.get()
    except Exception:  # noqa: BLE001 - pyspark absent or not in a task
        ctx = None
    rand = secrets.token_hex(3)
    if ctx is None:
        return 0, 0, rand
    # The partition and attempt repeat across stages and jobs of one
    # application; the stage and the task attempt id (unique per
    # application) keep two tasks of one executor apart.
    nonce = f"s{ctx.stageId()}t{ctx.taskAttemptId()}r{rand}"
    return ctx.partitionId(), ctx.attemptNumber(), nonce


class SidecarFunction:
    """``Iterator[pyarrow.RecordBatch] -> Iterator[pyarrow.RecordBatch]`` through a sidecar.

    Made by :func:`map_in_arrow`; picklable (it carries only its
    configuration), so PySpark ships it to the executors.
    """

    def __init__(self, cfg: Dict[str, Any]):
        self._cfg = cfg

    def __repr__(self) -> str:
        c = self._cfg
        what = {"process": c["command"], "docker": c["image"], "attach": c["volume"]}[c["provider"]]
        return (
            f"SidecarFunction(provider={c['provider']}, {what!r}, "
            f"{c['input_format']}->{c['output_format'] or c['input_format']}, stream={c['stream']})"
        )

    @property
    def config(self) -> Dict[str, Any]:
        """The configuration, as plain data."""
        return dict(self._cfg)

    def __call__(self, batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        it = iter(batches)
        first = next(it, None)
        if first is None:
            return
        cfg = self._cfg
        sidecar = _sidecar_for(cfg)
        partition, attempt, nonce = _task_identity()
        reader = pa.RecordBatchReader.from_batches(first.schema, itertools.chain((first,), it))
        del first
        run = sidecar.run(
            partition,
            attempt,
            nonce,
            reader,
            input_format=cfg["input_format"],
            output_format=cfg["output_format"],
            stream=cfg["stream"],
            timeout=cfg["timeout"],
            schema=cfg["schema"],
        )
        yield from run


def map_in_arrow(
    *,
    command: Optional[Sequence[str]] = None,
    image: Optional[str] = None,
    volume: Optional[str] = None,
    input_format: str = "arrows",
    output_format: Optional[str] = None,
    stream: bool = False,
    timeout: Optional[float] = None,
    parallel: Optional[int] = None,
    entrypoint: Optional[str] = None,
    schema: Union[None, str, pa.Schema, Any] = None,
    lease_timeout: Optional[float] = None,
    ready_timeout: Optional[float] = None,
    volume_root: Optional[str] = None,
    docker: Optional[str] = None,
    user: Optional[str] = None,
) -> SidecarFunction:
    """A function for ``DataFrame.mapInArrow`` that runs each partition through a sidecar.

    Exactly one of ``command`` (process provider), ``image`` (docker
    provider; ``command`` then overrides the image's command) or ``volume``
    (attach to a sidecar already serving that directory).

    - ``input_format`` / ``output_format``: one of :data:`FORMATS`; the
      output defaults to the input's format.
    - ``stream``: stage input and output as FIFOs, so the logic reads while
      Spark still sends and Spark receives while the logic still writes.
    - ``timeout``: per-task limit in seconds (the sidecar kills the logic and
      the task fails with ``timed_out``).
    - ``parallel``: tasks the sidecar runs at once (default: its CPUs).
    - ``entrypoint``: path of ``sidecar-entrypoint`` (process provider);
      default ``$SIDECAR_ENTRYPOINT``, the bundled copy, then ``PATH``.
    - ``schema``: the expected output schema (pyarrow schema, StructType or
      Spark DDL string, parsed here on the driver). The output is cast to it
      and a missing or unconvertible column is named in the error; without
      it the logic's output schema is returned as-is.
    - ``lease_timeout``: seconds after the last executor-side handle goes
      away before an orphaned sidecar exits (process/docker providers).
    - ``ready_timeout``: seconds to wait for the sidecar to become ready.
    - ``volume_root``: where per-executor volumes are made (default
      ``$SIDECAR_SHIM_ROOT``, else ``<tmp>/sidecar-shim-<uid>``).
    - ``docker`` / ``user``: the docker CLI and the numeric user the
      container runs as (docker provider).

    A failure of the logic raises :class:`SidecarError` with its task id,
    status, exit code and the tail of its stderr; Spark fails the job with
    that text.
    """
    chosen = [n for n, v in (("command", command), ("image", image), ("volume", volume)) if v is not None]
    if image is not None and volume is None:
        provider = "docker"
    elif command is not None and image is None and volume is None:
        provider = "process"
    elif volume is not None and command is None and image is None:
        provider = "attach"
    else:
        raise ValueError(
            "pass exactly one of command= (process), image= (docker, optionally with command=) "
            f"or volume= (attach); got {', '.join(chosen) or 'none'}"
        )
    if isinstance(command, str):
        raise TypeError('command= is a list of arguments, e.g. ["sh", "-c", "..."], not a string')
    for name, fmt in (("input_format", input_format), ("output_format", output_format)):
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"{name}={fmt!r} is not one of {', '.join(FORMATS)}")
    for name, v in (("timeout", timeout), ("lease_timeout", lease_timeout), ("ready_timeout", ready_timeout)):
        if v is not None and not v > 0:
            raise ValueError(f"{name}= must be a positive number of seconds, not {v!r}")
    if parallel is not None and (not isinstance(parallel, int) or parallel < 1):
        raise ValueError(f"parallel= must be a positive integer, not {parallel!r}")
    if volume is not None and (parallel is not None or entrypoint is not None or lease_timeout is not None):
        raise ValueError("parallel=, entrypoint= and lease_timeout= configure a sidecar the shim starts; "
                         "with volume= (attach) the sidecar is configured where it runs")

    cmd = [os.fspath(a) for a in command] if command is not None else None
    # What defines the sidecar process: two functions with the same values
    # share a sidecar on each executor; anything else gets its own.
    defining = {
        "provider": provider,
        "command": cmd,
        "image": image,
        "entrypoint": os.fspath(entrypoint) if entrypoint else None,
        "parallel": parallel,
        "lease_timeout": lease_timeout,
        "docker": docker,
        "user": user,
    }
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True).encode()).hexdigest()[:12]
    cfg = dict(
        defining,
        hash=digest,
        volume=os.fspath(volume) if volume is not None else None,
        volume_root=os.fspath(volume_root) if volume_root is not None else None,
        ready_timeout=ready_timeout,
        input_format=input_format,
        output_format=output_format,
        stream=bool(stream),
        timeout=timeout,
        schema=_to_arrow_schema(schema),
    )
    return SidecarFunction(cfg)
