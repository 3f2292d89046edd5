"""Foundry-shaped transforms through `sidecar_shim.foundry`, as real Spark
jobs on a two-executor cluster (local-cluster[2,1,1024]): the `dd` example
with local `sidecar-entrypoint` processes and with the documented image
under Docker, a failing command failing the job with its stderr, and the
same job through the documented helpers (fixed sleeps, 1 s polling) as the
baseline of the per-partition wall time.

The helpers' own behaviour without Spark (unknown status from an empty
done_flag, the timeout) is tested at the end, against a stand-in of
Foundry's original entrypoint.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

import sidecar_shim
from sidecar_shim import foundry
from conftest import FOUNDRY_IMAGE, require_docker, sidecar_processes

HERE = os.path.dirname(os.path.abspath(__file__))
PARTITIONS = 4
# Foundry's example command, for a local sidecar-entrypoint (-c, run by /bin/sh).
DD = 'dd if="$SHARED_DIR/infile.csv" of="$SHARED_DIR/outfile.csv"'
OUTPUT_FNAMES = ["start_flag", "outfile.csv", "logfile", "done_flag"]


@pytest.fixture(scope="module")
def cluster(cluster_spark):
    # The baseline helpers and the stand-ins for transforms.api are plain
    # modules next to this file: ship them to the executors.
    for name in ("foundry_documented_utils.py", "foundry_api_local.py"):
        cluster_spark.sparkContext.addPyFile(os.path.join(HERE, name))
    # A job of the same shape first (SQL planning, the executors' Python
    # workers and their imports), so that the jobs below are timed warm.
    warm = cluster_spark.createDataFrame([(i,) for i in range(4)], "ExecutionID int").repartition(4)
    warm.rdd.map(lambda _: (__import__("sidecar_shim.foundry"), __import__("foundry_documented_utils")) and 0).collect()
    return cluster_spark


@pytest.fixture()
def dataset(tmp_path):
    """A transform's input (one CSV, as in the dd example) and output."""
    import foundry_api_local as api

    src = tmp_path / "source"
    src.mkdir()
    rows = ["id,name,value"] + [f"{i},name-{i % 7},{i * 1.5}" for i in range(2000)]
    (src / "infile.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "output"
    out.mkdir()
    return api.TransformInput(str(src)), api.TransformOutput(str(out)), (src / "infile.csv").read_bytes()


def dd_transform(utils, decorate, partitions):
    """Foundry's dd example transform, written once against a helpers
    module: `from <utils> import ...` is the only line that differs between
    the documented helpers and sidecar_shim.foundry."""

    def compute(ctx, source, output):
        @decorate
        def user_defined_function(row):
            utils.copy_files_to_shared_directory(source)
            utils.copy_start_flag()
            utils.wait_for_done_flag()
            utils.copy_output_files_with_prefix(output, OUTPUT_FNAMES, row.ExecutionID)
            utils.copy_close_flag()
            return (row.ExecutionID, "success", foundry.VOLUME_PATH)

        def timed(row):
            # The partition's wall time, sidecar start and stop included.
            started = time.monotonic()
            result = user_defined_function(row)
            return result + (time.monotonic() - started, sidecar_shim.executor_key())

        df = ctx.spark_session.createDataFrame([(i,) for i in range(partitions)], "ExecutionID int")
        return df.repartition(partitions).rdd.map(timed).collect()

    return compute


def check_outputs(output, expected, ids, done_status="succeeded"):
    root = output.root
    for i in ids:
        with open(os.path.join(root, f"{i}_outfile.csv"), "rb") as f:
            assert f.read() == expected, f"partition {i}: outfile.csv differs from infile.csv"
        with open(os.path.join(root, f"{i}_logfile")) as f:
            assert "records out" in f.read()
        with open(os.path.join(root, f"{i}_done_flag")) as f:
            assert json.load(f)["status"] == done_status


def figures(name, results):
    walls = sorted(r[3] for r in results)
    for r in sorted(results):
        print(f"FIGURE {name}_partition{r[0]}_wall_ms={r[3] * 1000:.0f}")
    print(f"FIGURE {name}_mean_partition_wall_ms={sum(walls) / len(walls) * 1000:.0f}")
    return sum(walls) / len(walls)


def no_sidecar_left(root):
    deadline = time.monotonic() + 10
    while sidecar_processes(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sidecar_processes(root) == [], "sidecar-entrypoint processes outlived their tasks"


def test_dd_job_local_sidecars_vs_the_documented_helpers(cluster, dataset, tmp_path):
    import foundry_api_local as api
    import foundry_documented_utils as documented

    source, output, expected = dataset
    root = str(tmp_path / "volumes")
    os.mkdir(root)
    decorate = foundry.sidecar(command=DD, volume_root=root)
    ctx = api.TransformContext(cluster)

    started = time.monotonic()
    ours = dd_transform(foundry, decorate, PARTITIONS)(ctx, source, output)
    ours_job = time.monotonic() - started
    assert sorted(r[0] for r in ours) == list(range(PARTITIONS))
    check_outputs(output, expected, range(PARTITIONS))
    # Each partition ran on a volume of its executor, under the executor's key.
    executors = {r[4] for r in ours}
    assert len(executors) == 2, f"the job did not use both executors: {executors}"
    for _, _, volume, _, key in ours:
        assert volume.startswith(os.path.join(root, f"{key}-foundry")), (volume, key)
    no_sidecar_left(root)

    baseline_out = api.TransformOutput(str(tmp_path / "baseline-output"))
    started = time.monotonic()
    baseline = dd_transform(documented, decorate, PARTITIONS)(ctx, source, baseline_out)
    baseline_job = time.monotonic() - started
    check_outputs(baseline_out, expected, range(PARTITIONS))
    no_sidecar_left(root)

    # No assertion on time: the figures are printed for the report.
    mean_ours = figures("foundry_module", ours)
    mean_base = figures("documented_helpers", baseline)
    print(f"FIGURE foundry_module_job_s={ours_job:.2f}")
    print(f"FIGURE documented_helpers_job_s={baseline_job:.2f}")
    print(f"FIGURE partition_speedup={mean_base / mean_ours:.1f}")


def test_a_failing_command_fails_the_job_with_its_stderr(cluster, dataset, tmp_path):
    import foundry_api_local as api

    source, output, _ = dataset
    root = str(tmp_path / "volumes")
    os.mkdir(root)
    # Reads a file that was never staged: dd fails, as in Foundry's example
    # when infile.csv is missing.
    decorate = foundry.sidecar(command='dd if="$SHARED_DIR/missing.csv" of="$SHARED_DIR/outfile.csv"',
                               volume_root=root)
    with pytest.raises(Exception) as info:
        dd_transform(foundry, decorate, 2)(api.TransformContext(cluster), source, output)
    text = str(info.value)
    assert "SidecarRunError" in text, text[-2000:]
    assert "status failed, exit code 1" in text, text[-2000:]
    assert "missing.csv" in text and "No such file or directory" in text, text[-2000:]
    no_sidecar_left(root)


def test_decorator_on_the_transform_and_a_hand_written_job(cluster, dataset, tmp_path):
    # Where Foundry's decorator goes: on the transform. The job is written
    # by hand (df.repartition(n).rdd.map(udf)); the helpers start each
    # executor's sidecar at copy_start_flag and stop it at copy_close_flag.
    import foundry_api_local as api

    source, output, expected = dataset
    root = str(tmp_path / "volumes")
    os.mkdir(root)

    @foundry.sidecar(command=DD, volume_root=root)
    def compute(ctx, source, output):
        return dd_transform(foundry, lambda f: f, PARTITIONS)(ctx, source, output)

    results = compute(api.TransformContext(cluster), source, output)
    assert sorted(r[0] for r in results) == list(range(PARTITIONS))
    check_outputs(output, expected, range(PARTITIONS))
    no_sidecar_left(root)


def containers_left(label=foundry._CONTAINER_LABEL):
    r = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={label}"],
                       capture_output=True, text=True, check=True)
    return r.stdout.split()


def test_the_documented_dd_image_under_docker(cluster, dataset, tmp_path):
    require_docker()
    import foundry_api_local as api

    source, output, expected = dataset
    root = str(tmp_path / "volumes")
    os.mkdir(root)

    # Exactly Foundry's shape: the decorator on the transform, the image's
    # own shell-form ENTRYPOINT, launch_udf for one task per row.
    @foundry.sidecar(image=FOUNDRY_IMAGE.split(":")[0], tag="latest", volumes=[foundry.Volume("shared")],
                     volume_root=root)
    def compute(ctx, source, output):
        def user_defined_function(row):
            foundry.copy_files_to_shared_directory(source)
            foundry.copy_start_flag()
            foundry.wait_for_done_flag()
            foundry.copy_output_files_with_prefix(output, OUTPUT_FNAMES, row.ExecutionID)
            foundry.copy_close_flag()
            return (row.ExecutionID, "success")

        return foundry.launch_udf(ctx, user_defined_function, 2)

    assert sorted(compute(api.TransformContext(cluster), source, output)) == [(0, "success"), (1, "success")]
    check_outputs(output, expected, range(2))
    assert containers_left() == []

    # Without infile.csv dd fails: the job fails with dd's own words.
    @foundry.sidecar(image=FOUNDRY_IMAGE, volume_root=root)
    def failing(ctx):
        def user_defined_function(row):
            foundry.copy_start_flag()
            foundry.wait_for_done_flag()
            return row.ExecutionID

        return foundry.launch_udf_once(ctx, user_defined_function)

    with pytest.raises(Exception) as info:
        failing(api.TransformContext(cluster))
    text = str(info.value)
    assert "status failed, exit code 1" in text, text[-2000:]
    assert "can't open" in text and "infile.csv" in text, text[-2000:]
    assert containers_left() == []


# ---------------------------------------------------------------------------
# Without Spark: the helpers against Foundry's original entrypoint.

# A stand-in of Foundry's example entrypoint.py: polls for start_flag, runs
# the command, writes an *empty* done_flag whatever happened, waits for
# close_flag. `--hang` never writes done_flag.
ORIGINAL_ENTRYPOINT = textwrap.dedent(
    """
    import os, subprocess, sys, time
    vol, cmd, hang = sys.argv[1], sys.argv[2], len(sys.argv) > 3
    while not os.path.exists(os.path.join(vol, "start_flag")):
        time.sleep(0.05)
    with open(os.path.join(vol, "logfile"), "a") as log:
        subprocess.run(cmd, shell=True, cwd=vol, stdout=log, stderr=subprocess.STDOUT)
    if hang:
        time.sleep(60)
    open(os.path.join(vol, "done_flag"), "w").close()
    while not os.path.exists(os.path.join(vol, "close_flag")):
        time.sleep(0.05)
    """
)


@pytest.fixture()
def original(tmp_path, monkeypatch):
    """Runs the stand-in on a volume named by $SHARED_DIR (as in Foundry)."""
    vol = tmp_path / "shared"
    vol.mkdir()
    monkeypatch.setenv("SHARED_DIR", str(vol))
    procs = []

    def start(cmd, hang=False):
        argv = [sys.executable, "-c", ORIGINAL_ENTRYPOINT, str(vol), cmd] + (["hang"] if hang else [])
        procs.append(subprocess.Popen(argv))
        return str(vol)

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_an_empty_done_flag_means_status_unknown(original, tmp_path, capfd):
    vol = original("cp infile.csv outfile.csv")
    assert foundry.VOLUME_PATH == vol
    src = tmp_path / "in"
    src.mkdir()
    (src / "infile.csv").write_text("a,b\n1,2\n")
    assert foundry.copy_files_to_shared_directory(str(src)) == ["infile.csv"]
    foundry.copy_start_flag()
    assert foundry.wait_for_done_flag() == {"status": "unknown"}
    assert "status unknown" in capfd.readouterr().err
    out = tmp_path / "out"
    assert foundry.copy_output_files(str(out), ["outfile.csv", "logfile"]) == ["outfile.csv", "logfile"]
    assert (out / "outfile.csv").read_text() == "a,b\n1,2\n"
    foundry.copy_close_flag()


def test_no_done_flag_within_max_run_minutes_raises(original, monkeypatch):
    vol = original("echo 'stuck reading the input'", hang=True)
    monkeypatch.setattr(foundry, "MAX_RUN_MINUTES", 0.02)  # 1.2 s
    foundry.copy_start_flag()
    started = time.monotonic()
    with pytest.raises(foundry.SidecarRunError) as info:
        foundry.wait_for_done_flag()
    assert time.monotonic() - started < 10
    e = info.value
    assert e.status == "timed_out"
    assert "MAX_RUN_MINUTES" in str(e) and "stuck reading the input" in str(e), str(e)
    assert vol in str(e)


def test_wait_without_a_start_flag_is_an_error(original):
    original("true")
    with pytest.raises(sidecar_shim.SidecarError, match="copy_start_flag"):
        foundry.wait_for_done_flag()


def test_a_link_in_the_volume_is_not_followed(original, tmp_path):
    vol = original("ln -s /etc/passwd outfile.csv")
    foundry.copy_start_flag()
    foundry.wait_for_done_flag()
    with pytest.raises(sidecar_shim.SidecarError, match="symbolic link"):
        foundry.copy_output_files(str(tmp_path / "out"), ["outfile.csv"])
    assert os.path.islink(os.path.join(vol, "outfile.csv"))


def test_decorator_arguments_are_checked():
    with pytest.raises(ValueError, match="exactly one of"):
        foundry.sidecar()
    with pytest.raises(ValueError, match="exactly one of"):
        foundry.sidecar(image="x", command="y")
    with pytest.raises(ValueError, match="numeric"):
        foundry.sidecar(image="x", user="sidecar")
    with pytest.raises(ValueError, match="volume name"):
        foundry.Volume("../etc")
