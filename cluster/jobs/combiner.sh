#!/usr/bin/env bash
# Job entrypoint: the GeneCIS Combiner on mined triplets (every flag: `python -m trainer combiner --help`).
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       bash cluster/jobs/combiner.sh s3://BUCKET/genecis/runs combiner \
#       s3://BUCKET/genecis/mined/triplets/train s3://BUCKET/cc3m/shards \
#       --model RN50x4 --pretrained openai --use-gpu true --num-workers 8 --batch-size 256
# STORAGE_PATH, TRIPLETS (the miner's OUT/triplets/train) and IMAGES (webdataset tars: a world root or
# an img2dataset folder) are s3:// URIs or ABSOLUTE paths; the run lives in STORAGE_PATH/NAME and resumes
# from its last checkpoint.  `--backbone STORAGE_PATH/clip` starts from a CLIP run of clip.sh.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "error: usage: cluster/jobs/combiner.sh STORAGE_PATH NAME TRIPLETS IMAGES [flags of python -m trainer combiner]" >&2
  exit 2
fi
storage=$1; name=$2; triplets=$3; images=$4; shift 4
exec python -m trainer combiner --storage-path "$storage" --name "$name" --triplets "$triplets" \
  --images "$images" "$@"
