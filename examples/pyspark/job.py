#!/usr/bin/env python3
"""A PySpark job that enriches taxi trips with a command-line tool running in
the sidecar, then aggregates them in Spark.

    .venv/bin/python examples/pyspark/job.py              # examples/sample/trips.csv, local[2]
    .venv/bin/python examples/pyspark/job.py --image sidecar-foundry-dd:latest
    .venv/bin/python examples/pyspark/job.py --input trips.csv --partitions 8 --output /tmp/enriched

The sidecar logic is plain awk over CSV (the kind of legacy tool that lives
in its own container): it adds the average speed, the tip as a percentage of
the fare and a fare band to every trip. Spark reads the CSV, splits it into
partitions, sends each partition through the sidecar with mapInArrow, and
computes per-zone statistics from the enriched rows. `--check` recomputes the
enrichment in Spark alone and compares.

Needs: pyspark, pyarrow and the sidecar_shim package, all in the project's
virtual environment .venv/ after `bash .ci/python-tests.sh --install-only`
(its wheel bundles sidecar-entrypoint). With `maturin develop -m
executor-shim/python/Cargo.toml` instead, sidecar-entrypoint (`cargo build -p
sidecar-entrypoint --release`) is found via $SIDECAR_ENTRYPOINT or PATH;
with --image or --volume no local sidecar-entrypoint is needed.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLE = os.path.join(HERE, "..", "sample", "trips.csv")

TRIPS = (
    "trip_id long, pickup_at string, duration_s int, passengers int, distance_km double, "
    "fare double, tip double, payment string, pickup_zone string, dropoff_zone string"
)
ENRICHED = TRIPS + ", speed_kmh double, tip_pct double, fare_band string"

# The sidecar's logic. $SIDECAR_INPUT is the partition as CSV with a header;
# whatever lands in $SIDECAR_OUTPUT is the partition's output.
AWK = r"""
awk -F, -v OFS=, '
NR == 1 { print $0, "speed_kmh", "tip_pct", "fare_band"; next }
{
    speed = ($3 > 0) ? $5 / ($3 / 3600) : 0
    pct   = ($6 > 0) ? 100 * $7 / $6 : 0
    band  = ($6 < 10) ? "low" : ($6 < 30) ? "mid" : "high"
    printf "%s,%.2f,%.2f,%s\n", $0, speed, pct, band
}' "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"
"""


def provider(args):
    """Where the sidecar comes from: a local process (default), a Docker
    image, or the sidecar container beside the executor (attach)."""
    if args.volume:
        return {"volume": args.volume}  # the pod's sidecar runs the logic it was built with
    if args.image:
        return {"image": args.image, "command": ["sh", "-c", AWK]}
    return {"command": ["sh", "-c", AWK]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", default=SAMPLE, help="trips CSV (default: examples/sample/trips.csv)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--image", help="run the logic in this Docker image instead of a local process")
    ap.add_argument("--volume", help="attach to the sidecar already serving this volume (Kubernetes pod)")
    ap.add_argument("--output", help="also write the enriched trips here as Parquet")
    ap.add_argument("--check", action="store_true", help="compare with the same enrichment done by Spark alone")
    args = ap.parse_args()

    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    import sidecar_shim

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(args.master)
        .appName("sidecar-trips-enrich")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(args.partitions))
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")

    trips = spark.read.csv(os.path.abspath(args.input), header=True, schema=TRIPS).repartition(args.partitions)

    # The two lines a user needs (the provider is chosen on the command line):
    enrich = sidecar_shim.map_in_arrow(input_format="csv", schema=ENRICHED, **provider(args))
    enriched = trips.mapInArrow(enrich, ENRICHED)

    started = time.monotonic()
    enriched = enriched.cache()
    n = enriched.count()
    took = time.monotonic() - started
    print(f"enriched {n} trips in {args.partitions} partitions through the sidecar in {took:.2f}s")

    by_zone = (
        enriched.groupBy("pickup_zone")
        .agg(
            F.count("*").alias("trips"),
            F.round(F.avg("speed_kmh"), 1).alias("avg_speed_kmh"),
            F.round(F.avg(F.when(F.col("payment") == "card", F.col("tip_pct"))), 1).alias("avg_card_tip_pct"),
            F.sum(F.when(F.col("fare_band") == "high", 1).otherwise(0)).alias("high_fares"),
        )
        .orderBy(F.desc("trips"))
    )
    by_zone.show(10, truncate=False)

    if args.output:
        enriched.write.mode("overwrite").parquet(args.output)
        print(f"wrote {args.output}")

    if args.check:
        speed = F.when(F.col("duration_s") > 0, F.col("distance_km") / (F.col("duration_s") / 3600)).otherwise(0.0)
        pct = F.when(F.col("fare") > 0, 100 * F.col("tip") / F.col("fare")).otherwise(0.0)
        band = F.when(F.col("fare") < 10, "low").when(F.col("fare") < 30, "mid").otherwise("high")
        expected = trips.select("*", F.round(speed, 2).alias("speed_kmh"), F.round(pct, 2).alias("tip_pct"),
                                band.alias("fare_band"))
        # awk's %.2f and Spark's round() may differ in the last digit on ties.
        diff = (
            enriched.alias("a").join(expected.alias("b"), "trip_id")
            .where((F.abs(F.col("a.speed_kmh") - F.col("b.speed_kmh")) > 0.011)
                   | (F.abs(F.col("a.tip_pct") - F.col("b.tip_pct")) > 0.011)
                   | (F.col("a.fare_band") != F.col("b.fare_band")))
            .count()
        )
        missing = expected.count() - n
        print(f"check: {diff} differing rows, {missing} missing rows")
        if diff or missing:
            sys.exit(1)

    spark.stop()


if __name__ == "__main__":
    main()
