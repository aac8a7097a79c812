#!/usr/bin/env bash
# The dense-task cost benchmarks on a GPU, in one device call, one job at a time
# so that no two share the card. Writes JSON into $OUT (default benchmarks/results).
#   tiny Faster R-CNN at 64 px (the CPU file's setting), ResNet-50-FPN at 512 px
#   (the paper's detector and size), and the two MONAI U-Nets at 64 and 256 px.
# Needs MONAI for the U-Nets; on the device it travels as a wheel in .whl/.
set -uo pipefail
rc=0  # one failing job does not stop the others
out=${OUT:-benchmarks/results}
py=${PYTHON:-python3}
$py benchmarks/det_cost.py --device cuda --threads 4 --repeats 5 --out "$out/det_cost_gpu_tiny.json" || rc=1
$py benchmarks/det_cost.py --device cuda --threads 4 --model fasterrcnn_resnet50_fpn --size 512 --n-train 100 \
    --repeats 3 --out "$out/det_cost_gpu_r50.json" || rc=1
$py benchmarks/seg_cost.py --device cuda --threads 4 --repeats 5 --out "$out/seg_cost_gpu_64.json" || rc=1
$py benchmarks/seg_cost.py --device cuda --threads 4 --size 256 --repeats 3 --out "$out/seg_cost_gpu_256.json" || rc=1
exit $rc
