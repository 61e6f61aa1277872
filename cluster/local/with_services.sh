#!/usr/bin/env bash
# Run a command with the services tests need: radosgw (real S3) and a local Ray head.
# Both are started here and stopped here, by PID / session id, whatever the command's outcome.
#   cluster/local/with_services.sh CMD [ARGS...]
# The S3 variables are exported before `ray start` so every Ray worker sees them too.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
STATE=${GENECIS_SERVICES_DIR:-$(mktemp -d /tmp/genecis-services.XXXXXX)}
S3_PORT=${S3_PORT:-9105}; RAY_PORT=${RAY_PORT:-6390}

cleanup() {
  bash "$here/ray_head.sh" stop "$STATE/ray" || true
  bash "$here/s3_server.sh" stop "$STATE/s3" || true
}
trap cleanup EXIT INT TERM

bash "$here/s3_server.sh" start "$STATE/s3" "$S3_PORT"
# shellcheck disable=SC1091
source "$STATE/s3/s3.env"
bash "$here/ray_head.sh" start "$STATE/ray" "$RAY_PORT"
# shellcheck disable=SC1091
source "$STATE/ray/ray.env"
export HF_HUB_OFFLINE=1 GENECIS_TEST_SERVICES=1
"$@"
