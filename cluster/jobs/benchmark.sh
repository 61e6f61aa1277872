#!/usr/bin/env bash
# Job entrypoint: a procedural GeneCIS-format benchmark (every flag: `python -m synthetic benchmark --help`).
#   ray job submit --address http://127.0.0.1:8265 --working-dir . --entrypoint-num-cpus 32 -- \
#       bash cluster/jobs/benchmark.sh s3://BUCKET/genecis/benchmark --seed 1 --world-seed 0 --workers 32
# OUTPUT_URI is an s3:// URI or an ABSOLUTE path.  Like the world, the benchmark is built by a process
# pool inside this entrypoint: reserve its cores with --entrypoint-num-cpus N and pass --workers N.
# The look flags (--image-size, --shapes, ...) must be the training world's.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "error: usage: cluster/jobs/benchmark.sh OUTPUT_URI [flags of python -m synthetic benchmark]" >&2
  exit 2
fi
output=$1; shift
exec python -m synthetic benchmark --output "$output" "$@"
