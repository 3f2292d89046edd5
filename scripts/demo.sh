#!/usr/bin/env bash
# The main job: the local test harness on the bundled sample, with
# local-process sidecars (no Docker needed). 8 partitions over 2 executors,
# each partition enriched by an awk program running in its sidecar.
#
#   bash scripts/demo.sh [OUTPUT_DIR]   # default: target/harness-out
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
cargo build --release -q -p sidecar-entrypoint -p executor-shim-cli
out=${1:-target/harness-out}
status=0
"${CARGO_TARGET_DIR:-target}/release/executor-shim" harness \
    --input examples/sample/trips.csv \
    --partitions 8 --executors 2 \
    --input-format csv --output-format csv \
    --output "$out" \
    -- sh -c 'awk -F, -v OFS=, "NR==1{print \$0,\"fare_per_km\";next}{print \$0,(\$5>0?sprintf(\"%.2f\",\$6/\$5):0)}" "$SIDECAR_INPUT" > "$SIDECAR_OUTPUT"' \
    || status=$?

out="$(cd "$out" && pwd)"
parts=("$out"/part-*.parquet)
if [ -e "${parts[0]}" ]; then
    echo
    echo "results: ${#parts[@]} Parquet file(s), one per succeeded partition:"
    printf '  %s\n' "${parts[@]}"
    echo "look at them (all partitions as one table):"
    view='import sys, pyarrow.parquet as pq; t = pq.read_table(sys.argv[1]); print(t.num_rows, "rows"); print(t.to_pandas())'
    printf "  %q -c '%s' %q\n" "$VENV_PYTHON" "$view" "$out"
else
    echo "results: no Parquet file in $out (no partition succeeded)" >&2
fi
exit "$status"
