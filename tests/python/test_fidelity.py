"""The fidelity matrix through PySpark: Spark's own types through every
format and the identity logic, with ``map_in_arrow(schema=<the same
schema>)``. Each format either gives back exactly what Spark alone gives
(``collect()`` compared row for row, NaN, empty strings and nulls
included), or fails the job before the logic runs, with an error naming
the column and what the format cannot carry.

The Rust side's matrix (executor-shim/tests/fidelity.rs) covers the Arrow
types Spark never produces."""

import datetime as dt
import math
import os
from decimal import Decimal

import pytest
from pyspark.sql import Row
from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    BooleanType,
    ByteType,
    DateType,
    DayTimeIntervalType,
    DecimalType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    MapType,
    ShortType,
    StringType,
    StructField,
    StructType,
    TimestampNTZType,
    TimestampType,
)

import sidecar_shim
from conftest import LEASE_TIMEOUT

FORMATS = sidecar_shim.FORMATS

# The zone Spark's timestamps are in while this module runs: a named zone
# with DST and, before 1883, a local mean time offset in seconds.
ZONE = "America/Los_Angeles"

# Every column Spark can hand to mapInArrow, and what each text format
# refuses of it: {column: {format: what the error says it cannot carry}}.
COLUMNS = [
    ("id", LongType()),
    ("b", BooleanType()),
    ("i8", ByteType()),
    ("i16", ShortType()),
    ("i32", IntegerType()),
    ("f32", FloatType()),
    ("f64", DoubleType()),
    ("dec", DecimalType(38, 9)),
    ("s", StringType()),
    ("u", StringType()),
    ("bin", BinaryType()),
    ("d", DateType()),
    ("ts", TimestampType()),
    ("ntz", TimestampNTZType()),
    ("dur", DayTimeIntervalType()),
    ("arr", ArrayType(IntegerType())),
    ("arr_s", ArrayType(StringType())),
    ("m", MapType(StringType(), IntegerType())),
    ("mi", MapType(IntegerType(), StringType())),
    ("st", StructType([StructField("a", IntegerType()), StructField("b", StringType())])),
]
REFUSED = {
    "bin": {"csv": "binary values"},
    "dur": {"csv": "durations"},
    "arr": {"csv": "nested values"},
    "arr_s": {"csv": "nested values"},
    "m": {"csv": "nested values"},
    "mi": {"csv": "nested values", "jsonl": "map keys that are not strings"},
    "st": {"csv": "nested values"},
}

TS = [
    dt.datetime(2024, 11, 3, 1, 30),  # LA: 01:30 happens twice this night
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
    dt.datetime(1850, 6, 1, 12, 0, 0, 1),  # LA local mean time: -7:52:58
    dt.datetime(9999, 12, 30, 23, 59, 59, 999999),
    None,
]


def _rows():
    # From strings: arithmetic on a Decimal would round it to 28 digits.
    max38 = "99999999999999999999999999999.999999999"
    values = {
        "b": [True, False, None, True, False],
        "i8": [-128, 127, None, 0, 1],
        "i16": [-32768, 32767, None, 0, 1],
        "i32": [-(2**31), 2**31 - 1, None, 0, 1],
        "f32": [1.5, float("nan"), float("-inf"), None, -0.0],
        "f64": [0.1, float("nan"), float("inf"), 1e300, None],
        "dec": [Decimal(max38), Decimal("-" + max38), Decimal("0.000000001"), None, Decimal(0)],
        "s": ["", None, "comma, \"quoted\"", "line\nbreak", "\\N"],
        "u": ["ünïcödé", "日本語", "emoji 🎉", "tab\t", None],
        "bin": [bytearray(b""), None, bytearray(b"\x00\xff\n,\""), bytearray(b"x"), None],
        "d": [dt.date(1, 1, 1), dt.date(9999, 12, 31), dt.date(1969, 12, 31), None, dt.date(2024, 2, 29)],
        "ts": TS,
        "ntz": TS,
        "dur": [dt.timedelta(0), dt.timedelta(days=-1, microseconds=1), dt.timedelta(days=3, seconds=5), None, dt.timedelta(microseconds=1)],
        "arr": [[1, None, 3], [], None, [0], [2**31 - 1]],
        "arr_s": [["", None], None, ["x"], [], ["a,b"]],
        "m": [{"a": 1, "": None}, {}, None, {"x": 0}, {"k": -1}],
        "mi": [{7: "seven"}, None, {}, {0: ""}, {-1: None}],
        "st": [Row(a=1, b=""), None, Row(a=None, b=None), Row(a=2, b="x"), Row(a=3, b=None)],
    }
    return [
        tuple([i] + [values[name][i] for name, _ in COLUMNS[1:]])
        for i in range(5)
    ]


@pytest.fixture(scope="module")
def zone(spark):
    before = spark.conf.get("spark.sql.session.timeZone")
    spark.conf.set("spark.sql.session.timeZone", ZONE)
    yield ZONE
    spark.conf.set("spark.sql.session.timeZone", before)


@pytest.fixture(scope="module")
def frame(spark, zone):
    schema = StructType([StructField(n, t) for n, t in COLUMNS])
    df = spark.createDataFrame(_rows(), schema).repartition(2).cache()
    df.count()  # every test's job starts from these two cached partitions
    yield df
    df.unpersist()


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The file the identity logic notes each task it runs in."""
    return str(tmp_path_factory.mktemp("fidelity") / "ran")


def identity(volume_root, ran, fmt, schema):
    logic = f'echo "$SIDECAR_TASK_ID" >> "{ran}" && cat "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'
    return sidecar_shim.map_in_arrow(
        volume_root=volume_root,
        lease_timeout=LEASE_TIMEOUT,
        command=["sh", "-c", logic],
        input_format=fmt,
        schema=schema,
    )


def canonical(value):
    """A value Python can compare: NaN equals NaN here (it never does as a float)."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, Row):
        return ("Row", tuple((k, canonical(v)) for k, v in value.asDict().items()))
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return sorted((canonical(k), canonical(v)) for k, v in value.items())
    return value


def rows(df):
    return sorted((canonical(list(r)) for r in df.collect()), key=lambda r: r[0])


def tasks_run(ran):
    try:
        with open(ran) as f:
            return len(f.read().splitlines())
    except FileNotFoundError:
        return 0


def test_ddl_schemas_with_timestamps_become_arrow_schemas(spark, zone):
    import pyarrow as pa

    fn = sidecar_shim.map_in_arrow(command=["true"], schema="ts timestamp, ntz timestamp_ntz, id long")
    assert fn.config["schema"] == pa.schema(
        [("ts", pa.timestamp("us", tz=ZONE)), ("ntz", pa.timestamp("us")), ("id", pa.int64())]
    )
    with pytest.raises(TypeError, match=r"schema column 'ym' \(interval year to month\) has no Arrow type"):
        sidecar_shim.map_in_arrow(command=["true"], schema="ym interval year to month")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_carried_spark_type_round_trips_exactly(spark, frame, volume_root, ran, fmt):
    carried = [n for n, _ in COLUMNS if fmt not in REFUSED.get(n, {})]
    df = frame.select(*carried)
    out = df.mapInArrow(identity(volume_root, ran, fmt, df.schema), df.schema)
    before = tasks_run(ran)
    assert rows(out) == rows(df)
    assert tasks_run(ran) > before, "the logic never ran"


REFUSALS = [(fmt, col, what) for col, by_fmt in REFUSED.items() for fmt, what in by_fmt.items()]


@pytest.mark.parametrize("fmt,column,what", REFUSALS, ids=[f"{f}-{c}" for f, c, _ in REFUSALS])
def test_what_a_format_cannot_carry_is_refused_by_name_before_the_logic_runs(
    spark, frame, volume_root, ran, fmt, column, what
):
    df = frame.select("id", column)
    fn = identity(volume_root, ran, fmt, df.schema)
    before = tasks_run(ran)
    with pytest.raises(Exception) as info:
        df.mapInArrow(fn, df.schema).collect()
    text = str(info.value)
    assert f'column "{column}"' in text, text
    assert f"{fmt} cannot carry {what}" in text, text
    assert "use arrows or parquet" in text, text
    assert tasks_run(ran) == before, "the logic ran before the refusal"


@pytest.mark.parametrize("fmt", FORMATS)
def test_odd_column_names(spark, zone, volume_root, ran, fmt):
    # Spark itself refuses a mapInArrow output with two columns of one name
    # (AMBIGUOUS_REFERENCE) or a dot in a name (UNRESOLVED_COLUMN); the Rust
    # matrix covers those through the shim.
    odd = spark.range(0, 3, numPartitions=1).selectExpr(
        "id",
        "cast(id as string) as `with,comma`",
        'id * 2 as `with "quote"`',
        "'v' as `line\nbreak`",
        "id as `ünï 名前`",
        "cast(null as string) as ` lead space `",
        "'' as ``",
    )
    out = odd.mapInArrow(identity(volume_root, ran, fmt, odd.schema), odd.schema)
    assert rows(out) == rows(odd)
    assert out.columns == odd.columns
