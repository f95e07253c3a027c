#!/usr/bin/env bash
# Refresh the lock files in requirements/ from the *.in files there (every transitive version pinned, with
# hashes), for the Python and platform our machines and CI run. scripts/install.sh installs only from the locks.
#   bash scripts/lock.sh             keep the locked versions where the inputs still allow them
#   bash scripts/lock.sh --upgrade   move every package to the newest version the inputs allow
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
python3 -m venv "$tool/venv"
"$tool/venv/bin/python" -m pip install --quiet "uv==$UV_VERSION"
compile() {
    "$tool/venv/bin/uv" pip compile --quiet --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
        --generate-hashes --no-header "$@"
}
compile requirements/pip.in -o requirements/pip.lock "$@"
# sam2 is built from no-deps.lock without build isolation; the project itself installs as editable, unhashed.
compile requirements/ibisagent.in --no-emit-package sam2 --no-emit-package ibisagent -o requirements/ibisagent.lock "$@"
compile requirements/no-deps.in --no-deps -o requirements/no-deps.lock "$@"
# verl.lock starts from ibisagent.lock's versions, so the two environments share every package they can.
[ -f requirements/verl.lock ] || cp requirements/ibisagent.lock requirements/verl.lock
compile requirements/verl.in --no-emit-package sam2 --no-emit-package ibisagent -o requirements/verl.lock "$@"
compile requirements/verl-no-deps.in --no-deps -o requirements/verl-no-deps.lock "$@"
echo "locks refreshed; install with: bash scripts/install.sh"
