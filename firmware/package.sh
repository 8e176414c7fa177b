#!/usr/bin/env bash
# Builds the forest-agent Debian packages:
#
#   bash firmware/package.sh [amd64|arm64|all]    (default: all)
#   bash firmware/package.sh version              (print the version only)
#
# writes dist/forest-agent_<version>_<arch>.deb, each holding
#
#   /usr/bin/forest-agent                         the agent (cgo; arm64 cross-built
#                                                 with Debian's gcc-aarch64-linux-gnu)
#   /usr/lib/forest-agent/libonnxruntime.so.1     ONNX Runtime for that arch, from the
#                                                 pinned onnxruntime-node (.ci/deps.sh)
#   /usr/share/forest-agent/models/*.onnx         the shipped models (segment/models):
#                                                 canopy-aerial-v1 (the default) and
#                                                 forest-unet-v1 (satellite)
#   /usr/lib/systemd/system/forest-agent.service  the hardened unit
#   /etc/forest-agent/agent.yaml                  the default config (a conffile)
#   /usr/share/doc/forest-agent/                  README, copyright, model cards
#
# The version comes from `git describe --tags --always --dirty`, made
# Debian-valid: tag v1.2.3 -> 1.2.3, 3 commits later -> 1.2.3+git3.gabc1234, no
# tag -> 0.0.0~git<commit date>.<sha>; a dirty tree appends .dirty.
#
# Environment: FOREST_MODEL_DIR overrides segment/models; VERSION overrides the
# version; DIST the output directory (default dist). Missing Debian build tools
# (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross) are apt-get installed when
# run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
say() { printf 'package: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

arches=${1:-all}
case "$arches" in
all) arches="amd64 arm64" ;;
amd64 | arm64 | version) ;;
*) die "usage: bash firmware/package.sh [amd64|arm64|all|version]" ;;
esac

dist=${DIST:-$root/dist}
model_dir=${FOREST_MODEL_DIR:-$root/segment/models}
config=$root/firmware/agent.yaml
unit=$root/firmware/forest-agent.service
GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go

apt_install() {
	local missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	[ "$(id -u)" = 0 ] || die "missing Debian packages: ${missing[*]}; run as root or: sudo apt-get install ${missing[*]}"
	say "apt-get install ${missing[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# deb_version turns `git describe --tags --always --dirty` into a Debian
# version. Only output naming a tag (v1.2.3, v1.2.3-4-gabc1234) counts as
# one; a bare commit id (which may start with a digit) means "no tag yet".
deb_version() {
	local d sha date dirty=
	d=$(git describe --tags --always --dirty 2>/dev/null) || d=unknown
	case "$d" in *-dirty) dirty=.dirty d=${d%-dirty} ;; esac
	if git describe --tags --abbrev=0 >/dev/null 2>&1; then
		if [[ $d =~ ^v?([0-9][0-9A-Za-z.~+]*)-([0-9]+)-g([0-9a-f]+)$ ]]; then
			echo "${BASH_REMATCH[1]}+git${BASH_REMATCH[2]}.g${BASH_REMATCH[3]}$dirty"
			return
		elif [[ $d =~ ^v?([0-9][0-9A-Za-z.~+]*)$ ]]; then
			echo "${BASH_REMATCH[1]}${dirty:++dirty}"
			return
		fi
	fi
	sha=$(git rev-parse --short=7 HEAD 2>/dev/null || echo 0000000)
	date=$(git log -1 --format=%cd --date=format:%Y%m%d 2>/dev/null || date -u +%Y%m%d)
	echo "0.0.0~git$date.$sha$dirty"
}

version=${VERSION:-$(deb_version)}
[ "$arches" != version ] || { echo "$version"; exit 0; }
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ $version =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "not a Debian version: $version"
# Reproducible timestamps: the commit time.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

[ -f "$config" ] || die "missing $config (the default agent config)"
shopt -s nullglob
models=("$model_dir"/*.onnx)
shopt -u nullglob
((${#models[@]})) || die "no model in $model_dir (train it, or set FOREST_MODEL_DIR)"
[ -d "$root/agent/cmd/forest-agent" ] || die "agent/cmd/forest-agent does not exist yet"

host=$(dpkg --print-architecture)
mkdir -p "$dist"
for arch in $arches; do
	case "$arch" in
	amd64) goarch=amd64 ort=linux-x64 triplet=x86_64-linux-gnu ;;
	arm64) goarch=arm64 ort=linux-arm64 triplet=aarch64-linux-gnu ;;
	esac
	lib=$root/.cache/onnxruntime/$ort/libonnxruntime.so.1
	if ! (cd "$root/.cache/onnxruntime" 2>/dev/null && grep "$ort/libonnxruntime" "$root/.ci/onnxruntime.sha256" | sha256sum --quiet -c - 2>/dev/null); then
		say "ONNX Runtime for $ort missing or not the pinned one; running .ci/deps.sh"
		bash "$root/.ci/deps.sh"
	fi
	cc=gcc
	if [ "$arch" != "$host" ]; then
		cc=$triplet-gcc
		case "$arch" in
		arm64) apt_install gcc-aarch64-linux-gnu libc6-dev-arm64-cross ;;
		amd64) apt_install gcc-x86-64-linux-gnu libc6-dev-amd64-cross ;;
		esac
	fi

	stage=$(mktemp -d)
	chmod 0755 "$stage"
	trap 'rm -rf "$stage"' EXIT
	umask 022
	install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/forest-agent" \
		"$stage/usr/share/forest-agent/models" "$stage/usr/lib/systemd/system" \
		"$stage/etc/forest-agent" "$stage/usr/share/doc/forest-agent"

	say "go build forest-agent $version linux/$goarch (CC=$cc)"
	CGO_ENABLED=1 GOOS=linux GOARCH=$goarch CC=$cc \
		"$GO" build -trimpath -buildvcs=false \
		-ldflags "-s -w -X github.com/forestwatch/forest/agent.Version=$version -X github.com/forestwatch/forest/agent.Commit=$commit -X github.com/forestwatch/forest/agent.BuildUnix=$(git -C "$root" log -1 --format=%ct 2>/dev/null || echo 0)" \
		-o "$stage/usr/bin/forest-agent" ./agent/cmd/forest-agent

	install -m 0644 "$lib" "$stage/usr/lib/forest-agent/libonnxruntime.so.1"
	install -m 0644 "${models[@]}" "$stage/usr/share/forest-agent/models/"
	install -m 0644 "$unit" "$stage/usr/lib/systemd/system/forest-agent.service"
	install -m 0644 "$config" "$stage/etc/forest-agent/agent.yaml"
	install -m 0644 "$root/firmware/README.md" "$root/firmware/debian/copyright" "$stage/usr/share/doc/forest-agent/"
	for card in MODEL_CARD.md CANOPY_AERIAL.md; do
		[ ! -f "$model_dir/$card" ] || install -m 0644 "$model_dir/$card" "$stage/usr/share/doc/forest-agent/"
	done
	install -m 0755 "$root/firmware/debian/postinst" "$root/firmware/debian/prerm" "$root/firmware/debian/postrm" "$stage/DEBIAN/"
	echo /etc/forest-agent/agent.yaml >"$stage/DEBIAN/conffiles"

	# libc6 at least the newest GLIBC_ symbol version the binary or the
	# library needs.
	glibc=$(objdump -T "$stage/usr/bin/forest-agent" "$stage/usr/lib/forest-agent/libonnxruntime.so.1" |
		grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -Vu | tail -1)
	size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
	cat >"$stage/DEBIAN/control" <<CONTROL
Package: forest-agent
Version: $version
Architecture: $arch
Maintainer: Forestwatch <forest@forestwatch.invalid>
Installed-Size: $size
Depends: libc6 (>= $glibc), libstdc++6 (>= 7), libgcc-s1 | libgcc1, adduser | passwd
Recommends: systemd, libwebp-dev
Section: misc
Priority: optional
Homepage: https://github.com/forestwatch/forest
Description: edge agent for forest monitoring imagery
 forest-agent captures camera frames, finds the forest in each with an ONNX
 segmentation model run by the bundled ONNX Runtime, keeps them in a durable
 spool and ships them to RabbitMQ with publisher confirms.
 .
 Runs as the hardened systemd service forest-agent.service under the system
 user forest-agent; configure /etc/forest-agent/agent.yaml.
CONTROL
	find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	out=$dist/forest-agent_${version}_${arch}.deb
	dpkg-deb --build --root-owner-group -Zxz "$stage" "$out" >/dev/null
	rm -rf "$stage"
	trap - EXIT
	say "wrote $out"
	echo "$out"
done
