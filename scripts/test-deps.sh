#!/usr/bin/env bash
# test-deps.sh: install what the tests need when it is missing, or fail loudly.
# Tools: qemu-img and qemu-io (qemu-utils), genisoimage and xorriso (ISO fixtures), tar,
# sfdisk and sgdisk (partition-table fixtures), cryptsetup (LUKS2 fixtures), 7z (p7zip-full:
# a second, independent reader of what the writers produce), Glance and its CLI (store and
# proxy tests).
# apt-get update runs at most once per call, and only when something is missing.
set -euo pipefail

need=()
command -v qemu-img  >/dev/null || need+=(qemu-utils)
command -v qemu-io   >/dev/null || need+=(qemu-utils)
command -v genisoimage >/dev/null || need+=(genisoimage)
command -v xorriso   >/dev/null || need+=(xorriso)
command -v tar       >/dev/null || need+=(tar)
command -v bzip2     >/dev/null || need+=(bzip2)
command -v sfdisk    >/dev/null || need+=(fdisk)
command -v sgdisk    >/dev/null || need+=(gdisk)
command -v cryptsetup >/dev/null || need+=(cryptsetup-bin)
command -v 7z        >/dev/null || need+=(p7zip-full)

# The real Glance (glance-api) and its CLI (python3-glanceclient, a dependency of glance-api),
# for the store and proxy tests: installed by ../shared/glance/glance-server, the way the tests
# start it, once here so that test packages running in parallel never race on apt-get.
glance_server=${GLANCE_SERVER:-$(cd "$(dirname "$0")/.." && pwd)/../shared/glance/glance-server}
install_glance() {
	{ [ -x /usr/bin/glance-api ] && [ -x /usr/bin/glance ]; } && return 0
	if [ ! -x "$glance_server" ]; then
		if [ "${CI:-}" = true ]; then
			echo "test-deps: $glance_server is missing: the Glance tests cannot run under CI=true" >&2
			exit 1
		fi
		echo "test-deps: no ../shared/glance/glance-server beside the checkout: the tests against a real Glance will skip" >&2
		return 0
	fi
	echo "test-deps: installing Glance through $glance_server" >&2
	local state port
	state=$(mktemp -d)
	port=$((20000 + RANDOM % 10000))
	if ! "$glance_server" start "$state" "$port" --noauth >/dev/null; then
		echo "test-deps: glance-server could not install and start Glance" >&2
		exit 1
	fi
	"$glance_server" stop "$state" >/dev/null 2>&1 || true
	rm -rf "$state"
	[ -x /usr/bin/glance ] || need+=(python3-glanceclient)
}
install_glance

if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
# de-duplicate
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
echo "test-deps: installing ${need[*]}" >&2
sudo=
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null; then sudo="sudo -n"; else
		echo "test-deps: need root (or sudo) to install ${need[*]}; install them and run make test again" >&2
		exit 1
	fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get update -qq; then
	echo "test-deps: apt-get update failed; cannot install ${need[*]}" >&2
	exit 1
fi
if ! $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
	echo "test-deps: apt-get install ${need[*]} failed" >&2
	exit 1
fi
for t in qemu-img qemu-io genisoimage xorriso tar sfdisk sgdisk cryptsetup; do
	command -v "$t" >/dev/null || { echo "test-deps: $t still missing after install" >&2; exit 1; }
done
