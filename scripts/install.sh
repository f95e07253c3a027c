#!/usr/bin/env bash
# Create .venv and install IBISAgent with the model stack, the server, the training tools, Slicer's core
# (slicer-core, for the MRML adapter, scene bundles and their tests) and the test tools, every version from the
# lock files in requirements/ (hashes checked), then .venv-verl (scripts/install_verl.sh).
# Works offline from the registries our machines reach; see README "Install" for GPU machines and for
# refreshing the locks (scripts/lock.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/steps.sh
PYTHON=${PYTHON:-python3}
pip_() { .venv/bin/python -m pip install -qq --disable-pip-version-check "$@"; }

step "create .venv"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
step "install the locked pip"
pip_ --require-hashes -r requirements/pip.lock
# The whole locked set without resolving: the lock is complete, and torch is in it, so sam2 can build next.
step "install the locked packages (requirements/ibisagent.lock)"
pip_ --require-hashes --no-deps -r requirements/ibisagent.lock
# sam2 1.1.0 is an sdist; without SAM2_BUILD_CUDA=0 it compiles a CUDA extension (only hole filling uses it).
step "build sam2 and add the test-data packages (requirements/no-deps.lock)"
SAM2_BUILD_CUDA=${SAM2_BUILD_CUDA:-0} pip_ --require-hashes --no-deps --no-build-isolation -r requirements/no-deps.lock
step "install IBISAgent itself (editable)"
pip_ --no-deps --no-build-isolation -e .
step "check that the stack imports"
.venv/bin/python -c "import IBISAgentLib, torch, transformers, sam2; print('installed IBISAgent', IBISAgentLib.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
# verl's agent loop is tested in its own environment (verl pins an older transformers).
step "the verl environment (scripts/install_verl.sh)"
bash scripts/install_verl.sh
