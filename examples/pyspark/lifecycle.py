"""How fast Spark's task lifecycle reaches the sidecar, measured on a real
two-executor cluster (`local-cluster[2,1,1024]`).

Each round starts a job whose tasks' logic sleeps, cancels it once the
logic runs (`sc.cancelAllJobs()`), and times, for each killed task, its
Python worker's death (Spark kills it) to its logic's end (the sidecar
stops it once its owner lock goes). At the end, `spark.stop()` to the last
sidecar process gone. Prints one line per figure and a JSON line.

    python examples/pyspark/lifecycle.py [--rounds 12]

Needs the `sidecar_shim` wheel installed and `SIDECAR_ENTRYPOINT` (or the
bundled binary); `.ci/python-tests.sh` builds both.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time

from pyspark.sql import SparkSession

import sidecar_shim


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def read_pid(path):
    while True:
        try:
            text = open(path).read()
            if text.endswith("\n"):
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.005)


def sidecars(root):
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            argv = open(f"/proc/{name}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"sidecar-entrypoint" and any(root.encode() in a for a in argv):
            found.append(int(name))
    return found


def session():
    os.environ["PYSPARK_PYTHON"] = sys.executable
    b = (
        SparkSession.builder.master("local-cluster[2,1,1024]")
        .appName("sidecar-lifecycle")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.executor.memory", "512m")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
    )
    if os.environ.get("SIDECAR_ENTRYPOINT"):
        b = b.config("spark.executorEnv.SIDECAR_ENTRYPOINT", os.environ["SIDECAR_ENTRYPOINT"])
    return b.getOrCreate()


def one_round(spark, fn, marks):
    """Cancels one job; returns (worker death -> logic end) per killed task."""
    for f in os.listdir(marks):
        os.unlink(os.path.join(marks, f))

    def recorded(batches):
        from pyspark import TaskContext

        c = TaskContext.get()
        with open(f"{marks}/worker.p{c.partitionId()}-a{c.attemptNumber()}", "w") as f:
            f.write(f"{os.getpid()}\n")
        yield from fn(batches)

    df = spark.range(0, 200, numPartitions=2)
    job = threading.Thread(target=lambda: _swallow(lambda: df.mapInArrow(recorded, "id long").collect()))
    job.start()
    while len([f for f in os.listdir(marks) if f.startswith("logic.")]) < 2:
        time.sleep(0.01)
    pairs = []
    for f in os.listdir(marks):
        if f.startswith("logic."):
            task = f[len("logic."):]
            worker = read_pid(f"{marks}/worker.{'-'.join(task.split('-')[:2])}")
            pairs.append((read_pid(f"{marks}/{f}"), worker))
    spark.sparkContext.cancelAllJobs()
    gone = {}
    while len(gone) < 2 * len(pairs):
        now = time.monotonic()
        for logic, worker in pairs:
            for p in (logic, worker):
                if p not in gone and not alive(p):
                    gone[p] = now
        time.sleep(0.002)
    job.join()
    return [gone[logic] - gone[worker] for logic, worker in pairs]


def _swallow(f):
    try:
        f()
    except Exception:  # noqa: BLE001 - the cancellation
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=12, help="cancelled jobs (two killed tasks each)")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="sidecar-lifecycle-")
    marks = tempfile.mkdtemp(prefix="sidecar-lifecycle-marks-")
    spark = session()
    spark.sparkContext.setLogLevel("ERROR")
    fn = sidecar_shim.map_in_arrow(
        command=["sh", "-c", f"echo $$ > {marks}/logic.$SIDECAR_TASK_ID; exec sleep 300"],
        input_format="csv",
        volume_root=root,
    )
    latencies = []
    for i in range(args.rounds):
        latencies += one_round(spark, fn, marks)
        print(f"round {i + 1}: worker death -> logic stopped {max(latencies[-2:]) * 1000:.0f} ms", flush=True)
    spark.stop()
    stopped = time.monotonic()
    while sidecars(root):
        time.sleep(0.005)
    stop_s = time.monotonic() - stopped
    report = {
        "cancels": len(latencies),
        "cancel_p50_ms": statistics.median(latencies) * 1000,
        "cancel_max_ms": max(latencies) * 1000,
        "stop_to_last_sidecar_gone_ms": stop_s * 1000,
    }
    print(
        f"{report['cancels']} killed tasks: worker death -> logic stopped p50 {report['cancel_p50_ms']:.0f} ms, "
        f"max {report['cancel_max_ms']:.0f} ms; spark.stop() -> last sidecar gone {report['stop_to_last_sidecar_gone_ms']:.0f} ms"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
