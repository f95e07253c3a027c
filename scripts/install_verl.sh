#!/usr/bin/env bash
# A second environment, .venv-verl, for verl's agent loop and its tests: verl 0.9.1 needs transformers <5.11
# while the rest of IBISAgent runs the newest. Every version comes from requirements/verl.lock; the packages
# it pins at the same version as .venv (torch, sam2 and most others) are linked from .venv rather than copied
# (scripts/share_packages.py), and nothing else of .venv is visible. CPU only: enough to run our agent loop
# through verl's own classes; training with verl needs its GPU stack (vLLM), see README.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/steps.sh
[ -x .venv/bin/python ] || { echo "install_verl.sh: run scripts/install.sh first" >&2; exit 1; }
pip_() { .venv-verl/bin/python -m pip install -qq --disable-pip-version-check "$@"; }

step "create .venv-verl"
[ -x .venv-verl/bin/python ] || .venv/bin/python -m venv .venv-verl
own=$(.venv-verl/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
rm -f "$own/zz_ibisagent_venv.pth"  # the old whole-folder sharing, in environments made before the locks
step "install the locked pip into .venv-verl"
pip_ --require-hashes -r requirements/pip.lock
step "link the packages .venv-verl shares with .venv"
.venv/bin/python scripts/share_packages.py "$own" requirements/verl.lock requirements/no-deps.lock
step "install verl's locked packages (requirements/verl.lock, requirements/verl-no-deps.lock)"
pip_ --require-hashes --no-deps -r requirements/verl.lock
pip_ --require-hashes --no-deps -r requirements/verl-no-deps.lock
step "install IBISAgent itself into .venv-verl (editable)"
pip_ --no-deps --no-build-isolation -e .
step "check that verl imports"
.venv-verl/bin/python -c "import verl, transformers; from verl.experimental.agent_loop import AgentLoopBase; print('verl', verl.__version__, '| transformers', transformers.__version__)"
