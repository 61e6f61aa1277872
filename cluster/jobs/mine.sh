#!/usr/bin/env bash
# Job entrypoint: mine GeneCIS triplets from a caption corpus.
#   ray job submit --working-dir . -- bash cluster/jobs/mine.sh INPUT_URI OUTPUT_URI [extra miner flags]
# INPUT_URI / OUTPUT_URI are s3:// URIs or ABSOLUTE paths: a job runs in Ray's copy of the working
# directory, so the miner refuses relative paths there.
# The caller chooses input, output and every knob (`python -m miner run --help`); on a cluster,
# `--parse-workers 0 --cpus-per-parse-worker 1` gives one spaCy actor per CPU (minus one for reads).
set -euo pipefail
input=${1:?input URI}; output=${2:?output URI}; shift 2
exec python -m miner run --input "$input" --output "$output" "$@"
