"""Spark's task lifecycle on a real multi-executor cluster.

`local-cluster[2,1,1024]` starts two executor JVMs as separate processes,
each with its own Python workers, so each gets its own sidecar. These
tests cancel jobs, kill executors and stop the session the way a cluster
does, and check that the sidecars follow: a task Spark kills is stopped in
its sidecar and its directory reclaimed within two seconds of its Python
worker's death (its owner lock goes with the worker: sidecar_core::owner),
a dead executor's sidecar and volume go, and nothing outlives the
application.

They take the `cluster_spark` session (conftest.py: one SparkContext per
process, sessions take turns), or a driver process of their own where the
session must be stopped.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pyarrow as pa
import pytest

import sidecar_shim
from conftest import (
    BOUND_S,
    SLACK_S,
    alive,
    docker_containers,
    docker_image_present,
    pid_of,
    recording_worker,
    sidecar_processes,
    task_dirs,
    when_gone,
)

pytestmark = pytest.mark.cluster



def served_by(fn):
    """`fn`, with a column naming the executor whose Python worker ran each task."""

    def wrapped(batches):
        key = sidecar_shim.executor_key()
        for b in fn(batches):
            yield b.append_column("executor", pa.array([key] * b.num_rows, pa.string()))

    return wrapped


def slow_or_pid(marks):
    """Logic that, while `marks/slow` exists, records itself and sleeps (a
    task for Spark to kill); otherwise reports its sidecar's pid."""
    return [
        "sh",
        "-c",
        f'if [ -e {marks}/slow ]; then echo "$PPID" > {marks}/sidecar.$SIDECAR_TASK_ID; '
        f'echo $$ > {marks}/logic.$SIDECAR_TASK_ID; exec sleep 120; fi; '
        'printf "pid\\n%s\\n" "$PPID" > "$SIDECAR_OUTPUT"',
    ]


def test_one_sidecar_per_executor_jvm_shared_by_its_workers(cluster_spark, volume_root, marks):
    fn = sidecar_shim.map_in_arrow(command=slow_or_pid(marks), input_format="csv", volume_root=volume_root)
    df = cluster_spark.range(0, 16000, numPartitions=16)
    rows = df.mapInArrow(served_by(fn), "pid long, executor string").collect()
    assert len(rows) == 16
    by_executor = {}
    for r in rows:
        by_executor.setdefault(r.executor, set()).add(r.pid)
    assert len(by_executor) == 2, f"expected two executors: {by_executor}"
    for key, pids in by_executor.items():
        assert len(pids) == 1, f"executor {key} was served by several sidecars: {pids}"
    sidecars = {p for pids in by_executor.values() for p in pids}
    assert len(sidecars) == 2, f"two executors shared a sidecar: {by_executor}"
    assert sorted(sidecars) == sidecar_processes(volume_root)


def test_a_cancelled_job_stops_its_logic_and_the_sidecars_serve_the_next(cluster_spark, volume_root, marks):
    fn = sidecar_shim.map_in_arrow(command=slow_or_pid(marks), input_format="csv", volume_root=volume_root)
    (marks / "slow").touch()
    df = cluster_spark.range(0, 400, numPartitions=4)
    failure = []

    def run():
        try:
            df.mapInArrow(recording_worker(fn, marks), "pid long").collect()
        except Exception as e:  # noqa: BLE001 - the cancellation is expected
            failure.append(e)

    job = threading.Thread(target=run)
    job.start()
    # Both executors (one core each) run a task whose logic sleeps.
    deadline = time.monotonic() + 120
    while len(list(marks.glob("logic.*"))) < 2:
        assert time.monotonic() < deadline, "the slow tasks never started"
        time.sleep(0.05)
    logics = {p.name[len("logic."):]: pid_of(p) for p in marks.glob("logic.*")}
    workers = {}
    for task in logics:
        part_attempt = "-".join(task.split("-")[:2])
        workers[task] = pid_of(marks / f"worker.{part_attempt}")
    sidecars = {pid_of(marks / f"sidecar.{t}") for t in logics}
    cluster_spark.sparkContext.cancelAllJobs()
    worker_gone = when_gone(list(workers.values()))
    logic_gone = when_gone(list(logics.values()))
    job.join(timeout=60)
    assert failure, "the cancelled job did not fail"
    for task, logic in logics.items():
        worker = workers[task]
        assert worker in worker_gone, f"Spark did not kill the worker of {task}"
        assert logic in logic_gone, f"the logic of {task} outlived its cancelled task"
        latency = logic_gone[logic] - worker_gone[worker]
        print(f"FIGURE cancel_latency_s={latency:.3f}")
        assert latency <= BOUND_S + SLACK_S, f"{task}: logic stopped {latency:.2f}s after its worker died"
    deadline = time.monotonic() + BOUND_S + SLACK_S
    while task_dirs(volume_root) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert task_dirs(volume_root) == [], "cancelled tasks left their directories"
    # The next job runs on the same sidecars.
    (marks / "slow").unlink()
    pids = {r.pid for r in df.mapInArrow(fn, "pid long").collect()}
    assert pids <= set(sidecar_processes(volume_root))
    assert pids <= sidecars | set(sidecar_processes(volume_root))
    assert sidecars <= set(sidecar_processes(volume_root)), "a sidecar went with the cancelled job"


def executor_pid(key):
    """The executor JVM's pid from an `executor_key()` (`jvm<pid>-<start>`)."""
    assert key.startswith("jvm"), key
    return int(key[3:].split("-")[0])


def test_a_killed_executor_leaves_the_right_result_and_no_sidecar(cluster_spark, volume_root, marks):
    # A root of its own: the session's executors still hold the sidecars of
    # earlier tests' configurations, which are not this test's to count.
    volume_root = os.path.join(volume_root, "killed-executor")
    os.makedirs(volume_root, mode=0o700, exist_ok=True)
    logic = [
        "sh",
        "-c",
        f'echo $$ > {marks}/logic.$SIDECAR_TASK_ID; sleep 0.5; cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"',
    ]
    fn = sidecar_shim.map_in_arrow(command=logic, input_format="csv", schema="id long", volume_root=volume_root)
    df = cluster_spark.range(0, 8000, numPartitions=16)
    keys = {r.executor for r in df.mapInArrow(served_by(fn), "id long, executor string").collect()}
    assert len(keys) == 2, keys
    before = sidecar_processes(volume_root)
    assert len(before) == 2, before
    victim = sorted(keys)[0]
    victim_volumes = [v for v in os.listdir(volume_root) if v.startswith(victim)]
    assert victim_volumes, f"no volume of {victim} under {volume_root}"
    result = []
    job = threading.Thread(target=lambda: result.append(df.mapInArrow(fn, "id long").collect()))
    job.start()
    deadline = time.monotonic() + 60
    while len(list(marks.glob("logic.*"))) < 4:
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.02)
    os.kill(executor_pid(victim), signal.SIGKILL)
    killed = time.monotonic()
    job.join(timeout=300)
    assert result, "the job did not finish after an executor died"
    assert sorted(r.id for r in result[0]) == list(range(8000)), "rows lost or counted twice"
    # The dead executor's sidecar and volume go within the lease bound.
    from conftest import LEASE_TIMEOUT

    bound = killed + LEASE_TIMEOUT + SLACK_S
    while time.monotonic() < bound and (
        set(before) & set(sidecar_processes(volume_root)) == set(before)
        or any(os.path.exists(os.path.join(volume_root, v)) for v in victim_volumes)
    ):
        time.sleep(0.05)
    left = set(before) & set(sidecar_processes(volume_root))
    assert len(left) <= 1, f"the dead executor's sidecar still runs: {left}"
    gone_volumes = [v for v in victim_volumes if not os.path.exists(os.path.join(volume_root, v))]
    assert gone_volumes == victim_volumes, f"volumes of the dead executor left: {victim_volumes}"
    logics = [pid_of(p) for p in marks.glob("logic.*")]
    assert not [p for p in logics if alive(p)], "logic processes left behind"


STOP_SCRIPT = """
import json, sys, time
sys.path.insert(0, sys.argv[2])
from conftest import CLUSTER_MASTER, spark_builder, sidecar_processes, docker_containers
import sidecar_shim

root, provider = sys.argv[1], sys.argv[3]
spark = spark_builder("sidecar-shim-stop", CLUSTER_MASTER).getOrCreate()
kw = dict(input_format="csv", volume_root=root, schema="id long")
cat = 'cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'
if provider == "docker":
    kw["image"] = "sidecar-foundry-dd:latest"
fn = sidecar_shim.map_in_arrow(command=["sh", "-c", cat], **kw)
df = spark.range(0, 1000, numPartitions=8)
n = df.mapInArrow(fn, "id long").count()
running = sidecar_processes(root) if provider == "process" else docker_containers(root)
# An aborted job: every attempt of a task fails, and the job with it.
bad = sidecar_shim.map_in_arrow(command=["sh", "-c", "echo broken >&2; exit 3"], **kw)
try:
    df.mapInArrow(bad, "id long").count()
    aborted = False
except Exception:
    aborted = True
spark.stop()
print(json.dumps({"rows": n, "running": running, "aborted": aborted, "stopped": time.monotonic()}), flush=True)
sys.stdin.read()  # stay alive, as a driver would after stop(), while the test watches
"""


@pytest.mark.parametrize("provider", ["process", "docker"])
def test_nothing_outlives_spark_stop(provider, entrypoint, tmp_path):
    if provider == "docker" and not docker_image_present("sidecar-foundry-dd:latest"):
        pytest.skip("docker: image sidecar-foundry-dd:latest is absent (examples/foundry-dd/build.sh builds it)")
    root = str(tmp_path / "stop")
    os.makedirs(root)
    env = dict(os.environ, SIDECAR_ENTRYPOINT=entrypoint)
    proc = subprocess.Popen(
        [sys.executable, "-c", STOP_SCRIPT, root, os.path.dirname(__file__), provider],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line, f"the Spark driver failed (exit code {proc.poll()})"
        report = json.loads(line)
        assert report["rows"] == 1000 and report["aborted"], report
        assert len(report["running"]) == 2, f"expected one sidecar per executor: {report['running']}"
        look = sidecar_processes if provider == "process" else docker_containers
        left = look(root)
        while left and time.monotonic() < report["stopped"] + BOUND_S + SLACK_S:
            time.sleep(0.05)
            left = look(root)
        gone_after = time.monotonic() - report["stopped"]
        print(f"FIGURE stop_to_last_sidecar_gone_{provider}_s={gone_after:.3f}")
        assert left == [], f"{provider} sidecars still running {gone_after:.1f}s after spark.stop(): {left}"
    finally:
        proc.stdin.close()
        proc.wait(timeout=120)

