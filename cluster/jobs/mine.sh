#!/usr/bin/env bash
# Job entrypoint: mine GeneCIS triplets from a caption corpus (every flag: `python -m miner run --help`).
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       bash cluster/jobs/mine.sh s3://BUCKET/cc3m/train.tsv s3://BUCKET/genecis/mined \
#       --kinds change_object --num-triplets 1600000 --parse-workers 0 --cpus-per-parse-worker 1
# INPUT_URI / OUTPUT_URI are s3:// URIs or ABSOLUTE paths: a job runs in Ray's copy of the working
# directory, so the miner refuses relative paths there.
# The caller chooses input, output and every knob; on a cluster, `--parse-workers 0
# --cpus-per-parse-worker 1` gives one spaCy actor per CPU (minus one for reads).  The driver is light:
# it runs on the head, the parse actors and mining tasks on the CPU pool.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "error: usage: cluster/jobs/mine.sh INPUT_URI OUTPUT_URI [flags of python -m miner run]" >&2
  exit 2
fi
input=$1; output=$2; shift 2
exec python -m miner run --input "$input" --output "$output" "$@"
