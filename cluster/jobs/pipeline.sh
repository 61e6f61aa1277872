#!/usr/bin/env bash
# Job entrypoint: every stage in order under one storage prefix (`python -m cluster pipeline --help`).
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       bash cluster/jobs/pipeline.sh cluster/configs/demo.yaml s3://BUCKET/genecis --name demo
# CONFIG is a YAML/JSON pipeline config: a path inside the working directory (it travels with
# --working-dir), an absolute path or an s3:// URI.  STORAGE_URI replaces the config's `storage` and must
# be an s3:// URI or an ABSOLUTE path: a relative one would land in Ray's temporary copy of the working
# directory.  A rerun of the same command skips every stage whose manifest exists.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "error: usage: cluster/jobs/pipeline.sh CONFIG STORAGE_URI [flags of python -m cluster pipeline]" >&2
  exit 2
fi
config=$1; storage=$2; shift 2
case $storage in
  *://* | /*) ;;
  *) echo "error: STORAGE_URI '$storage' is relative: give an s3:// URI or an absolute path" >&2; exit 2 ;;
esac
exec python -m cluster pipeline --config "$config" --storage "$storage" "$@"
