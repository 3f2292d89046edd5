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
