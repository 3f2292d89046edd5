"""PySpark through the sidecar: real local[2] Spark, real sidecar-entrypoint
processes, real user logic (awk, sed, a Python script), compared with the
same computation done by Spark alone."""

import os
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

import sidecar_shim
from conftest import LEASE_TIMEOUT, docker_image_present, sidecar_processes

ROWS = 2000
PARTITIONS = 4


@pytest.fixture(scope="module")
def df(spark):
    d = spark.range(0, ROWS, numPartitions=PARTITIONS).selectExpr(
        "id",
        "cast(id as double) * 1.5 as value",
        "concat('name-', cast(id % 97 as string)) as name",
    )
    assert d.rdd.getNumPartitions() == PARTITIONS
    return d


def rows(frame):
    return sorted(tuple(r) for r in frame.collect())


def shim(volume_root, **kw):
    kw.setdefault("lease_timeout", LEASE_TIMEOUT)
    return sidecar_shim.map_in_arrow(volume_root=volume_root, **kw)


# The logic, as a user would write it: it reads $SIDECAR_INPUT, writes $SIDECAR_OUTPUT.
AWK_LEN = (
    'awk -F, -v OFS=, \'NR == 1 { print $0, "name_len"; next } { print $0, length($3) }\' '
    '"$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'
)

PY_DOUBLE_PARQUET = textwrap.dedent(
    """
    import os, pyarrow.compute as pc, pyarrow.parquet as pq
    t = pq.read_table(os.environ["SIDECAR_INPUT"])
    t = t.append_column("doubled", pc.multiply(t["value"], 2.0))
    pq.write_table(t, os.environ["SIDECAR_OUTPUT"])
    """
)

# Streams: reads one IPC batch at a time from the input FIFO and writes
# each transformed batch to the output as soon as it has it.
PY_DOUBLE_STREAM = textwrap.dedent(
    """
    import os, pyarrow as pa, pyarrow.compute as pc
    with open(os.environ["SIDECAR_INPUT"], "rb") as src, open(os.environ["SIDECAR_OUTPUT"], "wb") as dst:
        reader = pa.ipc.open_stream(src)
        writer = None
        for b in reader:
            b = b.append_column("doubled", pc.multiply(b.column("value"), 2.0))
            if writer is None:
                writer = pa.ipc.new_stream(dst, b.schema)
            writer.write_batch(b)
        if writer is None:
            writer = pa.ipc.new_stream(dst, reader.schema.append(pa.field("doubled", pa.float64())))
        writer.close()
    """
)


def test_csv_awk_equals_spark(spark, df, volume_root):
    fn = shim(
        volume_root,
        command=["sh", "-c", AWK_LEN],
        input_format="csv",
        schema="id long, value double, name string, name_len int",
    )
    out = df.mapInArrow(fn, "id long, value double, name string, name_len int")
    expected = df.withColumn("name_len", F.length("name"))
    assert out.count() == ROWS
    assert rows(out) == rows(expected)


def test_csv_without_schema_returns_the_logics_types(spark, df, volume_root):
    # No schema=: the CSV comes back with inferred types (int64, float64,
    # utf8, int64), which is what Spark's "long, double, string, long" wants.
    fn = shim(volume_root, command=["sh", "-c", AWK_LEN], input_format="csv")
    out = df.mapInArrow(fn, "id long, value double, name string, name_len long")
    expected = df.withColumn("name_len", F.length("name").cast("long"))
    assert rows(out) == rows(expected)


def test_parquet_python_logic_equals_spark(spark, df, volume_root):
    fn = shim(
        volume_root,
        command=[sys.executable, "-c", PY_DOUBLE_PARQUET],
        input_format="parquet",
        output_format="parquet",
    )
    out = df.mapInArrow(fn, "id long, value double, name string, doubled double")
    expected = df.withColumn("doubled", F.col("value") * 2.0)
    assert rows(out) == rows(expected)


def test_stream_mode_arrows_equals_spark(spark, df, volume_root):
    fn = shim(
        volume_root,
        command=[sys.executable, "-c", PY_DOUBLE_STREAM],
        input_format="arrows",
        stream=True,
    )
    out = df.mapInArrow(fn, "id long, value double, name string, doubled double")
    expected = df.withColumn("doubled", F.col("value") * 2.0)
    assert rows(out) == rows(expected)


def test_jsonl_sed_equals_spark(spark, df, volume_root):
    # sed appends a field to every JSON line.
    fn = shim(
        volume_root,
        command=["sh", "-c", 'sed \'s/}$/,"tag":"seen"}/\' "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'],
        input_format="jsonl",
        schema="id long, value double, name string, tag string",
    )
    out = df.mapInArrow(fn, "id long, value double, name string, tag string")
    expected = df.withColumn("tag", F.lit("seen"))
    assert rows(out) == rows(expected)


def test_failing_command_fails_the_job_with_its_stderr(spark, df, volume_root):
    fn = shim(
        volume_root,
        command=["sh", "-c", 'echo "bad record near id 42: cannot geocode" >&2; exit 3'],
        input_format="csv",
    )
    with pytest.raises(Exception) as info:
        df.mapInArrow(fn, "id long").collect()
    text = str(info.value)
    assert "SidecarError" in text
    assert "bad record near id 42: cannot geocode" in text
    assert "exit code 3" in text


def test_schema_mismatch_names_the_column(spark, df, volume_root):
    fn = shim(
        volume_root,
        command=["sh", "-c", 'cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'],
        input_format="csv",
        schema="id long, geohash string",
    )
    with pytest.raises(Exception) as info:
        df.mapInArrow(fn, "id long, geohash string").collect()
    assert "geohash" in str(info.value)


def test_one_sidecar_per_executor_shared_by_its_workers(spark, df, volume_root):
    # local[2]: one executor, two Python workers running tasks at once.
    # Every task of this job reports the sidecar pid it was served by.
    fn = shim(
        volume_root,
        command=["sh", "-c", 'printf "pid\\n%s\\n" "$PPID" > "$SIDECAR_OUTPUT"'],
        input_format="csv",
    )
    many = spark.range(0, 4000, numPartitions=8)
    pids = {r.pid for r in many.mapInArrow(fn, "pid long").collect()}
    assert len(pids) == 1, f"tasks were served by several sidecars: {pids}"
    (pid,) = pids
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert os.path.basename(argv[0]) == b"sidecar-entrypoint"
    assert b"--exit-on-orphan" in argv


def test_timeout_fails_the_task(spark, volume_root):
    fn = shim(volume_root, command=["sh", "-c", "sleep 60"], input_format="csv", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(Exception) as info:
        spark.range(0, 10, numPartitions=1).mapInArrow(fn, "id long").collect()
    assert time.monotonic() - started < 45
    text = str(info.value)
    assert "SidecarError" in text
    assert "deadline" in text or "timed_out" in text or "timed out" in text


@pytest.mark.skipif(
    not docker_image_present("sidecar-foundry-dd:latest"),
    reason="image sidecar-foundry-dd:latest is absent (build it with examples/foundry-dd/build.sh)",
)
def test_docker_provider(spark, df, volume_root):
    fn = shim(
        volume_root,
        image="sidecar-foundry-dd:latest",
        command=["sh", "-c", AWK_LEN],
        input_format="csv",
        schema="id long, value double, name string, name_len int",
    )
    out = df.mapInArrow(fn, "id long, value double, name string, name_len int")
    expected = df.withColumn("name_len", F.length("name"))
    assert rows(out) == rows(expected)


LIFECYCLE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[2])
    from conftest import spark_builder, sidecar_processes
    import sidecar_shim

    root = sys.argv[1]
    spark = spark_builder("sidecar-shim-lifecycle").getOrCreate()
    fn = sidecar_shim.map_in_arrow(
        command=["sh", "-c", 'cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'],
        input_format="csv", volume_root=root, lease_timeout=float(sys.argv[3]),
    )
    n = spark.range(0, 1000, numPartitions=4).mapInArrow(fn, "id long").count()
    during = sidecar_processes(root)
    spark.stop()
    print(json.dumps({"rows": n, "during": during}), flush=True)
    # Stay alive (as a driver would after stop()) while the test watches.
    sys.stdin.read()
    """
)


def test_no_sidecar_left_after_spark_stop(volume_root, entrypoint, tmp_path):
    import json

    root = str(tmp_path / "lifecycle")
    os.makedirs(root)
    env = dict(os.environ, SIDECAR_ENTRYPOINT=entrypoint)
    proc = subprocess.Popen(
        [sys.executable, "-c", LIFECYCLE_SCRIPT, root, os.path.dirname(__file__), str(LEASE_TIMEOUT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        assert line, f"the Spark job failed (exit code {proc.poll()})"
        report = json.loads(line)
        assert report["rows"] == 1000
        assert len(report["during"]) == 1, f"expected one sidecar: {report['during']}"
        # spark.stop() ended the Python workers; the lease goes stale within
        # LEASE_TIMEOUT and the sidecar exits. Generous slack for a loaded box.
        deadline = time.monotonic() + LEASE_TIMEOUT + 30
        left = sidecar_processes(root)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = sidecar_processes(root)
        assert left == [], f"sidecar processes still running after spark.stop(): {left}"
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
