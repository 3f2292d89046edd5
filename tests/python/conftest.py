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
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Short bounds so that an orphaned sidecar disappears within seconds.
LEASE_TIMEOUT = 4.0


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
    if master.startswith("local-cluster"):
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


def _session(master, app_name):
    """The running session on `master`, starting it (and stopping a session
    on another master) as needed."""
    current = _ACTIVE.get("session")
    if current is not None and _ACTIVE["master"] == master and current.sparkContext._jsc is not None:
        return current
    _stop_active()
    session = spark_builder(app_name, master).getOrCreate()
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
