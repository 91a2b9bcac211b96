# shellcheck shell=bash
# bench-lib.sh: what bench-store.sh and bench-proxy.sh share. Source it after setting PROG
# (the name in messages), ROOT, BENCH_DIR, GLIMPSE and GLANCE_SERVER.

die() { echo "$PROG: $*" >&2; exit 1; }
log() { echo "$PROG: $*" >&2; }

# bench_prereqs: root (glance-server needs it), glance-server, curl, nginx (installed when
# missing) and a glimpse binary (built when missing).
bench_prereqs() {
	[ "$(id -u)" = 0 ] || die "must run as root (glance-server)"
	[ -x "$GLANCE_SERVER" ] || die "$GLANCE_SERVER is missing (../shared beside the repository)"
	command -v curl >/dev/null || die "curl not found"
	if ! command -v nginx >/dev/null; then
		log "installing nginx-light"
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -qq --no-install-recommends nginx-light >/dev/null 2>&1 ||
			{ apt-get update -qq && apt-get install -y -qq --no-install-recommends nginx-light >/dev/null; } ||
			die "cannot install nginx"
	fi
	if [ ! -x "$GLIMPSE" ]; then
		log "building $GLIMPSE"
		make -C "$ROOT" build BIN="$GLIMPSE" >&2
	fi
}

# random_image PATH BYTES: a file of random bytes, made once and kept for later runs.
random_image() {
	if [ ! -s "$1" ] || [ "$(stat -c %s "$1")" != "$2" ]; then
		log "making a $(($2 >> 20)) MiB image of random bytes (once)"
		head -c "$2" /dev/urandom >"$1.part"
		mv "$1.part" "$1"
	fi
}

# stop_pids PID...: kills and reaps each (empty ones skipped) and never fails: under set -e a
# failing `wait` (a killed process's status is 143) would end an EXIT trap before the rest
# of the clean-up ran, leaving nginx and Glance running after the script.
stop_pids() {
	local pid
	for pid in "$@"; do
		[ -n "$pid" ] || continue
		kill "$pid" 2>/dev/null || continue
		wait "$pid" 2>/dev/null || true
	done
}

# start_nginx PORT: nginx (sendfile on) serving $BENCH_DIR/www on 127.0.0.1:PORT in the
# background; its pid goes to NGINX_PID.
start_nginx() {
	cat >"$BENCH_DIR/nginx.conf" <<CONF
worker_processes auto;
daemon off;
pid $BENCH_DIR/nginx.pid;
error_log $BENCH_DIR/nginx-error.log;
events { worker_connections 1024; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	keepalive_timeout 65;
	server {
		listen 127.0.0.1:$1;
		root $BENCH_DIR/www;
	}
}
CONF
	nginx -c "$BENCH_DIR/nginx.conf" -p "$BENCH_DIR" &
	# shellcheck disable=SC2034 # read by the scripts that source this one
	NGINX_PID=$!
}

# median DIGITS: the median of the numbers on standard input, printed with DIGITS decimals
# when it is the mean of the middle two.
median() {
	sort -g | awk -v d="$1" '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%." d "f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
