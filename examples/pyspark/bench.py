#!/usr/bin/env python3
"""What the sidecar costs inside a PySpark job.

    python3 examples/pyspark/bench.py                    # 10 million rows, local[2], 3 runs each
    python3 examples/pyspark/bench.py --rows 1000000 --runs 3
    python3 examples/pyspark/bench.py --master 'local-cluster[2,1,1024]'   # two executor JVMs

The data: `--rows` rows of (id long, value double, s string of 16
characters), generated once and cached in Spark's memory in `--partitions`
partitions, so every measurement reads the same in-memory data. Each case
is run once to warm up (JIT, Python workers, the sidecar itself), then the
cases are run round-robin `--runs` times (so a change of load on the machine
hits all of them alike); the median wall time is reported, with rows/s and
the ratio to the identity mapInArrow.

Cases:
  identity mapInArrow         df.mapInArrow(lambda it: it, schema): Spark's own Arrow path, the floor
  sidecar file (arrows)       the same through the sidecar, input staged as a file, `cat` as the logic
  sidecar stream (arrows)     the same with FIFOs (`--stream`): the logic runs while data flows
  rdd.pipe('cat')             Spark's built-in external-process baseline (rows as text lines)

Every case writes to the `noop` sink (or counts, for rdd.pipe), so the whole
output is produced and nothing else is measured.
"""

import argparse
import json
import os
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--runs", type=int, default=3, help="timed runs per case (after one warm-up)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--master", default="local[2]",
                    help="local[2], or local-cluster[2,1,1024] for two executor JVMs (separate processes)")
    ap.add_argument("--cases", default="identity,file,stream,pipe",
                    help="comma-separated subset of identity,file,stream,pipe")
    ap.add_argument("--driver-memory", default="4g")
    args = ap.parse_args()

    from pyspark import StorageLevel
    from pyspark.sql import SparkSession

    import sidecar_shim

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # The sidecar's per-task log lines would interleave with the table
    # (the executors inherit the driver's environment in local mode).
    os.environ.setdefault("SIDECAR_LOG", "warn")
    spark = (
        SparkSession.builder.master(args.master)
        .appName("sidecar-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.memory", args.driver_memory)
        .config("spark.sql.shuffle.partitions", str(args.partitions))
        # A local cluster's executors connect back to the driver: loopback.
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")

    schema = "id long, value double, s string"
    df = (
        spark.range(0, args.rows, numPartitions=args.partitions)
        .selectExpr("id", "rand(7) as value", "substr(sha2(cast(id as string), 256), 1, 16) as s")
        .persist(StorageLevel.MEMORY_ONLY)
    )
    t0 = time.monotonic()
    n = df.count()
    print(f"data: {n} rows in {args.partitions} partitions, cached in {time.monotonic() - t0:.1f}s", flush=True)

    cat = ["sh", "-c", 'cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"']
    file_fn = sidecar_shim.map_in_arrow(command=cat, input_format="arrows")
    stream_fn = sidecar_shim.map_in_arrow(command=cat, input_format="arrows", stream=True)

    def identity(it):
        return it

    cases = {
        "identity": ("identity mapInArrow", lambda: df.mapInArrow(identity, schema).write.format("noop").mode("overwrite").save()),
        "file": ("sidecar file (arrows)", lambda: df.mapInArrow(file_fn, schema).write.format("noop").mode("overwrite").save()),
        "stream": ("sidecar stream (arrows)", lambda: df.mapInArrow(stream_fn, schema).write.format("noop").mode("overwrite").save()),
        "pipe": ("rdd.pipe('cat')", lambda: df.rdd.map(lambda r: f"{r[0]},{r[1]!r},{r[2]}").pipe("cat").count()),
    }
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    for c in chosen:
        if c not in cases:
            ap.error(f"unknown case {c!r}; choose from {', '.join(cases)}")

    for key in chosen:
        cases[key][1]()  # warm-up: JIT, Python workers, the sidecar started
    # Round-robin, so that a load change on the machine hits every case alike.
    times = {key: [] for key in chosen}
    for r in range(args.runs):
        for key in chosen:
            t = time.monotonic()
            cases[key][1]()
            times[key].append(time.monotonic() - t)
        print(f"  run {r + 1}/{args.runs}: " + ", ".join(f"{k} {times[k][-1]:.2f}s" for k in chosen), flush=True)
    results = {}
    for key in chosen:
        med = statistics.median(times[key])
        results[key] = {"label": cases[key][0], "median_s": med, "runs_s": times[key], "rows_per_s": n / med}

    base = results.get("identity", {}).get("median_s")
    print()
    print(f"{'case':<26} {'median s':>9} {'rows/s':>14} {'vs identity':>12}")
    for key in chosen:
        r = results[key]
        ratio = f"{r['median_s'] / base:.2f}x" if base else "-"
        r["vs_identity"] = r["median_s"] / base if base else None
        print(f"{r['label']:<26} {r['median_s']:>9.2f} {r['rows_per_s']:>14,.0f} {ratio:>12}")
    print(json.dumps({"rows": n, "partitions": args.partitions, "master": args.master,
                      "runs": args.runs, "results": results}))
    spark.stop()


if __name__ == "__main__":
    main()
