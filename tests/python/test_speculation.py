"""Speculation on a real cluster: the loser's logic is stopped in its
sidecar, the winner's output is the one in the result.

Spark places a speculative copy of a task only on a host where the task has
no attempt yet, so this runs on a standalone cluster whose two workers are
on two hosts (the `standalone_cluster` fixture), not on `local-cluster`.
"""

import time

import pytest

import sidecar_shim
from conftest import BOUND_S, SLACK_S, _session, _stop_active, pid_of, recording_worker, task_dirs, when_gone

pytestmark = pytest.mark.cluster


def test_a_speculative_loser_is_stopped_and_the_winner_counted_once(standalone_cluster, volume_root, marks):
    spark = _session(
        standalone_cluster,
        "sidecar-shim-speculation",
        {
            "spark.speculation": "true",
            "spark.speculation.interval": "100ms",
            "spark.speculation.multiplier": "2",
            "spark.speculation.quantile": "0.5",
            "spark.speculation.minTaskRuntime": "500ms",
        },
    )
    try:
        # The first attempt of partition 0 is deliberately slow: its copy on
        # the other host wins, and Spark kills it.
        logic = (
            f'case "$SIDECAR_TASK_ID" in p0-a0-*) echo $$ > {marks}/loser; exec sleep 120;; esac; '
            'a=$(echo "$SIDECAR_TASK_ID" | cut -d- -f2 | tr -d a); '
            'awk -F, -v OFS=, -v a="$a" \'NR == 1 { print $0, "attempt"; next } { print $0, a }\' '
            '"$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'
        )
        fn = sidecar_shim.map_in_arrow(
            command=["sh", "-c", logic], input_format="csv", schema="id long, attempt int", volume_root=volume_root
        )
        df = spark.range(0, 400, numPartitions=4)
        rows = df.mapInArrow(recording_worker(fn, marks), "id long, attempt int").collect()
        ids = sorted(r.id for r in rows)
        assert ids == list(range(400)), "rows lost or counted twice"
        assert {r.attempt for r in rows if r.id < 100} == {1}, "partition 0 came from its slow first attempt"
        loser = pid_of(marks / "loser")
        worker = pid_of(marks / "worker.p0-a0")
        gone = when_gone([worker, loser], timeout=60)
        assert worker in gone, "Spark did not kill the loser's Python worker"
        assert loser in gone, "the loser's logic outlived it"
        latency = gone[loser] - gone[worker]
        print(f"FIGURE speculative_loser_stop_s={latency:.3f}")
        assert latency <= BOUND_S + SLACK_S, f"the loser's logic stopped {latency:.2f}s after its worker"
        deadline = time.monotonic() + BOUND_S + SLACK_S
        while task_dirs(volume_root) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert task_dirs(volume_root) == [], "the loser's task directory was left"
    finally:
        _stop_active()
