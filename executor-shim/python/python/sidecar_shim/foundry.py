"""Foundry's executor helpers, done right.

Palantir Foundry's Spark sidecar documentation has its users copy a
``utils.py`` into their transforms repository. This module offers the same
names with the same call shapes, so a transform switches with one import::

    from myproject.datasets.utils import (             # before
    from sidecar_shim.foundry import (                 # after
        copy_files_to_shared_directory, copy_start_flag, wait_for_done_flag,
        copy_output_files_with_prefix, copy_close_flag, launch_udf_once,
    )

What changes is what the documented helpers got wrong:

- **No fixed sleeps.** The documented ``copy_start_flag`` sleeps 1 s and
  ``copy_close_flag`` 5 s on every run; these sleep never.
- **Event-driven waits.** ``wait_for_done_flag`` wakes on an inotify event
  in the volume (pure Python, through ctypes; a 20 ms poll where inotify is
  unavailable), not on a once-a-second poll.
- **Atomic flags and files.** Every flag and staged file is written to a
  dot-prefixed temporary in the volume and renamed into place: the
  entrypoint never sees half an input.
- **Errors, not silence.** ``wait_for_done_flag`` raises
  :class:`SidecarRunError` carrying the outcome (status, exit code, reason,
  the stderr tail or else the logfile's tail) when the run failed, when the
  sidecar died without a ``done_flag``, and when ``MAX_RUN_MINUTES`` pass
  (the documented version returns silently after ten minutes, as if the run
  had succeeded). With the original Foundry entrypoint, whose ``done_flag``
  is empty, it returns and says the status is unknown.

``VOLUME_PATH`` and ``MAX_RUN_MINUTES`` are module attributes as in the
documented ``utils.py``. ``VOLUME_PATH`` is computed when read (PEP 562), so
read it as ``foundry.VOLUME_PATH`` (or call :func:`volume_path`) inside the
udf: a name imported on the driver holds the driver's value. In Foundry it
is ``/opt/palantir/sidecars/shared-volumes/shared`` (``$SHARED_DIR`` wins
when set); outside Foundry it is this executor's volume (below).
``MAX_RUN_MINUTES`` may be reassigned (``foundry.MAX_RUN_MINUTES = 30``).

Outside Foundry: a sidecar beside each executor
-----------------------------------------------
In Foundry the platform starts the container beside each executor. Outside
it nobody does, so :func:`sidecar` does, as Foundry's decorator of the same
name would have you expect::

    from sidecar_shim.foundry import sidecar, Volume

    @sidecar(image="sidecar-foundry-dd:latest", volumes=[Volume("shared")])  # docker
    @sidecar(command='dd if="$SHARED_DIR/infile.csv" of="$SHARED_DIR/outfile.csv"')  # local process

``image=`` runs the image as a oneshot container, locked down (numeric user
5001, read-only root, no network, no capabilities, no new privileges) with
each volume bind-mounted at Foundry's path
``/opt/palantir/sidecars/shared-volumes/<name>``; the image's own
ENTRYPOINT runs, exactly as Foundry runs it. ``command=`` runs a local
``sidecar-entrypoint`` (``$SIDECAR_ENTRYPOINT``, the copy bundled in this
package, or ``PATH``) in oneshot mode: a string is its ``-c`` line, a list
its argv; ``$SHARED_DIR`` is the volume.

Where the decorator goes:

- **On the udf** (the function Spark runs per row): each call runs with its
  own sidecar, started before the body and gone (exited, or killed, and
  its container removed) when the body returns or raises.
- **On the transform** (where Foundry's decorator goes), when it runs on the
  driver: the configuration travels to the tasks as a Spark local property.
  :func:`launch_udf_once` and :func:`launch_udf` then wrap the udf as above;
  for a job written by hand (``df.repartition(n).rdd.map(udf)``) the helpers
  start the sidecar at ``copy_start_flag`` and stop it at
  ``copy_close_flag``, or when ``wait_for_done_flag`` raises; a sidecar left
  by a udf that raised elsewhere is stopped when the next task of that
  Python worker starts, or with the worker (a local process gets SIGTERM
  when the worker dies; an orphaned container is removed by the next
  sidecar this host starts).

Each sidecar gets a volume of its executor: ``<root>/<executor
key>-foundry<slot>/<volume name>``, where the root is ``$SIDECAR_SHIM_ROOT``
or ``<tmp>/sidecar-shim-<uid>`` and the executor key is
:func:`sidecar_shim.executor_key` (the executor JVM's pid and start time,
shared by its Python workers). Slot 0 is the executor's volume; a task that
runs while another of the same executor holds it (an executor with several
cores, which Foundry's one-task-per-executor configuration rules out) takes
the next slot, with its own sidecar. A volume is emptied when a task takes
it, so a task never sees the flags or files of the one before; volumes of
executors that are gone are removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from . import (
    SidecarError,
    _default_root,
    _ensure_private_dir,
    _pid_is,
    _proc_stat,
    executor_key,
    find_entrypoint,
)
from ._watch import wait_until

__all__ = [
    "MAX_RUN_MINUTES",
    "VOLUME_PATH",
    "FOUNDRY_VOLUMES",
    "SidecarRunError",
    "Volume",
    "copy_close_flag",
    "copy_files_to_shared_directory",
    "copy_output_files",
    "copy_output_files_with_prefix",
    "copy_start_flag",
    "launch_udf",
    "launch_udf_once",
    "sidecar",
    "volume_path",
    "wait_for_done_flag",
]

#: Where Foundry mounts the sidecar volumes, in the executor and in the container.
FOUNDRY_VOLUMES = "/opt/palantir/sidecars/shared-volumes"

#: How long :func:`wait_for_done_flag` waits before it raises (read at call time).
MAX_RUN_MINUTES = 10

START_FLAG = "start_flag"
DONE_FLAG = "done_flag"
CLOSE_FLAG = "close_flag"
LOGFILE = "logfile"

# The local property that carries a transform-level @sidecar to its tasks.
_PROPERTY = "sidecar_shim.foundry.sidecar"
# How long a closed sidecar gets to exit before it is stopped, and then
# between TERM and KILL (the entrypoint's own default grace is 10 s).
_EXIT_WAIT = 10.0
_KILL_GRACE = 12.0
# Liveness of a container is asked of docker no more often than this.
_DOCKER_CHECK = 2.0
_TAIL_BYTES = 4096
_MAX_FLAG_BYTES = 1 << 20
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")
_EXEC_DIR = re.compile(r"^(?:jvm|py)(\d+)-(\d+)-foundry\d+$")
_CONTAINER_LABEL = "sidecar-shim.foundry.owner"
_MAX_SLOTS = 64


def _warn(message: str) -> None:
    # Spark shows a task's stderr in the executor's log.
    print(f"sidecar_shim.foundry: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Errors.


class SidecarRunError(SidecarError):
    """The sidecar's run did not succeed; the message says how it ended.

    Attributes: ``status`` (``failed``, ``timed_out``, ``cancelled``,
    ``lost``...), ``exit_code``, ``signal``, ``reason``, ``stderr_tail``,
    ``logfile_tail`` and ``outcome`` (the done_flag's JSON, or None).
    """

    def __init__(
        self,
        summary: str,
        *,
        status: str,
        outcome: Optional[Dict[str, Any]] = None,
        logfile_tail: str = "",
        volume: Optional[str] = None,
    ):
        outcome = outcome or {}
        self.status = status
        self.outcome = outcome or None
        self.exit_code = outcome.get("exit_code")
        self.signal = outcome.get("signal")
        self.reason = outcome.get("reason")
        self.stderr_tail = (outcome.get("stderr_tail") or "").rstrip()
        self.logfile_tail = logfile_tail.rstrip()
        self.volume = volume
        text = summary
        if self.stderr_tail:
            text += "\nstderr tail:\n" + self.stderr_tail
        elif self.logfile_tail:
            text += f"\nlogfile tail ({os.path.join(volume or '', LOGFILE)}):\n" + self.logfile_tail
        super().__init__(text)

    def __reduce__(self):
        # The keyword-only constructor cannot take back its args: rebuild
        # from the message and the attributes (pickle, copy).
        return (_restore_error, (type(self), self.args, dict(self.__dict__)))


def _restore_error(cls, args, state):
    e = cls.__new__(cls)
    BaseException.__init__(e, *args)
    e.__dict__.update(state)
    return e


def _describe(outcome: Dict[str, Any]) -> str:
    parts = [f"status {outcome.get('status')}"]
    if outcome.get("exit_code") is not None:
        parts.append(f"exit code {outcome['exit_code']}")
    if outcome.get("signal") is not None:
        parts.append(f"signal {outcome['signal']}")
    if outcome.get("reason"):
        parts.append(str(outcome["reason"]))
    return ", ".join(parts)


# --------------------------------------------------------------------------
# Files in the volume: atomic writes, reads that follow no links.


def _write_atomic(path: str, data: bytes = b"", mode: int = 0o644) -> None:
    """``path`` appears whole or not at all: a dot-temporary, renamed."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _copy_atomic(src, path: str) -> int:
    """Copies the binary file object ``src`` to ``path`` atomically; bytes copied."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        with os.fdopen(fd, "wb") as dst:
            os.fchmod(dst.fileno(), 0o644)  # the sidecar may be another user
            shutil.copyfileobj(src, dst, 1 << 20)
            n = dst.tell()
        os.rename(tmp, path)
        return n
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _relative_parts(name: str) -> List[str]:
    parts = str(name).replace(os.sep, "/").split("/")
    if not name or str(name).startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in str(name):
        raise ValueError(f"{name!r} is not a relative path inside the volume")
    return parts


def _open_in_volume(volume: str, name: str) -> Optional[int]:
    """A read-only descriptor of ``volume/name``, opened one component at a
    time without following links (a link planted by the sidecar is an
    error, never followed); None if it does not exist."""
    parts = _relative_parts(name)
    fd = os.open(volume, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for p in parts[:-1]:
            nxt = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        out = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SidecarError(f"{os.path.join(volume, name)} is a symbolic link: refused") from e
        raise
    finally:
        os.close(fd)
    st = os.fstat(out)
    if not stat.S_ISREG(st.st_mode):
        os.close(out)
        raise SidecarError(f"{os.path.join(volume, name)} is not a regular file")
    return out


def _read_small(volume: str, name: str, limit: int = _MAX_FLAG_BYTES) -> Optional[bytes]:
    fd = _open_in_volume(volume, name)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise SidecarError(f"{os.path.join(volume, name)} is over {limit} bytes: refused")
    return data


def _tail(volume: str, name: str, limit: int = _TAIL_BYTES) -> str:
    try:
        fd = _open_in_volume(volume, name)
    except (OSError, SidecarError):
        return ""
    if fd is None:
        return ""
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        f.seek(max(0, size - limit))
        data = f.read(limit)
    text = data.decode("utf-8", "replace")
    if size > limit and "\n" in text:
        text = text.split("\n", 1)[1]  # start on a whole line
    return text


def _exists(path: str) -> bool:
    return os.path.lexists(path)


# --------------------------------------------------------------------------
# Configuration: @sidecar(...).


class Volume:
    """A shared volume, by name, as in Foundry's ``Volume("shared")``.

    Mounted in the container at ``/opt/palantir/sidecars/shared-volumes/<name>``.
    """

    def __init__(self, name: str):
        if not isinstance(name, str) or not _VOLUME_NAME.match(name):
            raise ValueError(f"volume name {name!r}: use letters, digits, '.', '_' or '-' (not starting with '.')")
        self.name = name

    def __repr__(self) -> str:
        return f"Volume({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Volume) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


def _config(
    image: Optional[str],
    tag: Optional[str],
    volumes: Optional[Sequence[Union[Volume, str]]],
    command: Union[None, str, Sequence[str]],
    entrypoint: Optional[str],
    user: str,
    docker: str,
    volume_root: Optional[str],
) -> Dict[str, Any]:
    if (image is None) == (command is None):
        raise ValueError(
            "pass exactly one of image= (a oneshot container, the image's own ENTRYPOINT) "
            "or command= (a local sidecar-entrypoint: a -c line, or a list of arguments)"
        )
    if tag is not None and image is None:
        raise ValueError("tag= goes with image=")
    names = [v.name if isinstance(v, Volume) else Volume(v).name for v in (volumes or [Volume("shared")])]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"volumes= must name at least one volume, each once: {names}")
    if image is not None and tag:
        image = f"{image}:{tag}"
    if command is not None and not isinstance(command, str):
        command = [os.fspath(a) for a in command]
        if not command:
            raise ValueError("command= is empty")
    if not str(user).isdigit():
        raise ValueError(f"user= must be a numeric uid (Foundry requires one), not {user!r}")
    return {
        "image": image,
        "command": command,
        "volumes": names,
        "entrypoint": os.fspath(entrypoint) if entrypoint else None,
        "user": str(user),
        "docker": docker,
        "volume_root": os.fspath(volume_root) if volume_root else None,
    }


class sidecar:  # noqa: N801 - named like Foundry's decorator
    """Starts a sidecar beside the executor for the decorated function.

    ``@sidecar(image=..., tag=None, volumes=[Volume("shared")])`` runs the
    image as a locked-down oneshot container (``user`` must be numeric;
    ``docker`` is the CLI); ``@sidecar(command=...)`` runs a local
    ``sidecar-entrypoint`` in oneshot mode (``entrypoint`` overrides where
    it is found). ``volume_root`` overrides where executor volumes are made.
    See the module documentation for where the decorator goes.
    """

    def __init__(
        self,
        image: Optional[str] = None,
        tag: Optional[str] = None,
        volumes: Optional[Sequence[Union[Volume, str]]] = None,
        *,
        command: Union[None, str, Sequence[str]] = None,
        entrypoint: Optional[str] = None,
        user: str = "5001",
        docker: str = "docker",
        volume_root: Optional[str] = None,
    ):
        self.config = _config(image, tag, volumes, command, entrypoint, user, docker, volume_root)

    def __repr__(self) -> str:
        c = self.config
        what = f"image={c['image']!r}" if c["image"] else f"command={c['command']!r}"
        return f"sidecar({what}, volumes={c['volumes']!r})"

    def __call__(self, fn: Callable) -> Callable:
        config = self.config

        @functools.wraps(fn)
        def with_sidecar(*args, **kwargs):
            if _task_context() is None and _spark_context() is not None:
                # The driver, running a transform: the tasks it launches
                # find the configuration in their local properties.
                with _ambient(config):
                    return fn(*args, **kwargs)
            with _session(config, started=True):
                return fn(*args, **kwargs)

        with_sidecar.sidecar = self  # type: ignore[attr-defined]
        return with_sidecar


def _task_context():
    try:
        from pyspark import TaskContext
    except ImportError:
        return None
    return TaskContext.get()


def _spark_context():
    try:
        from pyspark import SparkContext
    except ImportError:
        return None
    return SparkContext._active_spark_context


_AMBIENT = threading.local()


@contextlib.contextmanager
def _ambient(config: Dict[str, Any]):
    sc = _spark_context()
    previous = sc.getLocalProperty(_PROPERTY)
    before = getattr(_AMBIENT, "config", None)
    sc.setLocalProperty(_PROPERTY, json.dumps(config))
    _AMBIENT.config = config
    try:
        yield
    finally:
        sc.setLocalProperty(_PROPERTY, previous)
        _AMBIENT.config = before


def _config_from_task() -> Optional[Dict[str, Any]]:
    ctx = _task_context()
    if ctx is None:
        return None
    raw = ctx.getLocalProperty(_PROPERTY)
    return json.loads(raw) if raw else None


def _task_key() -> Optional[int]:
    ctx = _task_context()
    return None if ctx is None else ctx.taskAttemptId()


# --------------------------------------------------------------------------
# Per-executor volumes, and the sidecar on them.


def _root(config: Dict[str, Any]) -> str:
    root = config.get("volume_root") or os.environ.get("SIDECAR_SHIM_ROOT") or _default_root()
    _ensure_private_dir(root)
    return root


_GC_DONE: set = set()


def _collect_garbage(root: str, docker: Optional[str]) -> None:
    """Removes the volumes, and containers, of executors that are gone."""
    if (root, docker) in _GC_DONE:
        return
    _GC_DONE.add((root, docker))
    try:
        names = os.listdir(root)
    except OSError:
        names = []
    for name in names:
        m = _EXEC_DIR.match(name)
        if not m or _pid_is(int(m.group(1)), int(m.group(2))):
            continue
        path = os.path.join(root, name)
        try:
            fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            fd = None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody uses it
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass
        finally:
            if fd is not None:
                os.close(fd)
    if docker:
        _remove_orphan_containers(docker)


def _remove_orphan_containers(docker: str) -> None:
    try:
        out = subprocess.run(
            [docker, "ps", "-a", "--filter", f"label={_CONTAINER_LABEL}",
             "--format", f'{{{{.ID}}}} {{{{.Label "{_CONTAINER_LABEL}"}}}}'],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return
    host = os.uname().nodename
    for line in out.stdout.splitlines():
        try:
            cid, owner = line.split()
            owner_host, pid, start = owner.rsplit("-", 2)
        except ValueError:
            continue
        if owner_host == host and not _pid_is(int(pid), int(start)):
            subprocess.run([docker, "rm", "-f", cid], capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL)


def _claim_slot(root: str) -> tuple:
    """(directory, lock fd) of the first free slot of this executor."""
    key = executor_key()
    for slot in range(_MAX_SLOTS):
        path = os.path.join(root, f"{key}-foundry{slot}")
        os.makedirs(path, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(path, ".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return path, fd
    raise SidecarError(f"all {_MAX_SLOTS} sidecar slots of executor {key} in {root} are in use")


def _empty(path: str) -> None:
    """Creates ``path`` world-writable (the container user writes there) or empties it."""
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o777)
    for name in os.listdir(path):
        p = os.path.join(path, name)
        try:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.unlink(p)
        except OSError as e:
            raise SidecarError(f"cannot empty the volume {path} for a new run: {p}: {e.strerror}") from e


class _Session:
    """One sidecar run on one executor volume: claim, start, close."""

    def __init__(self, config: Dict[str, Any]):
        self.config = config
        self.task = _task_key()
        self.proc: Optional[subprocess.Popen] = None
        self.container: Optional[str] = None
        self.started = False
        self.stopped = False
        self._docker_checked = 0.0
        self._docker_verdict: Optional[str] = None
        root = _root(config)
        _collect_garbage(root, config["docker"] if config["image"] else None)
        self.dir, self._lock = _claim_slot(root)
        try:
            self.volumes = {name: os.path.join(self.dir, name) for name in config["volumes"]}
            for path in self.volumes.values():
                _empty(path)
        except BaseException:
            os.close(self._lock)
            raise
        self.volume = self.volumes.get("shared") or self.volumes[config["volumes"][0]]

    # -- start -----------------------------------------------------------

    def start(self) -> None:
        if self.started:
            return
        self.started = True
        if self.config["image"]:
            self._start_container()
        else:
            self._start_process()

    def _start_process(self) -> None:
        exe = find_entrypoint(self.config["entrypoint"])
        command = self.config["command"]
        argv = [exe, "--mode", "oneshot", "--volume", self.volume]
        argv += ["-c", command] if isinstance(command, str) else ["--", *command]
        env = dict(os.environ, SHARED_DIR=self.volume)
        env.pop("SIDECAR_VOLUME", None)
        log = open(os.path.join(self.dir, "entrypoint.log"), "wb")
        try:
            self.proc = subprocess.Popen(
                argv, env=env, cwd=self.volume, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
            )
        except OSError as e:
            raise SidecarError(f"cannot start {shlex.join(argv)}: {e}") from e
        finally:
            log.close()

    def _start_container(self) -> None:
        c = self.config
        me = _proc_stat(os.getpid())
        owner = f"{os.uname().nodename}-{os.getpid()}-{me[2] if me else 0}"
        self.container = f"sidecar-foundry-{os.getpid()}-{secrets.token_hex(4)}"
        argv = [
            c["docker"], "run", "-d", "--name", self.container,
            "--label", f"{_CONTAINER_LABEL}={owner}",
            "--user", c["user"], "--read-only",
            "--tmpfs", "/tmp:rw,nosuid,nodev,size=256m",
            "--network", "none", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
        ]
        for name, host in self.volumes.items():
            argv += ["-v", f"{os.path.realpath(host)}:{FOUNDRY_VOLUMES}/{name}"]
        argv.append(c["image"])
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.container = None
            raise SidecarError(f"cannot run {shlex.join(argv)}: {e}") from e
        if r.returncode != 0:
            self.container = None
            raise SidecarError(f"`{shlex.join(argv)}` failed: {r.stderr.strip()}")

    # -- liveness --------------------------------------------------------

    def exited(self) -> Optional[str]:
        """Why the sidecar is not running any more, or None while it runs."""
        if self.proc is not None:
            code = self.proc.poll()
            if code is None:
                return None
            log = _tail(self.dir, "entrypoint.log", 2048).strip()
            return f"sidecar-entrypoint exited with code {code}" + (f": {log}" if log else "")
        if self.container is not None:
            now = time.monotonic()
            if self._docker_verdict is None and now - self._docker_checked >= _DOCKER_CHECK:
                self._docker_checked = now
                self._docker_verdict = self._container_state()
            return self._docker_verdict
        return None

    def _container_state(self) -> Optional[str]:
        try:
            r = subprocess.run(
                [self.config["docker"], "inspect", "-f", "{{.State.Running}} {{.State.ExitCode}}", self.container],
                capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None  # no verdict: the deadline still bounds the wait
        if r.returncode != 0:
            return f"container {self.container} is gone"
        running, _, code = r.stdout.strip().partition(" ")
        if running == "true":
            return None
        logs = subprocess.run([self.config["docker"], "logs", "--tail", "20", self.container],
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
        text = (logs.stdout + logs.stderr).strip()
        return f"container {self.container} exited with code {code}" + (f": {text}" if text else "")

    def restart(self) -> None:
        """Readies a stopped session for another run on the same volume
        (a udf that runs twice in one task): the flags and logfile of the
        last run go, the files staged since stay."""
        self.stop()
        for name in (START_FLAG, DONE_FLAG, CLOSE_FLAG, LOGFILE):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.volume, name))
        self.proc = None
        self.container = None
        self._docker_verdict = None
        self.started = self.stopped = False

    # -- stop ------------------------------------------------------------

    def stop(self) -> None:
        """Makes sure the sidecar is gone: asked to exit (close_flag), then
        stopped (TERM, then KILL; ``docker rm -f``). The volume stays this
        task's until :meth:`release`."""
        if self.stopped:
            return
        self.stopped = True
        if self.started and not _exists(os.path.join(self.volume, CLOSE_FLAG)):
            with contextlib.suppress(OSError):
                _write_atomic(os.path.join(self.volume, CLOSE_FLAG))
        if self.proc is not None:
            self._stop_process()
        if self.container is not None:
            self._stop_container()

    def close(self) -> None:
        """Stops the sidecar and frees the volume's slot for another task."""
        try:
            self.stop()
        finally:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    def _stop_process(self) -> None:
        p = self.proc
        try:
            p.wait(timeout=_EXIT_WAIT)
            return
        except subprocess.TimeoutExpired:
            pass
        _warn(f"sidecar-entrypoint (pid {p.pid}) still runs {_EXIT_WAIT:.0f}s after close_flag: stopping it")
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=_KILL_GRACE)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def _stop_container(self) -> None:
        d, name = self.config["docker"], self.container
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([d, "wait", name], capture_output=True, timeout=_EXIT_WAIT, stdin=subprocess.DEVNULL)
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([d, "rm", "-f", name], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


try:  # looked up here: the child of a fork must not import or allocate
    import ctypes

    _PRCTL: Optional[Callable[..., int]] = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _PRCTL = None
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: SIGTERM when the Python worker that started it dies
    (the entrypoint then stops its command and exits)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


# The session of this process (a Python worker runs one task at a time).
_CURRENT: Optional[_Session] = None
_CURRENT_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    global _CURRENT, _CURRENT_LOCK
    _CURRENT = None  # the parent's: never closed from a child
    _CURRENT_LOCK = threading.Lock()
    _GC_DONE.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _end_current() -> None:
    global _CURRENT
    with _CURRENT_LOCK:
        s, _CURRENT = _CURRENT, None
    if s is not None:
        s.close()


@contextlib.contextmanager
def _session(config: Dict[str, Any], started: bool):
    """A sidecar for the duration of the block (the udf-level decorator)."""
    global _CURRENT
    _end_current()  # a leftover of an earlier task of this worker
    s = _Session(config)
    with _CURRENT_LOCK:
        _CURRENT = s
    try:
        if started:
            s.start()
        yield s
    finally:
        with _CURRENT_LOCK:
            if _CURRENT is s:
                _CURRENT = None
        s.close()


def _current(start: bool = False) -> Optional[_Session]:
    """This task's session: the decorator's, or one begun from the task's
    local property (a transform-level decorator). None in Foundry."""
    global _CURRENT
    with _CURRENT_LOCK:
        s = _CURRENT
    if s is not None:
        if s.task is None or s.task == _task_key():
            if start:
                if s.stopped:
                    s.restart()  # another run in the same task
                s.start()
            return s
        _end_current()  # left by an earlier task that raised
    config = _config_from_task()
    if config is None:
        return None
    s = _Session(config)
    with _CURRENT_LOCK:
        _CURRENT = s
    if start:
        s.start()
    return s


def volume_path(name: Optional[str] = None) -> str:
    """The shared volume of this task's sidecar (``VOLUME_PATH``).

    In order: the volume of the sidecar started for this task by
    :func:`sidecar`; ``$SHARED_DIR``; Foundry's
    ``/opt/palantir/sidecars/shared-volumes/<name>``. ``name`` picks one of
    several volumes (default ``shared``, else the first).
    """
    s = _current()
    if s is not None:
        if name is None:
            return s.volume
        if name not in s.volumes:
            raise SidecarError(f"no volume {name!r} (this sidecar has {sorted(s.volumes)})")
        return s.volumes[name]
    if name is None and os.environ.get("SHARED_DIR"):
        return os.environ["SHARED_DIR"]
    return f"{FOUNDRY_VOLUMES}/{name or 'shared'}"


def __getattr__(name: str) -> Any:
    # PEP 562: VOLUME_PATH is this task's volume, computed when read.
    if name == "VOLUME_PATH":
        return volume_path()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _existing_volume() -> str:
    v = volume_path()
    if not os.path.isdir(v):
        raise SidecarError(
            f"the shared volume {v} does not exist: not in Foundry, and no sidecar was started for "
            "this task (decorate the udf or the transform with sidecar_shim.foundry.sidecar(...))"
        )
    return v


# --------------------------------------------------------------------------
# The documented helpers.


def copy_files_to_shared_directory(source: Any) -> List[str]:
    """Copies the input files into the volume, each atomically; returns their names.

    ``source``: a Foundry transform input (its ``filesystem()``: every file
    it lists), a directory (its files, recursively, dot-files skipped) or a
    file.
    """
    volume = _existing_volume()
    copied: List[str] = []
    for name, opener in _source_files(source):
        parts = _relative_parts(name)
        dest = os.path.join(volume, *parts)
        if len(parts) > 1:
            os.makedirs(os.path.dirname(dest), mode=0o777, exist_ok=True)
        with opener() as src:
            _copy_atomic(src, dest)
        copied.append(name)
    return copied


def _source_files(source: Any) -> Iterable[tuple]:
    if hasattr(source, "filesystem"):
        fs = source.filesystem()
        for item in fs.ls():
            path = getattr(item, "path", item)
            yield path, functools.partial(fs.open, path, "rb")
        return
    path = os.fspath(source)
    if os.path.isdir(path):
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if f.startswith("."):
                    continue
                full = os.path.join(dirpath, f)
                if os.path.isfile(full):
                    yield os.path.relpath(full, path), functools.partial(open, full, "rb")
    elif os.path.isfile(path):
        yield os.path.basename(path), functools.partial(open, path, "rb")
    else:
        raise FileNotFoundError(f"copy_files_to_shared_directory: {path} is neither a file nor a directory")


def copy_start_flag() -> None:
    """Raises ``start_flag`` (atomically): the entrypoint starts the command.

    No sleep: the entrypoint sees the flag by an inotify event.
    """
    s = _current(start=True)
    volume = s.volume if s is not None else _existing_volume()
    _write_atomic(os.path.join(volume, START_FLAG))


def wait_for_done_flag() -> Optional[Dict[str, Any]]:
    """Waits for ``done_flag`` and returns the outcome it carries.

    Returns the outcome (a dict: ``status``, ``exit_code``, ``reason``,
    ``stderr_tail``...) when the run succeeded, or ``{"status": "unknown"}``
    when the entrypoint wrote an empty ``done_flag`` (Foundry's original
    one), saying so on stderr. Raises :class:`SidecarRunError` when the run
    did not succeed, when the sidecar exited without a ``done_flag``, and
    after ``MAX_RUN_MINUTES``. When it raises, the sidecar this module
    started for the task has been stopped.
    """
    s = _current()
    volume = s.volume if s is not None else _existing_volume()
    minutes = float(sys.modules[__name__].MAX_RUN_MINUTES)
    try:
        return _wait_done(volume, s, minutes)
    except BaseException:
        if s is not None:
            s.stop()  # the error carries what there is to know; nothing lingers
        raise


def _wait_done(volume: str, s: Optional[_Session], minutes: float) -> Optional[Dict[str, Any]]:
    done = os.path.join(volume, DONE_FLAG)
    if not _exists(os.path.join(volume, START_FLAG)) and not _exists(done):
        raise SidecarError(f"wait_for_done_flag: no start_flag in {volume} (call copy_start_flag() first)")
    lost: List[str] = []

    def check_alive() -> None:
        why = s.exited() if s is not None and s.started else None
        if why is not None and not _exists(done):
            lost.append(why)
            raise _Lost()

    started = time.monotonic()
    try:
        found = wait_until(volume, lambda: True if _exists(done) else None,
                           started + minutes * 60.0, on_tick=check_alive)
    except _Lost:
        found = None
    if found is None:
        if lost:
            summary = f"the sidecar stopped without writing {done}: {lost[0]}"
            status = "lost"
        else:
            summary = (f"no {DONE_FLAG} in {volume} after {minutes:g} minutes "
                       f"(MAX_RUN_MINUTES={minutes:g}): the run is taken as timed out")
            status = "timed_out"
        raise SidecarRunError(f"sidecar run {status}: {summary}", status=status,
                              logfile_tail=_tail(volume, LOGFILE), volume=volume)
    data = _read_small(volume, DONE_FLAG) or b""
    if not data.strip():
        _warn(f"{done} is empty (an entrypoint that does not report its outcome): status unknown")
        return {"status": "unknown"}
    try:
        outcome = json.loads(data)
        if not isinstance(outcome, dict) or "status" not in outcome:
            raise ValueError("no status")
    except ValueError:
        _warn(f"{done} is not an outcome record: status unknown")
        return {"status": "unknown"}
    if outcome["status"] != "succeeded":
        raise SidecarRunError(f"sidecar run failed: {_describe(outcome)}", status=str(outcome["status"]),
                              outcome=outcome, logfile_tail=_tail(volume, LOGFILE), volume=volume)
    return outcome


class _Lost(Exception):
    pass


def copy_output_files(output: Any, fnames: Sequence[str], *, missing: str = "warn") -> List[str]:
    """Copies the named files out of the volume; returns the names copied.

    ``output``: a Foundry transform output (written through its
    ``filesystem().open(name, "wb")``) or a directory. Files are opened
    without following links. A name that is absent is skipped, as in the
    documented helper, and said on stderr (``missing="error"`` raises,
    ``"ignore"`` is silent).
    """
    return _copy_out(output, fnames, lambda n: n, missing)


def copy_output_files_with_prefix(output: Any, fnames: Sequence[str], prefix: Any, *, missing: str = "warn") -> List[str]:
    """As :func:`copy_output_files`, each written as ``<prefix>_<name>``."""
    return _copy_out(output, fnames, lambda n: f"{prefix}_{n}", missing)


def _copy_out(output: Any, fnames: Sequence[str], rename: Callable[[str], str], missing: str) -> List[str]:
    if missing not in ("warn", "error", "ignore"):
        raise ValueError(f"missing={missing!r}: use 'warn', 'error' or 'ignore'")
    if isinstance(fnames, (str, bytes)):
        raise TypeError("fnames is a list of file names, not one string")
    volume = _existing_volume()
    copied: List[str] = []
    for name in fnames:
        fd = _open_in_volume(volume, name)
        if fd is None:
            if missing == "error":
                raise FileNotFoundError(f"{os.path.join(volume, name)}: not in the volume")
            if missing == "warn":
                _warn(f"{os.path.join(volume, name)} does not exist: not copied")
            continue
        with os.fdopen(fd, "rb") as src:
            _write_output(output, rename(name), src)
        copied.append(name)
    return copied


def _write_output(output: Any, name: str, src) -> None:
    if hasattr(output, "filesystem"):
        with output.filesystem().open(name, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        return
    parts = _relative_parts(name)
    dest = os.path.join(os.fspath(output), *parts)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    _copy_atomic(src, dest)


def copy_close_flag() -> None:
    """Raises ``close_flag`` (atomically, no sleep): the entrypoint exits.

    A sidecar this module started is waited for (then stopped if it does
    not exit) and its container removed; a ``copy_start_flag`` after it in
    the same task starts another run on the same volume.
    """
    s = _current()
    volume = s.volume if s is not None else _existing_volume()
    _write_atomic(os.path.join(volume, CLOSE_FLAG))
    if s is not None:
        s.stop()


# --------------------------------------------------------------------------
# Launching the udf.


def _spark_session(ctx: Any):
    if hasattr(ctx, "spark_session"):
        return ctx.spark_session
    if hasattr(ctx, "createDataFrame"):
        return ctx
    raise TypeError("ctx must be a transform context (with .spark_session) or a SparkSession")


def _wrapped(udf: Callable) -> Callable:
    config = getattr(_AMBIENT, "config", None)
    if config is None or hasattr(udf, "sidecar"):
        return udf
    decorator = sidecar.__new__(sidecar)
    decorator.config = dict(config)
    return decorator(udf)


def launch_udf_once(ctx: Any, udf: Callable) -> List[Any]:
    """Runs ``udf`` once, on one executor, on a one-row DataFrame
    (``ExecutionID`` = 1), as the documented helper does; returns its result
    in a list. Under a transform-level :func:`sidecar`, the run has its own
    sidecar, gone when ``udf`` returns or raises."""
    return launch_udf(ctx, udf, 1, first_id=1)


def launch_udf(ctx: Any, udf: Callable, partitions: int, *, first_id: int = 0) -> List[Any]:
    """The Foundry-shaped job: ``partitions`` rows (``ExecutionID`` from
    ``first_id``), ``repartition(partitions).rdd.map(udf)``: one task per
    row, each with a sidecar beside its executor. Returns the results."""
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    spark = _spark_session(ctx)
    df = spark.createDataFrame([(first_id + i,) for i in range(partitions)], "ExecutionID int")
    return df.repartition(partitions).rdd.map(_wrapped(udf)).collect()
