"""Fixtures for the PySpark integration tests: a real local[2] SparkSession
and the sidecar-entrypoint binary the process provider starts.

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


def spark_builder(app_name):
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    return (
        SparkSession.builder.master("local[2]")
        .appName(app_name)
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "1000")
        .config("spark.driver.memory", "1g")
    )


def cluster_builder(app_name, master="local-cluster[2,1,1024]"):
    """A session on a real multi-executor cluster: `local-cluster[2,1,1024]`
    starts two executor JVMs, each with its own Python workers."""
    builder = (
        spark_builder(app_name)
        .master(master)
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.executor.memory", "512m")
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
    )
    entrypoint = os.environ.get("SIDECAR_ENTRYPOINT") or _find_entrypoint()
    if entrypoint:
        builder = builder.config("spark.executorEnv.SIDECAR_ENTRYPOINT", entrypoint)
    return builder


@pytest.fixture(scope="session")
def spark(entrypoint):
    session = spark_builder("sidecar-shim-pytest").getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def docker_image_present(image):
    if not shutil.which("docker"):
        return False
    r = subprocess.run(
        ["docker", "image", "inspect", image],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return r.returncode == 0


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
