#!/usr/bin/env bash
# Create .venv and install IBISAgent with the model stack, the server, the training tools, Slicer's core
# (slicer-core, for the MRML adapter, scene bundles and their tests) and the test tools.
# Works offline from the registries our machines reach; see README "Install" for GPU machines.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first: sam2 must build against it. 2.14.1/0.29.1 are the newest our machines serve.
python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
python -m pip install --quiet hydra-core iopath tqdm pillow numpy
# sam2 1.1.0 is an sdist; without SAM2_BUILD_CUDA=0 it compiles a CUDA extension (only hole filling uses it).
SAM2_BUILD_CUDA=${SAM2_BUILD_CUDA:-0} python -m pip install --quiet --no-build-isolation --no-deps "sam2==1.1.0"
python -m pip install --quiet -e ".[models,server,training,test,slicer,web]"
# Real medical test data that ships inside packages (MNI152 T1 + tissue maps, a CT DICOM slice);
# only their files are used, so their own dependencies are not needed.
python -m pip install --quiet --no-deps "nilearn==0.14.1" "pydicom==3.0.2"
python -c "import IBISAgentLib, torch, transformers, sam2; print('installed IBISAgent', IBISAgentLib.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
# verl's agent loop is tested in its own environment (verl pins an older transformers).
bash scripts/install_verl.sh
