"""examples/any-language/executor.py, the executor written with nothing but
the documented files and JSON (standard library only, no shim), against a
real `sidecar-entrypoint --mode serve`: its output, its exit status, the
volume it leaves, and its pure-Python xxh3-64 against the sidecar's own
manifest checksums."""

import csv
import io
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO

EXAMPLE = REPO / "examples" / "any-language"
# The user logic: adds a column with each name's length (CSV in, CSV out).
AWK = 'awk -F, -v OFS=, \'NR == 1 { print $0, "name_len"; next } { print $0, length($2) }\' "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'


class Serve:
    """A serve-mode sidecar on a fresh volume."""

    def __init__(self, entrypoint, volume, logic, parallel=2):
        self.volume = volume
        self.log = open(f"{volume}.log", "wb")
        self.proc = subprocess.Popen(
            [entrypoint, "--mode", "serve", "--volume", str(volume), "--parallel", str(parallel),
             "--grace", "2s", "--", "sh", "-c", logic],
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def executor(self, *args, timeout=120):
        return subprocess.run(
            [sys.executable, str(EXAMPLE / "executor.py"), "--volume", str(self.volume), *args],
            capture_output=True, text=True, timeout=timeout,
        )

    def ready(self, limit=30):
        deadline = time.monotonic() + limit
        while not (self.volume / "sidecar" / "ready").exists():
            assert time.monotonic() < deadline, "the sidecar did not become ready"
            time.sleep(0.02)

    def wait(self, limit=30):
        return self.proc.wait(timeout=limit)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture()
def serve(entrypoint, tmp_path):
    made = []

    def start(logic, **kw):
        vol = tmp_path / f"vol{len(made)}"
        vol.mkdir()
        s = Serve(entrypoint, vol, logic, **kw)
        made.append(s)
        return s

    yield start
    for s in made:
        s.stop()


@pytest.fixture()
def trips(tmp_path):
    path = tmp_path / "trips.csv"
    rows = [["id", "name", "value"]] + [[str(i), f"name-{'x' * (i % 13)}", f"{i * 0.5}"] for i in range(3000)]
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    return path


def left_in(volume):
    """What a finished run leaves under tasks/ (nothing, when all is closed)."""
    return sorted(os.listdir(volume / "tasks"))


def test_many_concurrent_tasks_through_serve(serve, trips, tmp_path):
    s = serve(AWK, parallel=2)
    out = tmp_path / "out.csv"
    started = time.monotonic()
    r = s.executor("--input", str(trips), "--output", str(out), "--tasks", "12", "--shutdown")
    assert r.returncode == 0, r.stderr
    print(f"FIGURE any_language_12_tasks_ms={(time.monotonic() - started) * 1000:.0f}")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["tasks"] == 12
    # Every row came back, in order, with the logic's extra column.
    with open(trips) as f:
        want = [row + [str(len(row[1]))] for row in list(csv.reader(f))[1:]]
    got = list(csv.reader(io.StringIO(out.read_text())))
    assert got[0] == ["id", "name", "value", "name_len"]
    assert got[1:] == want
    assert r.stderr.count(" succeeded in ") == 12
    # Closed and gone; the root close_flag made the sidecar drain and exit 0.
    assert left_in(s.volume) == []
    assert s.wait() == 0


def test_a_failing_task_fails_the_executor_with_its_outcome(serve, trips, tmp_path):
    s = serve('case "$SIDECAR_TASK_ID" in p2-*) echo "bad record near $SIDECAR_TASK_ID" >&2; exit 3;; esac; '
              'cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"')
    r = s.executor("--input", str(trips), "--output", str(tmp_path / "out.csv"), "--tasks", "4", "--shutdown")
    assert r.returncode == 1, r.stderr
    assert "failed, exit code 3" in r.stderr, r.stderr
    assert "bad record near p2-a0-" in r.stderr, r.stderr
    assert left_in(s.volume) == []
    assert s.wait() == 0


def test_the_deadline_is_kept(serve, trips, tmp_path):
    s = serve("sleep 60")
    started = time.monotonic()
    r = s.executor("--input", str(trips), "--output", str(tmp_path / "out.csv"), "--tasks", "2",
                   "--timeout", "1", "--shutdown")
    assert time.monotonic() - started < 30
    assert r.returncode == 1, r.stderr
    assert "timed_out" in r.stderr, r.stderr
    assert left_in(s.volume) == []
    assert s.wait() == 0


def test_a_dead_sidecar_is_noticed_by_its_heartbeat(serve, trips, tmp_path):
    s = serve("sleep 8")
    s.ready()
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLE / "executor.py"), "--volume", str(s.volume), "--input", str(trips),
         "--output", str(tmp_path / "out.csv"), "--tasks", "2", "--stale-after", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    time.sleep(0.5)
    s.proc.kill()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert "sidecar unresponsive" in err, err


def test_pure_python_xxh3_matches_the_sidecars_manifest(serve, tmp_path):
    # One output per size class of XXH3-64 (0, 1-3, 4-8, 9-16, 17-128,
    # 129-240, longer, across the 1024-byte block boundary).
    sizes = [0, 1, 3, 4, 8, 9, 16, 17, 100, 128, 129, 200, 240, 241, 1023, 1024, 1025, 2048, 4097, 70000]
    script = " ".join(f'head -c {n} "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT_DIR/{n}.bin";' for n in sizes)
    s = serve(script)
    s.ready()
    vol = s.volume
    task = vol / "tasks" / "xxh"
    (task / "input").mkdir(parents=True)
    (task / "input" / "data.bin").write_bytes(bytes((i * 131 + 7) % 251 for i in range(70000)))
    (task / "start_flag").touch()
    for _ in range(600):
        if (task / "done_flag").exists():
            break
        time.sleep(0.05)
    outcome = json.loads((task / "done_flag").read_text())
    assert outcome["status"] == "succeeded", outcome
    sys.path.insert(0, str(EXAMPLE))
    try:
        import xxh3
    finally:
        sys.path.remove(str(EXAMPLE))
    listed = {o["path"]: o for o in outcome["outputs"]}
    assert sorted(listed) == sorted(f"{n}.bin" for n in sizes)
    for n in sizes:
        data = (task / "output" / f"{n}.bin").read_bytes()
        assert len(data) == n == listed[f"{n}.bin"]["bytes"]
        assert xxh3.checksum(data) == listed[f"{n}.bin"]["checksum"], f"{n} bytes"
    (task / "close_flag").touch()
