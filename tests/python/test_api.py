"""The sidecar_shim API without Spark: argument checks, task ids, the
process provider driven directly from Python, errors and early stops."""

import os
import pickle
import sys
import time

import pyarrow as pa
import pytest

import sidecar_shim
from conftest import LEASE_TIMEOUT, sidecar_processes

CAT = ["sh", "-c", 'cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"']


def batches(n_batches=3, rows=500):
    out = []
    for b in range(n_batches):
        ids = list(range(b * rows, (b + 1) * rows))
        out.append(
            pa.record_batch(
                {
                    "id": pa.array(ids, pa.int64()),
                    "value": pa.array([i * 0.5 for i in ids], pa.float64()),
                    "name": pa.array([f"n{i:05d}" for i in ids], pa.string()),
                }
            )
        )
    return out


def table(bs):
    return pa.Table.from_batches(list(bs))


def shim(root, **kw):
    kw.setdefault("lease_timeout", LEASE_TIMEOUT)
    return sidecar_shim.map_in_arrow(volume_root=root, **kw)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one of"),
        ({"command": ["true"], "volume": "/tmp/x"}, "exactly one of"),
        ({"image": "x:1", "volume": "/tmp/x"}, "exactly one of"),
        ({"command": "cat"}, "list of arguments"),
        ({"command": ["true"], "input_format": "xml"}, "input_format='xml'"),
        ({"command": ["true"], "output_format": "tsv"}, "output_format='tsv'"),
        ({"command": ["true"], "timeout": 0}, "timeout="),
        ({"command": ["true"], "parallel": 0}, "parallel="),
        ({"volume": "/tmp/x", "parallel": 2}, "attach"),
    ],
)
def test_bad_arguments_are_refused_on_the_driver(kwargs, message):
    with pytest.raises((ValueError, TypeError)) as info:
        sidecar_shim.map_in_arrow(**kwargs)
    assert message in str(info.value)


def test_sidecar_error_is_a_runtime_error():
    assert issubclass(sidecar_shim.SidecarError, RuntimeError)


def test_task_ids_carry_partition_and_attempt():
    assert sidecar_shim.task_id(3, 1, "s2t9rab12") == "p3-a1-s2t9rab12"
    # Only [A-Za-z0-9] of the nonce is kept.
    assert sidecar_shim.task_id(0, 0, "a-b/c") == "p0-a0-abc"


def test_find_entrypoint_names_a_missing_explicit_path(tmp_path):
    missing = str(tmp_path / "nope" / "sidecar-entrypoint")
    with pytest.raises(sidecar_shim.SidecarError) as info:
        sidecar_shim.find_entrypoint(missing)
    assert missing in str(info.value)


def test_find_entrypoint_honours_the_environment(entrypoint, monkeypatch):
    monkeypatch.setenv("SIDECAR_ENTRYPOINT", entrypoint)
    assert sidecar_shim.find_entrypoint() == os.path.abspath(entrypoint)


def test_executor_key_outside_spark_is_this_process():
    key = sidecar_shim.executor_key()
    assert key.startswith(f"py{os.getpid()}-")
    assert key == sidecar_shim.executor_key()


def test_function_pickles_with_its_config(tmp_path):
    fn = shim(str(tmp_path), command=CAT, input_format="parquet", schema=pa.schema([("id", pa.int64())]))
    back = pickle.loads(pickle.dumps(fn))
    assert back.config == fn.config
    assert back.config["schema"] == pa.schema([("id", pa.int64())])


@pytest.mark.parametrize("fmt, stream", [("arrows", False), ("parquet", False), ("arrows", True), ("csv", True)])
def test_identity_through_the_process_provider(entrypoint, tmp_path, fmt, stream):
    bs = batches()
    fn = shim(str(tmp_path), command=CAT, input_format=fmt, stream=stream, schema=bs[0].schema)
    out = list(fn(iter(bs)))
    assert all(isinstance(b, pa.RecordBatch) for b in out)
    assert table(out).equals(table(bs))


def test_functions_with_one_config_share_a_sidecar(entrypoint, tmp_path):
    root = str(tmp_path)
    a = shim(root, command=CAT)
    b = shim(root, command=CAT)
    list(a(iter(batches(1))))
    list(b(iter(batches(1))))
    assert len(os.listdir(root)) == 1
    assert len(sidecar_processes(root)) == 1
    c = shim(root, command=CAT, parallel=1)  # another sidecar config
    list(c(iter(batches(1))))
    assert len(os.listdir(root)) == 2
    assert len(sidecar_processes(root)) == 2


def test_empty_partition_runs_no_task(entrypoint, tmp_path):
    root = str(tmp_path / "root")
    fn = shim(root, command=["sh", "-c", "exit 9"])
    assert list(fn(iter([]))) == []
    assert not os.path.exists(root)


def test_failure_raises_sidecar_error_with_exit_code_and_stderr(entrypoint, tmp_path):
    fn = shim(str(tmp_path), command=["sh", "-c", 'echo "no such zone: Atlantis" >&2; exit 7'])
    with pytest.raises(sidecar_shim.SidecarError) as info:
        list(fn(iter(batches(1))))
    text = str(info.value)
    assert "exit code 7" in text
    assert "no such zone: Atlantis" in text
    assert "p0-a0-" in text  # the task id (no TaskContext: partition 0, attempt 0)


def test_missing_output_column_is_named(entrypoint, tmp_path):
    schema = pa.schema([("id", pa.int64()), ("zone_id", pa.int32())])
    fn = shim(str(tmp_path), command=CAT, input_format="parquet", schema=schema)
    with pytest.raises(sidecar_shim.SidecarError) as info:
        list(fn(iter(batches(1))))
    assert "zone_id" in str(info.value)


def test_a_consumer_that_stops_early_does_not_hang(entrypoint, tmp_path):
    fn = shim(str(tmp_path), command=CAT, stream=True)
    bs = batches(40, 2000)
    gen = fn(iter(bs))
    first = next(gen)
    assert first.num_rows > 0
    started = time.monotonic()
    gen.close()
    # The sidecar is still usable for the next task.
    out = list(fn(iter(batches(2))))
    assert table(out).num_rows == 1000
    assert time.monotonic() - started < 60


def test_input_iterator_error_fails_the_task(entrypoint, tmp_path):
    def broken():
        yield batches(1)[0]
        raise ValueError("upstream exploded")

    fn = shim(str(tmp_path), command=CAT)
    with pytest.raises(Exception) as info:
        list(fn(broken()))
    assert "upstream exploded" in str(info.value)


def test_shutdown_all_releases_started_sidecars(entrypoint, tmp_path):
    root = str(tmp_path)
    fn = shim(root, command=CAT, parallel=3)
    list(fn(iter(batches(1))))
    assert len(sidecar_processes(root)) == 1
    sidecar_shim.shutdown_all()
    deadline = time.monotonic() + LEASE_TIMEOUT + 30
    while sidecar_processes(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sidecar_processes(root) == []


_DEAD_EXECUTOR = """
import os, signal, sys
import pyarrow as pa
import sidecar_shim
fn = sidecar_shim.map_in_arrow(volume_root=sys.argv[1], command=%r, lease_timeout=%r)
list(fn(iter([pa.record_batch({"id": pa.array([1], pa.int64())})])))
print(sorted(os.listdir(sys.argv[1]))[0], flush=True)
signal.pause()
"""


def test_volumes_of_dead_executors_are_collected(entrypoint, tmp_path):
    """An executor that dies (SIGKILL, as Spark kills a lost executor) leaves
    its volume; its sidecar exits on its own, and the next executor process
    on the same root removes the volume. Volumes that nothing marks as a
    launched sidecar's, and live ones, are left alone."""
    import signal
    import subprocess

    root = str(tmp_path)
    dead = subprocess.Popen(
        [sys.executable, "-c", _DEAD_EXECUTOR % (CAT, LEASE_TIMEOUT), root],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        name = dead.stdout.readline().strip()
    finally:
        dead.send_signal(signal.SIGKILL)
        dead.wait()
    assert name.startswith("py"), f"the dead executor printed {name!r}"
    dead_volume = os.path.join(root, name)
    deadline = time.monotonic() + 10
    while sidecar_processes(dead_volume) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not sidecar_processes(dead_volume), "the dead executor's sidecar still runs"
    unmarked = os.path.join(root, "jvm999999999-12345-aaaaaaaaaaaa")
    foreign = os.path.join(root, "not-a-volume")
    for d in (unmarked, foreign):
        os.makedirs(os.path.join(d, "sidecar"))

    list(shim(root, command=CAT, parallel=2)(iter(batches(1))))

    assert not os.path.exists(dead_volume)
    assert os.path.exists(unmarked)  # no users lock: not known to be a launched sidecar's
    assert os.path.exists(foreign)
    mine = [n for n in os.listdir(root) if n.startswith(("py", "jvm")) and n != os.path.basename(unmarked)]
    assert len(mine) == 1, mine  # this process's own volume, in use


def test_a_dead_sidecar_is_replaced_for_the_next_task(entrypoint, tmp_path):
    import signal

    root = str(tmp_path)
    fn = shim(root, command=CAT, parallel=4)
    list(fn(iter(batches(1))))
    (first,) = sidecar_processes(root)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while first in sidecar_processes(root) and time.monotonic() < deadline:
        time.sleep(0.05)
    # The task that finds it gone may fail, naming the sidecar ...
    try:
        list(fn(iter(batches(1))))
    except sidecar_shim.SidecarError as e:
        assert "sidecar" in str(e)
    # ... but the task after it gets a new sidecar.
    out = list(fn(iter(batches(2))))
    assert table(out).num_rows == 1000
    (second,) = sidecar_processes(root)
    assert second != first
