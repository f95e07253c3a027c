# Sourced by the install scripts: name each step, and say in one line which one failed.
set -E
STEP=""
step() { STEP="$1"; echo "-- $1"; }
trap 'rc=$?; echo "$(basename "$0"): FAILED at step: ${STEP:-start} (exit $rc; the lines above say why)" >&2' ERR
