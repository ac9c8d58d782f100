#!/usr/bin/env bash
# The GPU checks in one run, for a session that is lent a GPU (about 5 minutes on an H100):
#   1. the CUDA tests (tests/test_gpu.py: CUDA vs CPU features, fp16 autocast, training on
#      CUDA, the CLI with --device cuda, torchrun on the GPUs);
#   2. benchmarks/extract.py on the GPU (RN50 random weights: model-bound? tiny ViT: decode-bound);
#   3. benchmarks/fit.py --quick on the GPU.
# Logs go to $OUT (the device tool's folder) or ./gpu-check.
#
# The GPU machines have torch, h5py, typer, rich, timm... but not open_clip_torch and ftfy:
# download their wheels here first (see README, "GPU checks") into .whl/ and carry it.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
py=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
# cacheclip itself, installed (not from the source tree: its CLI lives in cli/ and installs as cacheclip.cli)
$py -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site . \
    && export PYTHONPATH=/tmp/site
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
device=${DEVICE:-cuda}
status=0
{ nvidia-smi || true; $py -c "import torch, open_clip; print(torch.__version__, open_clip.__version__)"; } \
    2>&1 | tee "$out/env.txt"
timeout 240 $py -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/tests.txt" || status=1
timeout 180 $py benchmarks/extract.py --device "$device" --model both --repeats 2 --images "${IMAGES:-20000}" --workers "${WORKERS:-8}" \
    2>&1 | tee "$out/extract.txt" || status=1
timeout 120 $py benchmarks/fit.py --device "$device" --quick 2>&1 | tee "$out/fit.txt" || status=1
exit $status
