#!/usr/bin/env python3
"""Generates examples/sample/trips.csv: a small, realistic, deterministic
taxi-trip-like dataset for the local test harness and the examples.

    python3 examples/sample/generate.py            # writes trips.csv beside this script
    python3 examples/sample/generate.py -n 500 -o /tmp/trips.csv

No network, no third-party packages: the standard library's seeded PRNG
makes the same bytes on every run and every machine, so the committed file
can be checked against a fresh run (`--check`).

Columns:
    trip_id      integer, 1..n, unique, in pickup order
    pickup_at    RFC 3339 UTC timestamp (second precision)
    duration_s   integer, trip duration in seconds
    passengers   integer 1..6
    distance_km  decimal, 2 places
    fare         decimal, 2 places (base + per km + per minute, airport flat rate)
    tip          decimal, 2 places (0 for cash)
    payment      "card" or "cash"
    pickup_zone  zone name (letters, digits and spaces; never a comma or a quote)
    dropoff_zone zone name
"""

import argparse
import datetime as dt
import io
import os
import random
import sys

SEED = 20240301
DEFAULT_ROWS = 2000

# (zone, weight, is_airport)
ZONES = [
    ("Midtown Center", 14, False),
    ("Midtown East", 10, False),
    ("Upper East Side North", 9, False),
    ("Upper West Side South", 8, False),
    ("Times Sq Theatre District", 8, False),
    ("Union Sq", 7, False),
    ("Murray Hill", 6, False),
    ("East Village", 6, False),
    ("West Chelsea Hudson Yards", 5, False),
    ("Financial District North", 5, False),
    ("Lower East Side", 4, False),
    ("Greenwich Village South", 4, False),
    ("Clinton East", 4, False),
    ("Battery Park City", 3, False),
    ("Williamsburg North Side", 3, False),
    ("Long Island City Queens Plaza", 2, False),
    ("JFK Airport", 3, True),
    ("LaGuardia Airport", 3, True),
]


def rfc3339(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def generate(rows: int) -> str:
    rng = random.Random(SEED)
    names = [z[0] for z in ZONES]
    weights = [z[1] for z in ZONES]
    airport = {z[0] for z in ZONES if z[2]}
    out = io.StringIO(newline="")
    out.write(
        "trip_id,pickup_at,duration_s,passengers,distance_km,fare,tip,payment,"
        "pickup_zone,dropoff_zone\n"
    )
    t = dt.datetime(2024, 3, 1, 0, 0, 0, tzinfo=dt.timezone.utc)
    for trip_id in range(1, rows + 1):
        # Busier by day: shorter gaps between 07:00 and 22:00.
        busy = 7 <= t.hour < 22
        t += dt.timedelta(seconds=rng.randint(5, 60 if busy else 240))
        pickup = rng.choices(names, weights)[0]
        dropoff = rng.choices(names, weights)[0]
        if pickup in airport or dropoff in airport:
            distance = rng.uniform(12.0, 32.0)
        else:
            distance = rng.lognormvariate(0.9, 0.6)
        distance = round(min(max(distance, 0.3), 45.0), 2)
        speed_kmh = rng.uniform(9.0, 28.0)
        minutes = max(2.0, distance / speed_kmh * 60.0 + rng.uniform(0.0, 4.0))
        duration_s = int(minutes * 60)
        if "JFK Airport" in (pickup, dropoff):
            fare = 70.00
        else:
            fare = 3.00 + 1.75 * distance + 0.35 * minutes
        fare = round(fare, 2)
        payment = "card" if rng.random() < 0.78 else "cash"
        tip = round(fare * rng.choice([0.0, 0.15, 0.18, 0.20, 0.25]), 2) if payment == "card" else 0.0
        passengers = rng.choices([1, 2, 3, 4, 5, 6], [70, 15, 5, 3, 4, 3])[0]
        out.write(
            f"{trip_id},{rfc3339(t)},{duration_s},{passengers},"
            f"{distance:.2f},{fare:.2f},{tip:.2f},{payment},{pickup},{dropoff}\n"
        )
    return out.getvalue()


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--rows", type=int, default=DEFAULT_ROWS, help="rows to write (default %(default)s)")
    p.add_argument("-o", "--output", default=os.path.join(here, "trips.csv"), help="where to write (default: trips.csv here)")
    p.add_argument("--check", action="store_true", help="exit 1 unless the output file already holds exactly these bytes")
    args = p.parse_args()
    data = generate(args.rows).encode("ascii")
    if args.check:
        try:
            with open(args.output, "rb") as f:
                same = f.read() == data
        except FileNotFoundError:
            same = False
        print(f"{args.output}: {'up to date' if same else 'differs from the generator output'}")
        return 0 if same else 1
    tmp = os.path.join(os.path.dirname(os.path.abspath(args.output)), "." + os.path.basename(args.output) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}: {args.rows} rows, {len(data)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
