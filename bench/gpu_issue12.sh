#!/usr/bin/env bash
# GPU figures of the GPU-speed issue (prediction and training throughput), one script, about 6 minutes on
# one H100/H200 with 16 cores (estimate; not yet run: no GPU was lent so far). To be folded into
# bench/gpu_check.py. Usage, from the repository root:  bash bench/gpu_issue12.sh [WORK_DIR]
#
#   1. a small synthetic training set (image_1, image_2 at 4000 px), cut into 512-px tiles
#   2. bench/train.py: the loader alone (1 process, 12 workers), full and bare step, a 200-iteration epoch
#      (DeepLabv3-ResNet-50, batch 16, AMP); tiles listed 80 times so that an epoch has over 200 iterations
#   3. bench/predict.py: pure forward vs predict from the source (8192^2 repeated synthetic block), zero-cost
#      model, peak RSS at 4096^2 and 8192^2, and predict.py on an image of image_3's size (19903 x 37241),
#      without TTA and with --tta flip
# Goals (issue 12): predict >= 70% of the pure forward; image_3 size <= 30 s (<= 60 s with flips), host memory
# <= 4 GB; the epoch >= 90% of the bare step.
set -euo pipefail
WORK=${1:-/tmp/gpu_issue12}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$WORK"
t0=$(date +%s)
step() { echo "== [$(( $(date +%s) - t0 )) s] $*"; }

step "synthetic training set"
$PY make_synthetic_data.py --data_root "$WORK/data" --size 4000 --images image_1 image_2 --quiet
$PY generate_train_data.py --data_root "$WORK/data" --tile_size 512 --keep valid --workers 8 --quiet

step "training throughput"
$PY bench/train.py --data_root "$WORK/data" --backbone resnet50 --batch_size 16 --crop_size 512 \
    --device cuda --amp --workers 12 --iters 30 --warmup 5 --repeats 1 --epoch_iters 200 --repeat_tiles 80

step "prediction throughput, memory, image_3 size"
$PY bench/predict.py --device cuda --amp --backbone resnet50 --batch_size 16 --threads 16 --repeats 2 \
    --sizes 4096 8192 --full --full_tta flip --out "$WORK/predict"

step "done"
