#!/usr/bin/env bash
# bench-store.sh: glimpse's embedded Image API store (`glimpse serve` without --upstream)
# beside a real Glance (Zed, file store, SQLite) in the same run on the same machine,
# reported as ratios (`make bench` calls it).
#
#   (1) upload: a SIZE_MIB (1024) MiB image of random bytes, `curl -T` to PUT
#       /v2/images/{id}/file, a new image each rep (deleted after; `sync` before each so that
#       no rep pays for the previous one's dirty pages). Target: glimpse >= 2 x Glance's MB/s.
#       For scale: how long md5sum and sha512sum take on the image (both servers compute
#       both hashes of every upload), and how long dd takes to write it to BENCH_DIR's disk
#       (O_DIRECT, 1 MiB writes, as glimpse writes uploads) with fdatasync (glimpse fsyncs an
#       upload before it answers; Glance does not).
#   (2) download: GET /v2/images/{id}/file of that image to /dev/null, page cache warm (one
#       warm-up download first, piped through md5sum and checked against the file and the
#       image's checksum). Target: glimpse >= 2 x Glance's MB/s. For scale: nginx (sendfile)
#       serving the same file to the same client, and the ceiling: a Go server sending the
#       bytes from memory, with no file at all, i.e. what curl can take over loopback here.
#   (3) list: N_IMAGES (10000) images created (metadata only) in each over HTTP, FILL_PAR (8)
#       requests in flight (curl --parallel: one process, keep-alive), the time taken reported;
#       then the median latency of LIST_CALLS (20) calls of each of: GET /v2/images (default
#       page), ?limit=1000, ?name=<one image>, and ?sort_key=name&sort_dir=asc&limit=25 with a
#       marker halfway down the sorted list. No target: reported as ratios.
#
# Each timed figure is the median of REPS runs (LIST_CALLS for (3)), glimpse and Glance
# alternating. curl is the client. glimpse runs with --auth none, Glance with --noauth (every
# caller an admin in both). glimpse starts empty every run. Glance's state (config, SQLite
# database, images, log) is BENCH_DIR/glance and is stopped on exit; filling it takes minutes
# (about 20-30 creates/s here), so a Glance filled by an earlier run with the same N_IMAGES is
# kept and its fill time reported from that run; FRESH=1 starts it empty and fills it again.
# Needs root (glance-server), Glance (../shared/glance/glance-server installs it), curl >= 7.66
# (--parallel) and nginx (nginx-light installed with apt-get when missing).
#
# Environment: BENCH_DIR (default /var/tmp/glimpse-bench-store), REPS (3), SIZE_MIB (1024),
# N_IMAGES (10000), LIST_CALLS (20), FILL_PAR (8), FRESH (unset), GLIMPSE (default
# bin/glimpse, built when missing), GLANCE_SERVER (../shared/glance/glance-server),
# PORT_BASE (21300: Glance, glimpse and nginx take the next three).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/glimpse-bench-store}
REPS=${REPS:-3}
SIZE_MIB=${SIZE_MIB:-1024}
N_IMAGES=${N_IMAGES:-10000}
LIST_CALLS=${LIST_CALLS:-20}
FILL_PAR=${FILL_PAR:-8}
FRESH=${FRESH:-}
GLIMPSE=${GLIMPSE:-$ROOT/bin/glimpse}
PORT_BASE=${PORT_BASE:-21300}
GLANCE_SERVER=${GLANCE_SERVER:-$ROOT/../shared/glance/glance-server}
GLANCE_PORT=$((PORT_BASE + 1))
GLIMPSE_PORT=$((PORT_BASE + 2))
NGINX_PORT=$((PORT_BASE + 3))
GLANCE=http://127.0.0.1:$GLANCE_PORT
STORE=http://127.0.0.1:$GLIMPSE_PORT
NGINX=http://127.0.0.1:$NGINX_PORT
BYTES=$((SIZE_MIB << 20))
GSTATE=$BENCH_DIR/glance
FILLED=$GSTATE/bench-filled # "N_IMAGES SECONDS DATE" once a fill succeeded

PROG=bench-store
# shellcheck source=scripts/bench-lib.sh
. "$ROOT/scripts/bench-lib.sh"
bench_prereqs
curl --help all 2>/dev/null | grep -q -- '--parallel-max' || die "curl is too old for --parallel (7.66 or later needed)"
START=$(date +%s)
mkdir -p "$BENCH_DIR/www"
IMG=$BENCH_DIR/www/image.raw
random_image "$IMG" "$BYTES"

# The download ceiling: a Go server that sends SIZE_MIB MiB from memory (no file, no hash,
# no database), as fast as curl takes bytes over loopback on this machine.
MEMSRV=$BENCH_DIR/memserve
if [ ! -x "$MEMSRV" ]; then
	mkdir -p "$MEMSRV.src"
	printf 'module memserve\n\ngo 1.21\n' >"$MEMSRV.src/go.mod"
	cat >"$MEMSRV.src/main.go" <<'GO'
// memserve ADDR BYTES: answers every GET with BYTES bytes sent from a 1 MiB buffer.
package main

import (
	"net/http"
	"os"
	"strconv"
)

func main() {
	n, _ := strconv.ParseInt(os.Args[2], 10, 64)
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 13)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		for left := n; left > 0; left -= int64(len(buf)) {
			if _, err := w.Write(buf[:min(left, int64(len(buf)))]); err != nil {
				return
			}
		}
	})
	http.ListenAndServe(os.Args[1], nil)
}
GO
	(cd "$MEMSRV.src" && CGO_ENABLED=0 go build -o "$MEMSRV" .) || die "cannot build the in-memory server"
fi
MEM_PORT=$((PORT_BASE + 4))
MEM=http://127.0.0.1:$MEM_PORT

GLIMPSE_PID=
NGINX_PID=
MEM_PID=
cleanup() {
	stop_pids "$GLIMPSE_PID" "$MEM_PID" "$NGINX_PID"
	"$GLANCE_SERVER" stop "$GSTATE" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# glimpse starts empty; Glance too unless an earlier run filled it with N_IMAGES images.
"$GLANCE_SERVER" stop "$GSTATE" >/dev/null 2>&1 || true
REUSE=
if [ -z "$FRESH" ] && [ -s "$FILLED" ] && [ "$(cut -d' ' -f1 "$FILLED")" = "$N_IMAGES" ]; then
	REUSE=1
else
	rm -rf "$GSTATE"
fi
rm -rf "$BENCH_DIR/glimpse-data" "$BENCH_DIR/t"
mkdir -p "$BENCH_DIR/t"
T=$BENCH_DIR/t

log "starting Glance (--noauth) on $GLANCE${REUSE:+, with the $N_IMAGES images of an earlier run}"
"$GLANCE_SERVER" start "$GSTATE" "$GLANCE_PORT" --noauth >/dev/null
log "starting glimpse (embedded store, --auth none) on $STORE"
"$GLIMPSE" serve --listen "127.0.0.1:$GLIMPSE_PORT" --data-dir "$BENCH_DIR/glimpse-data" --auth none \
	--log-level warn 2>"$BENCH_DIR/glimpse.log" &
GLIMPSE_PID=$!
"$MEMSRV" "127.0.0.1:$MEM_PORT" "$BYTES" &
MEM_PID=$!
start_nginx "$NGINX_PORT"
for _ in $(seq 100); do
	curl -sf "$STORE/healthcheck" >/dev/null 2>&1 && curl -sf -r 0-0 -o /dev/null "$NGINX/image.raw" 2>&1 &&
		curl -sf -I "$MEM/" >/dev/null 2>&1 && break
	kill -0 "$GLIMPSE_PID" 2>/dev/null || break
	sleep 0.1
done
curl -sf "$STORE/healthcheck" >/dev/null || die "glimpse did not start: $(cat "$BENCH_DIR/glimpse.log")"
curl -sf -r 0-0 -o /dev/null "$NGINX/image.raw" || die "nginx did not start: $(cat "$BENCH_DIR/nginx-error.log")"

# create BASE NAME: creates a raw/bare image, prints its id.
create() {
	local id
	id=$(curl -sf -H 'Content-Type: application/json' \
		-d "{\"name\": \"$2\", \"disk_format\": \"raw\", \"container_format\": \"bare\"}" "$1/v2/images" |
		sed -n 's/.*"id": *"\([^"]*\)".*/\1/p')
	[ -n "$id" ] || die "cannot create an image at $1"
	echo "$id"
}
# ids BASE QUERY: the ids of the images of one page, one a line.
ids() { curl -sf "$1/v2/images$2" | grep -o '"id": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/'; }
# field BASE ID KEY: a scalar field of an image ("null" included).
field() {
	curl -sf "$1/v2/images/$2" | sed -n "s/.*\"$3\": *\"\{0,1\}\([^\",}]*\)\"\{0,1\}[,}].*/\1/p"
}
delete() { curl -sf -X DELETE "$1/v2/images/$2" >/dev/null || die "cannot delete $2 at $1"; }
# upload BASE ID: PUTs the image file, prints the seconds it took; fails unless the image
# is then active with the right size.
upload() {
	local out
	out=$(curl -sS -X PUT -H 'Content-Type: application/octet-stream' -H 'Expect:' -T "$IMG" \
		-o "$T/upload-body" -w '%{http_code} %{time_total}' "$1/v2/images/$2/file") ||
		die "upload to $1 failed"
	[ "${out% *}" = 204 ] || die "upload to $1: HTTP ${out% *}: $(head -c 500 "$T/upload-body")"
	[ "$(field "$1" "$2" status)" = active ] || die "upload to $1: image $2 is not active"
	[ "$(field "$1" "$2" size)" = "$BYTES" ] || die "upload to $1: image $2 has size $(field "$1" "$2" size)"
	echo "${out#* }"
}
# download URL: GETs URL to /dev/null, prints the seconds; fails on a short body.
download() {
	local out
	out=$(curl -sf -o /dev/null -w '%{time_total} %{size_download}' "$1") || die "GET $1 failed"
	[ "${out#* }" = "$BYTES" ] || die "short download from $1: $out"
	echo "${out% *}"
}
# seconds CMD...: prints how long CMD took.
seconds() {
	local t0 t1
	t0=$(date +%s.%N)
	"$@" >/dev/null
	t1=$(date +%s.%N)
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}
mbps() { awk -v b="$BYTES" -v s="$1" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }
# verdict GLIMPSE_SECONDS GLANCE_SECONDS: the speed ratio and ok/MISSED against 2.
verdict() { awk -v g="$1" -v l="$2" 'BEGIN { r = l / g; printf "%.2f (target >= 2.00: %s)", r, (r >= 2 ? "ok" : "MISSED") }'; }
rss() { awk '/VmHWM/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

# An aborted earlier run may have left images behind in a kept Glance.
if [ -n "$REUSE" ]; then
	for name in bench-store-up bench-store-dl; do
		for id in $(ids "$GLANCE" "?name=$name"); do delete "$GLANCE" "$id"; done
	done
fi

echo
echo "glimpse store benchmark: $SIZE_MIB MiB image, $N_IMAGES images listed, $(nproc) CPUs" \
	"($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

# (1) upload, alternating; sync first so that each starts with no dirty pages.
cat "$IMG" >/dev/null # the source in the page cache
MD5_S=$(seconds md5sum "$IMG")
SHA512_S=$(seconds sha512sum "$IMG")
sync
DISK_S=$(seconds dd if="$IMG" of="$BENCH_DIR/dd.tmp" bs=1M oflag=direct conv=fdatasync status=none)
rm -f "$BENCH_DIR/dd.tmp"
: >"$T/up-glimpse"
: >"$T/up-glance"
for r in $(seq "$REPS"); do
	for base in "$STORE" "$GLANCE"; do
		id=$(create "$base" "bench-store-up")
		sync
		s=$(upload "$base" "$id")
		if [ "$base" = "$STORE" ]; then echo "$s" >>"$T/up-glimpse"; else echo "$s" >>"$T/up-glance"; fi
		log "upload rep $r $base: $s s"
		delete "$base" "$id"
	done
done
UG=$(median 6 <"$T/up-glimpse")
UL=$(median 6 <"$T/up-glance")

# (2) download, alternating, after one checked warm-up download from each.
WANT_MD5=$(md5sum <"$IMG" | cut -d' ' -f1)
DL_GLIMPSE=$(create "$STORE" "bench-store-dl")
DL_GLANCE=$(create "$GLANCE" "bench-store-dl")
upload "$STORE" "$DL_GLIMPSE" >/dev/null
upload "$GLANCE" "$DL_GLANCE" >/dev/null
sync
# check BASE ID: the warm-up download; its MD5 and the image's checksum must be the file's.
check() {
	local sum
	sum=$(curl -sf "$1/v2/images/$2/file" | md5sum | cut -d' ' -f1)
	[ "$sum" = "$WANT_MD5" ] || die "download from $1: md5 $sum, want $WANT_MD5"
	[ "$(field "$1" "$2" checksum)" = "$WANT_MD5" ] || die "$1: image checksum $(field "$1" "$2" checksum), want $WANT_MD5"
}
check "$STORE" "$DL_GLIMPSE"
check "$GLANCE" "$DL_GLANCE"
download "$NGINX/image.raw" >/dev/null
: >"$T/dl-glimpse"
: >"$T/dl-glance"
: >"$T/dl-nginx"
: >"$T/dl-mem"
for r in $(seq "$REPS"); do
	download "$MEM/" >>"$T/dl-mem"
	download "$STORE/v2/images/$DL_GLIMPSE/file" >>"$T/dl-glimpse"
	download "$GLANCE/v2/images/$DL_GLANCE/file" >>"$T/dl-glance"
	download "$NGINX/image.raw" >>"$T/dl-nginx"
	log "download rep $r: glimpse $(tail -1 "$T/dl-glimpse") s, Glance $(tail -1 "$T/dl-glance") s, nginx $(tail -1 "$T/dl-nginx") s"
done
DG=$(median 6 <"$T/dl-glimpse")
DL=$(median 6 <"$T/dl-glance")
DN=$(median 6 <"$T/dl-nginx")
DM=$(median 6 <"$T/dl-mem")
delete "$STORE" "$DL_GLIMPSE"
delete "$GLANCE" "$DL_GLANCE"

# (3) list: fill both with N_IMAGES images named img-00001..., in one curl process each.
# fill BASE: prints the seconds it took; fails unless every create answered 201.
fill() {
	local i t0 t1 ok
	for i in $(seq -f '%05g' "$N_IMAGES"); do
		[ "$i" = 00001 ] || echo next
		printf -- '-s\n-o /dev/null\n-w "%%{http_code}\\n"\n-H "Content-Type: application/json"\n'
		printf -- '-d "{\\"name\\": \\"img-%s\\", \\"disk_format\\": \\"raw\\", \\"container_format\\": \\"bare\\"}"\n' "$i"
		printf 'url = "%s/v2/images"\n' "$1"
	done >"$T/fill.cfg"
	t0=$(date +%s.%N)
	curl -Z --parallel-max "$FILL_PAR" -K "$T/fill.cfg" 2>>"$T/fill.err" >"$T/fill.codes" || true
	t1=$(date +%s.%N)
	ok=$(grep -c '^201$' "$T/fill.codes" || true)
	[ "$ok" = "$N_IMAGES" ] || die "fill $1: $ok of $N_IMAGES created; codes: $(sort "$T/fill.codes" | uniq -c | tr '\n' ' ')"
	awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }'
}
log "creating $N_IMAGES images in glimpse"
FILL_GLIMPSE=$(fill "$STORE")
log "created in $FILL_GLIMPSE s"
if [ -n "$REUSE" ]; then
	FILL_GLANCE=$(cut -d' ' -f2 "$FILLED")
	FILL_NOTE=" (filled by the run of $(cut -d' ' -f3- "$FILLED"); FRESH=1 fills it again)"
else
	log "creating $N_IMAGES images in Glance (minutes)"
	FILL_GLANCE=$(fill "$GLANCE")
	log "created in $FILL_GLANCE s"
	echo "$N_IMAGES $FILL_GLANCE $(date -u '+%Y-%m-%d %H:%M UTC')" >"$FILLED"
	FILL_NOTE=
fi

MID=$(printf 'img-%05d' $((N_IMAGES / 2)))
MARK_GLIMPSE=$(ids "$STORE" "?name=$MID")
MARK_GLANCE=$(ids "$GLANCE" "?name=$MID")
[ "$(echo "$MARK_GLIMPSE" | wc -w)" = 1 ] || die "glimpse: $MID: '$MARK_GLIMPSE'"
[ "$(echo "$MARK_GLANCE" | wc -w)" = 1 ] || die "Glance: $MID: '$MARK_GLANCE'"
QUERIES=("" "?limit=1000" "?name=$MID" "?sort_key=name&sort_dir=asc&limit=25&marker=")
LABELS=("default page (25)" "limit=1000" "name=$MID" "sort name asc, 25 after $MID")
AFTER=$((N_IMAGES - N_IMAGES / 2))
WANT=($((N_IMAGES < 25 ? N_IMAGES : 25)) $((N_IMAGES < 1000 ? N_IMAGES : 1000)) 1 $((AFTER < 25 ? AFTER : 25)))
# names BASE QUERY: the image names of one page, in order, one a line.
names() { curl -sf "$1/v2/images$2" | grep -o '"name": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/'; }
# lat BASE QUERY: the seconds one list call took.
lat() { curl -sf -o /dev/null -w '%{time_total}\n' "$1/v2/images$2" || die "GET $1/v2/images$2 failed"; }
LIST_LINES=()
for q in 0 1 2 3; do
	qg=${QUERIES[$q]}
	ql=${QUERIES[$q]}
	if [ "$q" = 3 ]; then
		qg+=$MARK_GLIMPSE
		ql+=$MARK_GLANCE
	fi
	# The page's size from both, and the same page where the order is total (also the
	# warm-up call). The default order is created_at: glimpse keeps whole seconds, Glance
	# microseconds, so images created in the same second come in another order.
	names "$STORE" "$qg" >"$T/names-glimpse"
	names "$GLANCE" "$ql" >"$T/names-glance"
	n=$(wc -l <"$T/names-glimpse")
	[ "$n" = "${WANT[$q]}" ] || die "${LABELS[$q]}: glimpse returned $n images, want ${WANT[$q]}"
	[ "$(wc -l <"$T/names-glance")" = "${WANT[$q]}" ] || die "${LABELS[$q]}: Glance returned $(wc -l <"$T/names-glance") images"
	[ "$q" -lt 2 ] || cmp -s "$T/names-glimpse" "$T/names-glance" || die "${LABELS[$q]}: glimpse and Glance return different pages"
	: >"$T/lat-glimpse"
	: >"$T/lat-glance"
	for _ in $(seq "$LIST_CALLS"); do
		lat "$STORE" "$qg" >>"$T/lat-glimpse"
		lat "$GLANCE" "$ql" >>"$T/lat-glance"
	done
	lg=$(median 6 <"$T/lat-glimpse")
	ll=$(median 6 <"$T/lat-glance")
	LIST_LINES+=("$(awk -v g="$lg" -v l="$ll" -v name="${LABELS[$q]}" \
		'BEGIN { printf "    %-34s glimpse %8.2f ms, Glance %8.2f ms, Glance / glimpse = %6.1f x", name, g * 1000, l * 1000, l / g }')")
done

GLANCE_RSS=0
GPID=$(cat "$GSTATE/pid" 2>/dev/null || true)
if [ -n "$GPID" ]; then
	for p in "$GPID" $(pgrep -P "$GPID" || true); do
		GLANCE_RSS=$((GLANCE_RSS + $(rss "$p")))
	done
fi
GLIMPSE_RSS=$(rss "$GLIMPSE_PID")

echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf "(1) upload, %d MiB, median of %d: glimpse %s MB/s (%.3f s), Glance %s MB/s (%.3f s)\n" "$SIZE_MIB" "$REPS" \
	"$(mbps "$UG")" "$UG" "$(mbps "$UL")" "$UL"
echo "    glimpse / Glance = $(verdict "$UG" "$UL")"
printf "    for scale: md5sum of the image %.2f s (%s MB/s), sha512sum %.2f s (%s MB/s) (both servers compute both)\n" \
	"$MD5_S" "$(mbps "$MD5_S")" "$SHA512_S" "$(mbps "$SHA512_S")"
printf "    for scale: dd of the image into BENCH_DIR (O_DIRECT, as glimpse writes uploads) with fdatasync %.2f s (%s MB/s): glimpse answers an upload\n" \
	"$DISK_S" "$(mbps "$DISK_S")"
echo "    only once the data is on disk (fsync), Glance's file store leaves it in the page cache"
printf "(2) download, %d MiB, warm, median of %d: glimpse %s MB/s (%.3f s), Glance %s MB/s (%.3f s)\n" "$SIZE_MIB" "$REPS" \
	"$(mbps "$DG")" "$DG" "$(mbps "$DL")" "$DL"
echo "    glimpse / Glance = $(verdict "$DG" "$DL")"
awk -v g="$DG" -v n="$DN" -v m="$(mbps "$DN")" 'BEGIN {
	printf "    for scale: nginx (sendfile) serving the same file to curl %s MB/s (%.3f s), glimpse / nginx = %.2f\n", m, n, n / g }'
awk -v d="$DM" -v m="$(mbps "$DM")" -v l="$(mbps "$DL")" 'BEGIN {
	printf "    ceiling: a Go server sending the bytes from memory (no file at all) %s MB/s (%.3f s): the most curl takes\n", m, d
	printf "    over loopback here; 2 x Glance would be %d MB/s\n", 2 * l }'
awk -v n="$N_IMAGES" -v p="$FILL_PAR" -v g="$FILL_GLIMPSE" -v l="$FILL_GLANCE" -v note="$FILL_NOTE" 'BEGIN {
	printf "(3) creating %d images over HTTP, %d in flight: glimpse %.1f s (%.0f/s), Glance %.1f s (%.0f/s)%s\n", n, p, g, n / g, l, n / l, note }'
echo "    list latency with $N_IMAGES images, median of $LIST_CALLS calls:"
printf '%s\n' "${LIST_LINES[@]}"
awk -v g="$GLIMPSE_RSS" -v l="$GLANCE_RSS" 'BEGIN { printf "peak RSS: glimpse %.0f MiB, Glance (API processes) %.0f MiB\n", g / 1024, l / 1024 }'
echo "took $(($(date +%s) - START)) s"
