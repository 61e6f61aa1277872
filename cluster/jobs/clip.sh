#!/usr/bin/env bash
# Job entrypoint: CLIP pretraining on caption-image pairs (every flag: `python -m trainer clip --help`).
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       bash cluster/jobs/clip.sh s3://BUCKET/genecis/runs clip s3://BUCKET/genecis/world \
#       --model RN50x4 --use-gpu true --num-workers 8 --cpus-per-worker 4 --batch-size 1024
# STORAGE_PATH (Ray Train storage: checkpoints, metrics) and CAPTIONS (a world root, its index/, or a
# Parquet folder of key, caption[, url]) are s3:// URIs or ABSOLUTE paths; the run lives in
# STORAGE_PATH/NAME and resumes from its last checkpoint when the same command is submitted again.
# `--use-gpu true --num-workers N` asks for N GPUs, which grows the GPU pool of cluster/cluster.yaml.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "error: usage: cluster/jobs/clip.sh STORAGE_PATH NAME CAPTIONS [flags of python -m trainer clip]" >&2
  exit 2
fi
storage=$1; name=$2; captions=$3; shift 3
exec python -m trainer clip --storage-path "$storage" --name "$name" --captions "$captions" "$@"
