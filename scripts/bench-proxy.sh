#!/usr/bin/env bash
# bench-proxy.sh: glimpse's caching proxy beside nginx and Glance's own cache, in the same
# run on the same machine, reported as ratios (`make bench` calls it).
#
#   (a) warm: CLIENTS_WARM (8) concurrent clients download a 1 GiB cached image through
#       glimpse, versus nginx (sendfile on) serving the same file from disk, versus Glance
#       with its own cache (--cache, warmed). Target: glimpse >= 0.9 x nginx's aggregate.
#   (b) cold fill: one client on an image glimpse has not cached, versus one direct download
#       from the upstream Glance. Target: <= 1.2 x.
#   (c) CLIENTS_COLD (16) concurrent clients on an uncached image: exactly one upstream
#       download (Glance's access log), each client done within 1.5 x one direct download.
#   (d) glimpse's peak RSS during (c) (VmHWM, reset before (c)). Target: < 100 MiB.
#
# Each timed figure is the median of REPS runs. curl is the client (output to /dev/null).
# Needs root (glance-server), Glance (../shared/glance/glance-server installs it), nginx
# (installed with apt-get when missing) and curl.
#
# Environment: BENCH_DIR (default /var/tmp/glimpse-bench-proxy), REPS (3), SIZE_MIB (1024),
# CLIENTS_WARM (8), CLIENTS_COLD (16), GLIMPSE (default bin/glimpse, built when missing),
# PORT_BASE (21200: Glance, nginx, glimpse and its admin listener take the next four).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/glimpse-bench-proxy}
REPS=${REPS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
CLIENTS_WARM=${CLIENTS_WARM:-8}
CLIENTS_COLD=${CLIENTS_COLD:-16}
GLIMPSE=${GLIMPSE:-$ROOT/bin/glimpse}
PORT_BASE=${PORT_BASE:-21200}
GLANCE_SERVER=${GLANCE_SERVER:-$ROOT/../shared/glance/glance-server}
GLANCE_PORT=$((PORT_BASE + 1))
NGINX_PORT=$((PORT_BASE + 2))
GLIMPSE_PORT=$((PORT_BASE + 3))
ADMIN_PORT=$((PORT_BASE + 4))
GLANCE=http://127.0.0.1:$GLANCE_PORT
PROXY=http://127.0.0.1:$GLIMPSE_PORT
ADMIN=http://127.0.0.1:$ADMIN_PORT

PROG=bench-proxy
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
bench_prereqs
mkdir -p "$BENCH_DIR/www"
IMG=$BENCH_DIR/www/image.raw
random_image "$IMG" $((SIZE_MIB << 20))

GLIMPSE_PID=
NGINX_PID=
cleanup() {
	stop_pids "$GLIMPSE_PID" "$NGINX_PID"
	"$GLANCE_SERVER" stop "$BENCH_DIR/glance" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# Glance with its own cache, every caller an admin.
log "starting Glance (--cache --noauth) on $GLANCE"
"$GLANCE_SERVER" start "$BENCH_DIR/glance" "$GLANCE_PORT" --cache --noauth >/dev/null
ID=$(curl -sf -H 'Content-Type: application/json' \
	-d '{"name": "bench-proxy", "disk_format": "raw", "container_format": "bare"}' "$GLANCE/v2/images" |
	sed -n 's/.*"id": "\([^"]*\)".*/\1/p')
[ -n "$ID" ] || die "cannot create an image in Glance"
log "uploading the image to Glance ($ID)"
curl -sf -X PUT -H 'Content-Type: application/octet-stream' -T "$IMG" "$GLANCE/v2/images/$ID/file" >/dev/null
GLANCE_LOG=$BENCH_DIR/glance/glance-api.log
data_gets() { grep -c "\"GET /v2/images/$ID/file HTTP/1.1\" 200" "$GLANCE_LOG" || true; }

# nginx serving the same file, sendfile on.
start_nginx "$NGINX_PORT"

# glimpse in front of Glance.
rm -rf "$BENCH_DIR/cache"
"$GLIMPSE" serve --listen "127.0.0.1:$GLIMPSE_PORT" --admin-listen "127.0.0.1:$ADMIN_PORT" --upstream "$GLANCE" \
	--cache-dir "$BENCH_DIR/cache" --cache-size 8G --log-level warn 2>"$BENCH_DIR/glimpse.log" &
GLIMPSE_PID=$!
for _ in $(seq 100); do
	curl -sf "$PROXY/healthcheck" >/dev/null 2>&1 && curl -sf "http://127.0.0.1:$NGINX_PORT/image.raw" -r 0-0 -o /dev/null 2>&1 && break
	sleep 0.1
done
curl -sf "$PROXY/healthcheck" >/dev/null || die "glimpse did not start: $(cat "$BENCH_DIR/glimpse.log")"

# one URL: prints the seconds one download took, and fails on a short body.
one() {
	local out
	out=$(curl -sf -o /dev/null -w '%{time_total} %{size_download}' "$1") || return 1
	[ "${out#* }" = $((SIZE_MIB << 20)) ] || { echo "short download from $1: $out" >&2; return 1; }
	echo "${out% *}"
}
# many N URL: N concurrent downloads; prints the wall seconds for all, then each client's.
many() {
	local n=$1 url=$2 dir
	dir=$(mktemp -d)
	local t0 t1
	t0=$(date +%s.%N)
	local pids=()
	for i in $(seq "$n"); do
		one "$url" >"$dir/$i" &
		pids+=($!)
	done
	# Only these: a bare `wait` would also wait for nginx and glimpse, which never end.
	wait "${pids[@]}"
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
	cat "$dir"/* | tr '\n' ' '
	echo
	rm -rf "$dir"
}
evict() { curl -sf -X DELETE "$ADMIN/v2/cache/$ID" >/dev/null || true; }
gbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.2f", b / s / 1e9 }'; }

BYTES=$((SIZE_MIB << 20))
echo
echo "glimpse proxy benchmark: $SIZE_MIB MiB image, $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# Warm Glance's cache and the page cache.
one "$GLANCE/v2/images/$ID/file" >/dev/null
one "http://127.0.0.1:$NGINX_PORT/image.raw" >/dev/null

# (b) cold fill against a direct download, alternating.
: >"$BENCH_DIR/direct.txt"
: >"$BENCH_DIR/cold.txt"
for _ in $(seq "$REPS"); do
	one "$GLANCE/v2/images/$ID/file" >>"$BENCH_DIR/direct.txt"
	evict
	one "$PROXY/v2/images/$ID/file" >>"$BENCH_DIR/cold.txt"
done
DIRECT=$(median 3 <"$BENCH_DIR/direct.txt")
COLD=$(median 3 <"$BENCH_DIR/cold.txt")
# The floor a verified fill cannot beat on this machine: MD5 and SHA-512 of the image.
HASH_FLOOR=$( { /usr/bin/time -f '%e' md5sum "$IMG" >/dev/null; } 2>&1 | tail -1)

# (c) and (d): 16 concurrent cold clients, glimpse's peak RSS reset first.
: >"$BENCH_DIR/c.txt"
UP_OK=yes
PEAK=0
for _ in $(seq "$REPS"); do
	evict
	echo 5 >"/proc/$GLIMPSE_PID/clear_refs" 2>/dev/null || true
	before=$(data_gets)
	many "$CLIENTS_COLD" "$PROXY/v2/images/$ID/file" >>"$BENCH_DIR/c.txt"
	ups=$(($(data_gets) - before))
	[ "$ups" = 1 ] || UP_OK="no ($ups upstream downloads)"
	hwm=$(awk '/VmHWM/ {print $2}' "/proc/$GLIMPSE_PID/status")
	[ "$hwm" -gt "$PEAK" ] && PEAK=$hwm
done
C_SLOWEST=$(awk '{ m = 0; for (i = 2; i <= NF; i++) if ($i > m) m = $i; print m }' "$BENCH_DIR/c.txt" | median 3)

# (a) warm: glimpse (cached now), nginx, Glance's cache; alternating.
: >"$BENCH_DIR/a-glimpse.txt"
: >"$BENCH_DIR/a-nginx.txt"
: >"$BENCH_DIR/a-glance.txt"
one "$PROXY/v2/images/$ID/file" >/dev/null
for _ in $(seq "$REPS"); do
	many "$CLIENTS_WARM" "$PROXY/v2/images/$ID/file" | cut -d' ' -f1 >>"$BENCH_DIR/a-glimpse.txt"
	many "$CLIENTS_WARM" "http://127.0.0.1:$NGINX_PORT/image.raw" | cut -d' ' -f1 >>"$BENCH_DIR/a-nginx.txt"
	many "$CLIENTS_WARM" "$GLANCE/v2/images/$ID/file" | cut -d' ' -f1 >>"$BENCH_DIR/a-glance.txt"
done
AG=$(median 3 <"$BENCH_DIR/a-glimpse.txt")
AN=$(median 3 <"$BENCH_DIR/a-nginx.txt")
AL=$(median 3 <"$BENCH_DIR/a-glance.txt")
TOTAL=$((BYTES * CLIENTS_WARM))

echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf "(a) warm, %d clients, aggregate GB/s: glimpse %s, nginx %s, Glance's cache %s\n" "$CLIENTS_WARM" \
	"$(gbps "$TOTAL" "$AG")" "$(gbps "$TOTAL" "$AN")" "$(gbps "$TOTAL" "$AL")"
awk -v g="$AG" -v n="$AN" -v l="$AL" 'BEGIN { r = n / g; printf "    glimpse / nginx = %.2f (target >= 0.90: %s); glimpse / Glance = %.2f\n", r, (r >= 0.9 ? "ok" : "MISSED"), l / g }'
awk -v c="$COLD" -v d="$DIRECT" -v h="$HASH_FLOOR" -v b="$BYTES" 'BEGIN {
	r = c / d
	printf "(b) cold fill, one client: %.3f s vs direct %.3f s = %.2f x (target <= 1.20: %s)\n", c, d, r, (r <= 1.2 ? "ok" : "MISSED")
	printf "    md5sum alone takes %.2f s on this image here: a fill that verifies before the last byte cannot be faster\n", h }'
awk -v s="$C_SLOWEST" -v d="$DIRECT" -v u="$UP_OK" -v n="$CLIENTS_COLD" 'BEGIN {
	r = s / d
	printf "(c) %d concurrent cold clients: one upstream download: %s; slowest client %.3f s = %.2f x direct (target <= 1.50: %s)\n", n, (u == "yes" ? "yes" : u), s, r, (r <= 1.5 ? "ok" : "MISSED") }'
awk -v p="$PEAK" 'BEGIN { printf "(d) glimpse peak RSS during (c): %.1f MiB (target < 100: %s)\n", p / 1024, (p < 102400 ? "ok" : "MISSED") }'
