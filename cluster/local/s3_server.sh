#!/usr/bin/env bash
# A real S3 server for tests: Ceph radosgw (mon + memstore osd + rgw) bound to 127.0.0.1.
#   cluster/local/s3_server.sh start DIR PORT   -> writes DIR/pids and DIR/s3.env (export lines)
#   cluster/local/s3_server.sh stop DIR         -> kills exactly the PIDs it started
# Needs the Debian packages radosgw ceph-mon ceph-osd (installed by `make deps-system`).
# Test-only credentials are generated per start and live only in DIR/s3.env.
set -euo pipefail
cmd=${1:?start|stop}; DIR=${2:?state dir}

stop() {
  [ -f "$DIR/pids" ] || return 0
  local pids; pids=$(cat "$DIR/pids")
  kill $pids 2>/dev/null || true
  for _ in $(seq 30); do kill -0 $pids 2>/dev/null || break; sleep 0.5; done
  kill -9 $pids 2>/dev/null || true
  rm -f "$DIR/pids"
}

write_conf() {
  cat > "$CEPH_CONF" <<EOC
[global]
fsid = $(cat /proc/sys/kernel/random/uuid)
mon host = 127.0.0.1
public addr = 127.0.0.1
run dir = $DIR/run
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail crit = 0
mon allow pool delete = true
log file = $DIR/log/\$name.log
admin socket = $DIR/run/\$name.asok
[mon.a]
mon data = $DIR/mon
[osd.0]
osd data = $DIR/osd
osd objectstore = memstore
memstore device bytes = 2147483648
osd class load list = *
osd class default list = *
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
rgw data = $DIR/rgw
rgw dns name = 127.0.0.1
# deleted/overwritten large objects (checkpoints) are freed after 1 min, not 2 h: the store is 2 GB of RAM
rgw gc obj min wait = 60
rgw gc processor period = 60
# with auth none, radosgw must also use crc mode towards the mon or it loops on auth errors
ms mon client mode = crc
auth client required = none
EOC
}

start() {
  PORT=${3:?port}
  stop
  rm -rf "$DIR"; mkdir -p "$DIR"/{mon,osd,rgw,log,run}
  export CEPH_CONF=$DIR/ceph.conf
  write_conf
  ceph-mon --id a --mkfs --keyring /dev/null
  touch "$DIR/mon/keyring"
  ceph-mon --id a
  local osd; osd=$(ceph osd create)
  ceph osd crush add "osd.$osd" 1 root=default >/dev/null 2>&1
  ceph-osd --id "$osd" --mkfs 2>/dev/null
  ceph-osd --id "$osd" 2>>"$DIR/log/osd-start.log"
  for _ in $(seq 60); do ceph osd stat 2>/dev/null | grep -q '1 up' && break; sleep 1; done
  radosgw -n client.rgw.a --keyring /dev/null
  for _ in $(seq 120); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 1; done
  local ak sk
  ak="test$(head -c6 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  sk="$(head -c18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  radosgw-admin user create --uid test --display-name "Test User" --access-key="$ak" --secret-key="$sk" >/dev/null
  pgrep -f "ceph-mon --id a|ceph-osd --id $osd|radosgw -n client.rgw.a" | tr '\n' ' ' > "$DIR/pids"
  cat > "$DIR/s3.env" <<EOE
export AWS_ENDPOINT_URL_S3=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=$ak
export AWS_SECRET_ACCESS_KEY=$sk
export AWS_REGION=us-east-1
export AWS_REQUEST_CHECKSUM_CALCULATION=when_required
export AWS_RESPONSE_CHECKSUM_VALIDATION=when_required
EOE
  echo "radosgw ready on 127.0.0.1:$PORT (pids $(cat "$DIR/pids"))"
}

case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  *) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
