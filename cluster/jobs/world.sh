#!/usr/bin/env bash
# Job entrypoint: the procedural image-caption world (every flag: `python -m synthetic world --help`).
#   ray job submit --address http://127.0.0.1:8265 --working-dir . --entrypoint-num-cpus 32 -- \
#       bash cluster/jobs/world.sh s3://BUCKET/genecis/world --images 1000000 --workers 32
# OUTPUT_URI is an s3:// URI or an ABSOLUTE path (a job runs in Ray's copy of the working directory).
# The world is drawn by a process pool inside this entrypoint, not by Ray tasks: reserve its cores with
# --entrypoint-num-cpus N and pass --workers N (on cluster/cluster.yaml the head has no CPU, so this also
# places the job on a CPU-pool node; cluster/jobs/submit.py does it from --workers).
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "error: usage: cluster/jobs/world.sh OUTPUT_URI [flags of python -m synthetic world]" >&2
  exit 2
fi
output=$1; shift
exec python -m synthetic world --output "$output" "$@"
