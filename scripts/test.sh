#!/usr/bin/env bash
# Every test: formatting and lints, the Rust suites (unit, real-process,
# Docker, end to end), and the PySpark suite. Installs what it needs first.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (Rust, real processes, Docker)"
mkdir -p target
set +e
cargo test --workspace --locked --no-fail-fast -- --nocapture 2>&1 | tee target/test-rust.log
status=${PIPESTATUS[0]}
set -e
echo "== skipped Rust tests (with reasons)"
grep -E '^SKIPPED' target/test-rust.log || echo "none"
if [ "$status" != 0 ]; then
    # The log is long and CI shows its tail: repeat what failed here.
    echo "== what failed" >&2
    grep -E -A2 "^VIOLATION|^test .* FAILED$|panicked at|invariant violations:" \
        target/test-rust.log | tail -n 80 >&2 || true
    echo "Rust tests failed (exit $status): see target/test-rust.log" >&2
    exit "$status"
fi
echo "== PySpark"
bash .ci/python-tests.sh
