#!/usr/bin/env bash
# The PySpark integration tests: build the sidecar_shim wheel and
# sidecar-entrypoint, install the wheel, run tests/python against a real
# local[2] Spark.
#
#   .ci/python-tests.sh                  # debug builds (reuses `cargo test`'s artifacts)
#   PROFILE=release .ci/python-tests.sh  # optimised builds (what examples/pyspark/bench.py wants)
#   .ci/python-tests.sh -k stream        # extra arguments go to pytest
#   .ci/python-tests.sh --install-only   # build and install sidecar_shim into .venv/, no tests
#
# Needs: cargo and Java for Spark. The Python packages (scripts/requirements.txt)
# and the wheel go into the project's virtual environment .venv/, made from
# ${PYTHON:-python3} if missing (scripts/env.sh). Docker is optional (the docker
# provider test is skipped when the image sidecar-foundry-dd:latest is absent).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
profile="${PROFILE:-debug}"
install_only=false
if [[ "${1:-}" == --install-only ]]; then
    install_only=true
    shift
fi
# One target dir for everything: CI has 2 cores, rebuilding the
# dependencies for the wheel would double the build time.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

log() { echo "python-tests: $*" >&2; }

case "$profile" in
    release) cargo_profile=(--release); maturin_profile=(--release); bin_dir="$CARGO_TARGET_DIR/release" ;;
    debug) cargo_profile=(); maturin_profile=(); bin_dir="$CARGO_TARGET_DIR/debug" ;;
    *) log "PROFILE must be debug or release, not $profile"; exit 2 ;;
esac

# The interpreter of .venv/, with every package the tests need; exports
# PYSPARK_PYTHON so that Spark's workers use it too.
. "$root/scripts/env.sh"
venv_ready
python="$VENV_PYTHON"

log "building sidecar-entrypoint and executor-shim ($profile)"
cargo build -p sidecar-entrypoint -p executor-shim-cli "${cargo_profile[@]}" >&2
entrypoint="$bin_dir/sidecar-entrypoint"
[[ -x "$entrypoint" ]] || { log "no $entrypoint after the build"; exit 1; }
[[ -x "$bin_dir/executor-shim" ]] || { log "no $bin_dir/executor-shim after the build"; exit 1; }
export EXECUTOR_SHIM="$bin_dir/executor-shim"

# Bundle the binary in the wheel (sidecar_shim/bin/), so an installed wheel
# works without $SIDECAR_ENTRYPOINT; the copy is not part of the source tree.
pkg_bin="$root/executor-shim/python/python/sidecar_shim/bin"
mkdir -p "$pkg_bin"
cp "$entrypoint" "$pkg_bin/sidecar-entrypoint"
trap 'rm -f "$pkg_bin/sidecar-entrypoint"; rmdir "$pkg_bin" 2>/dev/null || true' EXIT

log "building the sidecar_shim wheel ($profile)"
wheels="$CARGO_TARGET_DIR/wheels"
rm -f "$wheels"/sidecar_shim-*.whl
"$python" -m maturin build "${maturin_profile[@]}" \
    -m executor-shim/python/Cargo.toml -i "$python" -o "$wheels" >&2
wheel="$(ls -t "$wheels"/sidecar_shim-*.whl | head -n 1)"
log "installing $wheel into $VENV_DIR"
"$python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel" >&2

if $install_only; then
    log "sidecar_shim is installed in $VENV_DIR (sidecar-entrypoint bundled)"
    exit 0
fi

export SIDECAR_ENTRYPOINT="$entrypoint"
log "running pytest (SIDECAR_ENTRYPOINT=$SIDECAR_ENTRYPOINT, PYSPARK_PYTHON=$PYSPARK_PYTHON)"
# Run from tests/python so conftest.py is importable and the installed
# package (not the source tree) is the one tested.
cd "$root/tests/python"
status=0
"$python" -m pytest -q "$@" || status=$?
exit "$status"
