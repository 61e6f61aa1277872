#!/usr/bin/env bash
# Job entrypoint: score a model on GeneCIS (every flag: `python -m evaluator genecis --help`).
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       bash cluster/jobs/evaluate.sh RN50x4 s3://BUCKET/genecis/eval \
#       --annotations s3://BUCKET/genecis/annotations --coco-root s3://BUCKET/coco/val2017 \
#       --vg-root s3://BUCKET/vg/VG_100K_all --checkpoint s3://BUCKET/genecis/runs/combiner \
#       --heads image_only,text_only,image_plus_text,combiner --workers 4 --gpus-per-worker 1
# MODEL is an open_clip model name; OUTPUT_URI and every data flag are s3:// URIs or ABSOLUTE paths
# (`--benchmark URI` in place of the three data flags scores a procedural benchmark).  Give
# `--gpus-per-worker 1` explicitly on an autoscaling cluster: its default (-1) asks for GPUs only when
# the cluster already has one, and the GPU pool of cluster/cluster.yaml starts at zero nodes.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "error: usage: cluster/jobs/evaluate.sh MODEL OUTPUT_URI [flags of python -m evaluator genecis]" >&2
  exit 2
fi
model=$1; output=$2; shift 2
exec python -m evaluator genecis --model "$model" --output "$output" "$@"
