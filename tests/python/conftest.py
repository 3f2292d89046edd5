"""Fixtures for the PySpark integration tests: a real local[2] SparkSession
(`spark`), a real two-executor cluster (`cluster_spark`), and the
sidecar-entrypoint binary the process provider starts.

One SparkContext can be active per Python process, so the two sessions take
turns: asking for one stops the other if it is running. A local-cluster
start costs tens of seconds: a module that needs the cluster gets it once
(module scope), and the next module's `spark` starts local[2] again.

Run with `.ci/python-tests.sh` (builds everything), or after `maturin
develop` / installing the wheel: `python -m pytest tests/python -q`.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Short bounds so that an orphaned sidecar disappears within seconds.
LEASE_TIMEOUT = 4.0
# A Python worker's death -> its task's logic stopped and its directory
# reclaimed (the lifecycle tests).
BOUND_S = 2.0
# What a loaded 2-core machine may add to a bound measured from outside.
SLACK_S = 1.0


def _find_entrypoint():
    env = os.environ.get("SIDECAR_ENTRYPOINT")
    if env:
        return env
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    for profile in ("release", "debug"):
        p = target / profile / "sidecar-entrypoint"
        if p.is_file():
            return str(p)
    return shutil.which("sidecar-entrypoint")


@pytest.fixture(scope="session")
def entrypoint():
    path = _find_entrypoint()
    if not path:
        pytest.fail(
            "sidecar-entrypoint not found: run `cargo build -p sidecar-entrypoint` "
            "or set SIDECAR_ENTRYPOINT (.ci/python-tests.sh does both)"
        )
    os.environ["SIDECAR_ENTRYPOINT"] = path
    return path


@pytest.fixture(scope="session")
def volume_root():
    """A private root for this run's per-executor volumes: the leftover-process
    checks look for sidecars whose command line mentions it."""
    d = tempfile.mkdtemp(prefix="sidecar-shim-pytest-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def spark_builder(app_name, master="local[2]"):
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    builder = (
        SparkSession.builder.master(master)
        .appName(app_name)
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "1000")
        .config("spark.driver.memory", "1g")
    )
    if master.startswith(("local-cluster", "spark://")):
        # Executors are separate JVMs: pass them the test interpreter and
        # the sidecar settings explicitly rather than rely on inheritance.
        builder = builder.config("spark.driver.host", "127.0.0.1")
        # Tasks go to whichever executor is free at once, instead of waiting
        # up to 3 s for a "local" one: tests measure the work, not the wait.
        builder = builder.config("spark.locality.wait", "0s")
        builder = builder.config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
        for name, value in sorted(os.environ.items()):
            if name.startswith("SIDECAR_"):
                builder = builder.config(f"spark.executorEnv.{name}", value)
    return builder


#: The one SparkSession of this process: (master, session).
_ACTIVE = {}


def _session(master, app_name, conf=None):
    """The running session on `master`, starting it (and stopping a session
    on another master) as needed, with `conf` added."""
    current = _ACTIVE.get("session")
    if current is not None and _ACTIVE["master"] == master and current.sparkContext._jsc is not None:
        return current
    _stop_active()
    builder = spark_builder(app_name, master)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    _ACTIVE.update(master=master, session=session)
    return session


def _stop_active():
    current = _ACTIVE.pop("session", None)
    _ACTIVE.pop("master", None)
    if current is not None:
        current.stop()


@pytest.fixture(scope="session", autouse=True)
def _stop_spark_at_exit():
    yield
    _stop_active()


@pytest.fixture(scope="module")
def spark(entrypoint):
    """A local[2] SparkSession: one executor, two Python workers."""
    return _session("local[2]", "sidecar-shim-pytest")


#: Two executors of one core and 1 GiB each, in separate JVMs.
CLUSTER_MASTER = "local-cluster[2,1,1024]"


@pytest.fixture(scope="module")
def cluster_spark(entrypoint):
    """A SparkSession on a real multi-executor cluster (local-cluster[2,1,1024]):
    two executor JVMs, each with its own Python workers, so per-executor
    state (volumes, sidecars) is exercised for real. Stopped at the end of
    the module that asked for it; `spark` starts again where needed."""
    session = _session(CLUSTER_MASTER, "sidecar-shim-pytest-cluster")
    wait_for_executors(session, 2)
    yield session
    _stop_active()


def wait_for_executors(session, n, limit=120.0):
    """Waits until `n` executors have registered (a job started earlier
    would run on the first alone)."""
    import time

    status = session.sparkContext._jsc.sc().getExecutorMemoryStatus
    deadline = time.monotonic() + limit
    while status().size() < n + 1:  # the driver is listed too
        if time.monotonic() > deadline:
            pytest.fail(f"only {status().size() - 1} of {n} executors registered within {limit:.0f}s")
        time.sleep(0.1)


def docker_image_present(image):
    if not shutil.which("docker"):
        return False
    r = subprocess.run(
        ["docker", "image", "inspect", image],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return r.returncode == 0


#: The Foundry `dd` example image (examples/foundry-dd), built offline.
FOUNDRY_IMAGE = "sidecar-foundry-dd:latest"
_DOCKER = {}


def docker_unavailable(image=FOUNDRY_IMAGE):
    """None when a Docker engine answers and `image` exists (built with
    examples/foundry-dd/build.sh, offline, when it is missing); otherwise
    why not. Decided once per test run."""
    if image in _DOCKER:
        return _DOCKER[image]
    why = None
    if not shutil.which("docker"):
        why = "no `docker` command"
    else:
        info = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if info.returncode != 0:
            lines = info.stderr.strip().splitlines()
            why = f"no engine answers `docker info`: {lines[-1] if lines else info.returncode}"
        elif not docker_image_present(image):
            build = subprocess.run(["bash", str(REPO / "examples/foundry-dd/build.sh")],
                                   capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                   env=dict(os.environ, IMAGE=image))
            if build.returncode != 0:
                tail = " | ".join(build.stderr.strip().splitlines()[-3:])
                why = f"cannot build {image} with examples/foundry-dd/build.sh: {tail}"
    _DOCKER[image] = why
    return why


def require_docker(image=FOUNDRY_IMAGE):
    """Skips the calling test, saying `SKIPPED: docker: <why>`, when Docker
    or the image is unavailable (fails it under SIDECAR_REQUIRE_DOCKER=1)."""
    why = docker_unavailable(image)
    if why is None:
        return
    if os.environ.get("SIDECAR_REQUIRE_DOCKER") == "1":
        pytest.fail(f"docker: {why} (SIDECAR_REQUIRE_DOCKER=1)")
    # Past pytest's capture, like the Rust suites' skip lines.
    print(f"SKIPPED: docker: {why}", file=sys.__stderr__, flush=True)
    pytest.skip(f"docker: {why}")


def sidecar_processes(root):
    """pids of sidecar-entrypoint processes whose command line mentions `root`."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0]:
            continue
        if os.path.basename(argv[0]) != b"sidecar-entrypoint":
            continue
        if any(root.encode() in a for a in argv):
            found.append(int(name))
    return sorted(found)


def docker_containers(root):
    """Names of running containers with a bind mount under `root`."""
    if not shutil.which("docker"):
        return []
    ids = subprocess.run(["docker", "ps", "-q"], capture_output=True, text=True).stdout.split()
    if not ids:
        return []
    out = subprocess.run(
        ["docker", "inspect", "-f", "{{.Name}} {{range .Mounts}}{{.Source}} {{end}}", *ids],
        capture_output=True,
        text=True,
    ).stdout
    return sorted(line.split()[0].lstrip("/") for line in out.splitlines() if root in line)


def _free_port(host):
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _wait_for_line(path, needle, what, timeout=180.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                if needle in f.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    with open(path) as f:
        tail = f.read()[-3000:]
    raise AssertionError(f"{what} did not start within {timeout:.0f}s:\n{tail}")


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory):
    """A Spark standalone cluster whose two one-core workers are on two
    hosts, 127.0.0.2 and 127.0.0.3 (loopback addresses), the master on
    127.0.0.1: Spark places a speculative copy of a task only on another
    host than the first attempt's, which `local-cluster` (one host) never
    offers. Yields the master URL."""
    import pyspark

    home = os.path.dirname(pyspark.__file__)
    spark_class = os.path.join(home, "bin", "spark-class")
    work = tmp_path_factory.mktemp("standalone")
    port = _free_port("127.0.0.1")
    master_url = f"spark://127.0.0.1:{port}"
    env = dict(os.environ, SPARK_HOME=home)
    procs = []

    def start(name, cls, *args):
        log = work / f"{name}.log"
        e = dict(env, SPARK_WORKER_DIR=str(work / name))
        procs.append(
            subprocess.Popen(
                [spark_class, cls, *args],
                stdout=open(log, "w"),
                stderr=subprocess.STDOUT,
                env=e,
                start_new_session=True,
            )
        )
        return log

    try:
        log = start(
            "master", "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(_free_port("127.0.0.1")),
        )
        _wait_for_line(log, "Starting Spark master", "the standalone master")
        for i, host in enumerate(["127.0.0.2", "127.0.0.3"]):
            start(
                f"worker{i}", "org.apache.spark.deploy.worker.Worker",
                "--host", host, "--cores", "1", "--memory", "1g",
                "--webui-port", str(_free_port("127.0.0.1")), master_url,
            )
        _wait_for_line(log, "Registering worker 127.0.0.3", "the second worker")
        _wait_for_line(log, "Registering worker 127.0.0.2", "the first worker")
        yield master_url
    finally:
        import signal

        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except OSError:
                pass
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


# ---------------------------------------------------------------------------
# Watching a task's processes from outside, for the lifecycle tests.


@pytest.fixture()
def marks(tmp_path):
    d = tmp_path / "marks"
    d.mkdir()
    os.chmod(d, 0o777)
    return d


def pid_of(path, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
            if text.endswith("\n"):
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def when_gone(pids, timeout=60.0):
    """{pid: monotonic time it was first seen gone}."""
    seen = {}
    deadline = time.monotonic() + timeout
    while len(seen) < len(pids) and time.monotonic() < deadline:
        now = time.monotonic()
        for p in pids:
            if p not in seen and not alive(p):
                seen[p] = now
        time.sleep(0.005)
    return seen


def task_dirs(root):
    out = []
    for vol in os.listdir(root):
        tasks = os.path.join(root, vol, "tasks")
        if os.path.isdir(tasks):
            out += [os.path.join(tasks, t) for t in os.listdir(tasks) if not t.startswith(".")]
    return out


def recording_worker(fn, marks):
    """`fn`, with the Python worker's pid recorded per task attempt."""

    def wrapped(batches):
        from pyspark import TaskContext

        ctx = TaskContext.get()
        with open(f"{marks}/worker.p{ctx.partitionId()}-a{ctx.attemptNumber()}", "w") as f:
            f.write(f"{os.getpid()}\n")
        yield from fn(batches)

    return wrapped
