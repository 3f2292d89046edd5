#!/usr/bin/env bash
# The main job: the local test harness on the bundled sample, with
# local-process sidecars (no Docker needed). 8 partitions over 2 executors,
# each partition enriched by an awk program running in its sidecar.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -q -p sidecar-entrypoint -p executor-shim-cli
out=${1:-target/harness-out}
exec target/release/executor-shim harness \
    --input examples/sample/trips.csv \
    --partitions 8 --executors 2 \
    --input-format csv --output-format csv \
    --output "$out" \
    -- sh -c 'awk -F, -v OFS=, "NR==1{print \$0,\"fare_per_km\";next}{print \$0,(\$5>0?sprintf(\"%.2f\",\$6/\$5):0)}" "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"'
