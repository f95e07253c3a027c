#!/usr/bin/env bash
# A second environment, .venv-verl, for verl's agent loop and its tests: verl 0.9.1 needs transformers
# <5.11 while the rest of IBISAgent runs the newest. It sees .venv's packages (torch, sam2, IBISAgentLib)
# through a .pth file and overrides only what verl pins. CPU only: enough to run our agent loop through
# verl's own classes; training with verl needs its GPU stack (vLLM), see README.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || { echo "run scripts/install.sh first" >&2; exit 1; }
[ -x .venv-verl/bin/python ] || .venv/bin/python -m venv .venv-verl
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
own=$(.venv-verl/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo "import site; site.addsitedir('$site')" > "$own/zz_ibisagent_venv.pth"
.venv-verl/bin/python -m pip install --quiet --no-deps "verl==0.9.1" "torchdata==0.11.0"
.venv-verl/bin/python -m pip install --quiet "transformers==5.9.0" "ray>=2.41.0" "tensordict>=0.8.0,<=0.10.0,!=0.9.0" \
    codetiming cachetools "TransferQueue>=0.1.10"
.venv-verl/bin/python -c "import verl, transformers; from verl.experimental.agent_loop import AgentLoopBase; print('verl', verl.__version__, '| transformers', transformers.__version__)"
