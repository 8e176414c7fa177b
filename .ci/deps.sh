#!/usr/bin/env bash
# Installs everything the build and the tests need from outside the Go module,
# idempotently. Installs go to .cache/ (git-ignored) except the Debian packages.
#
#   Go 1.26       must be on the PATH already (Debian 12's golang is 1.19)
#   C toolchain   apt-get install gcc libc6-dev binutils (cgo for ONNX Runtime;
#                 readelf for the firmware tests)
#   systemd       apt-get install systemd (systemd-analyze for the unit tests;
#                 nothing is started)
#   Chromium      apt-get install chromium (the status and fleet page tests)
#   promtool      apt-get install prometheus (checks the example alerting rules;
#                 the Prometheus service is not started)
#   libwebp       apt-get install libwebp-dev (the system libwebp.so the
#                 agent's WebP encoder loads when present, as the device
#                 package recommends; .ci/test.sh also tests the built-in
#                 WebAssembly one)
#   RabbitMQ      apt-get install rabbitmq-server (not started: the test
#                 harness starts its own broker on 127.0.0.1)
#   versitygw     go install at a pinned version into .cache/bin
#   MinIO         go install at a pinned version into .cache/bin: the second S3
#                 server the cloud tests run against (test-only; AGPL, never
#                 linked or shipped)
#   ONNX Runtime  libonnxruntime.so.1 for linux-x64 and linux-arm64, from the
#                 npm package onnxruntime-node, checked against .ci/onnxruntime.sha256
#   staticcheck   go install at a pinned version into .cache/bin
#
# `deps.sh bench` also installs what `make bench` needs: the Python service
# forest-cloud replaces (../shared/peers/legacy_consumer.py) runs on
# Debian's python3-pika, python3-boto3 and python3-pil.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache=$root/.cache
mkdir -p "$cache/bin"

VERSITYGW_VERSION=v1.8.0
# MinIO tags releases as RELEASE.<date>, which the module proxy does not
# resolve; this is the pseudo-version of the newest commit it serves.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
STATICCHECK_VERSION=v0.8.2
ORT_NPM=onnxruntime-node@1.24.1

say() { printf 'deps: %s\n' "$*"; }

apt_install() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	if [ "$(id -u)" != 0 ]; then
		say "missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}"
		exit 1
	fi
	say "apt-get install ${missing[*]}"
	# Keep the package scripts from starting a system-wide broker that would
	# listen on every interface: the harness starts its own on 127.0.0.1.
	local prc=/usr/sbin/policy-rc.d made=
	if [ ! -e $prc ]; then printf '#!/bin/sh\nexit 101\n' >$prc && chmod +x $prc && made=1; fi
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	[ -z "$made" ] || rm -f $prc
}

go_tool() { # name module version
	local name=$1 mod=$2 ver=$3 stamp=$cache/bin/.$1.version
	if [ -x "$cache/bin/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$ver" ]; then return 0; fi
	say "go install $mod@$ver"
	GOBIN=$cache/bin go install "$mod@$ver"
	echo "$ver" >"$stamp"
}

onnxruntime() {
	local dir=$cache/onnxruntime sums=$root/.ci/onnxruntime.sha256
	if [ -f "$dir/.ok" ] && (cd "$dir" && grep 'libonnxruntime' "$sums" | sha256sum --quiet -c -); then return 0; fi
	command -v npm >/dev/null || apt_install npm
	say "npm pack $ORT_NPM"
	local tmp
	tmp=$(mktemp -d)
	(cd "$tmp" && npm pack --silent "$ORT_NPM" >/dev/null)
	(cd "$tmp" && grep 'tgz$' "$sums" | sha256sum --quiet -c -) || { say "onnxruntime-node tarball checksum mismatch"; exit 1; }
	mkdir -p "$dir/linux-x64" "$dir/linux-arm64"
	for a in x64 arm64; do
		tar -xzf "$tmp"/onnxruntime-node-*.tgz -O "package/bin/napi-v6/linux/$a/libonnxruntime.so.1" >"$dir/linux-$a/libonnxruntime.so.1"
	done
	rm -rf "$tmp"
	(cd "$dir" && grep 'libonnxruntime' "$sums" | sha256sum --quiet -c -) || { say "libonnxruntime checksum mismatch"; exit 1; }
	touch "$dir/.ok"
}

go_ok() {
	local v
	v=$(go env GOVERSION 2>/dev/null) || return 1
	v=${v#go}
	local major=${v%%.*} rest=${v#*.}
	local minor=${rest%%.*}
	((major > 1 || (major == 1 && minor >= 26)))
}
go_ok || { say "Go 1.26 or later is needed on the PATH (found: $(go env GOVERSION 2>/dev/null || echo none)); Debian 12's golang package is 1.19: install Go 1.26 and put its bin/ on the PATH"; exit 1; }

apt_install rabbitmq-server ca-certificates chromium gcc libc6-dev binutils systemd prometheus libwebp-dev
go_tool versitygw github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION"
go_tool minio github.com/minio/minio "$MINIO_VERSION"
go_tool staticcheck honnef.co/go/tools/cmd/staticcheck "$STATICCHECK_VERSION"
onnxruntime
if [ "${1:-}" = bench ]; then
	apt_install python3-pika python3-boto3 python3-pil
fi
say "ok in ${SECONDS}s (.cache/bin: versitygw $VERSITYGW_VERSION, minio $MINIO_VERSION, staticcheck $STATICCHECK_VERSION; .cache/onnxruntime: $ORT_NPM)"
