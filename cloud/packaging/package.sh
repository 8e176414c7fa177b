#!/usr/bin/env bash
# Builds the forest-cloud Debian packages:
#
#   bash cloud/packaging/package.sh [amd64|arm64|all]    (default: all)
#
# writes dist/forest-cloud_<version>_<arch>.deb, each holding
#
#   /usr/bin/forest-cloud                         the consumer (pure Go, static:
#                                                 CGO_ENABLED=0, cross-built for arm64)
#   /usr/lib/systemd/system/forest-cloud.service  the hardened unit (Type=notify,
#                                                 watchdog, config check before start)
#   /etc/forest-cloud/cloud.yaml                  the documented config (a conffile)
#   /usr/share/doc/forest-cloud/                  README, copyright, RabbitMQ definitions
#
# The version is forest-agent's (`bash firmware/package.sh version`: the same
# git describe made Debian-valid), so both packages of one commit match.
#
# Environment: VERSION overrides the version; DIST the output directory
# (default dist).
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
say() { printf 'package: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

arches=${1:-all}
case "$arches" in
all) arches="amd64 arm64" ;;
amd64 | arm64) ;;
*) die "usage: bash cloud/packaging/package.sh [amd64|arm64|all]" ;;
esac

dist=${DIST:-$root/dist}
here=$root/cloud/packaging
config=$root/cloud/cmd/forest-cloud/cloud.yaml
GO=${GO:-go}
command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go

version=${VERSION:-$(bash "$root/firmware/package.sh" version)}
[[ $version =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "not a Debian version: $version"
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

mkdir -p "$dist"
for arch in $arches; do
	stage=$(mktemp -d)
	chmod 0755 "$stage"
	trap 'rm -rf "$stage"' EXIT
	umask 022
	install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/usr/lib/systemd/system" \
		"$stage/etc/forest-cloud" "$stage/usr/share/doc/forest-cloud"

	say "go build forest-cloud $version linux/$arch"
	CGO_ENABLED=0 GOOS=linux GOARCH=$arch "$GO" build -trimpath -buildvcs=false \
		-ldflags "-s -w -X main.version=$version" \
		-o "$stage/usr/bin/forest-cloud" ./cloud/cmd/forest-cloud

	install -m 0644 "$here/forest-cloud.service" "$stage/usr/lib/systemd/system/forest-cloud.service"
	install -m 0644 "$config" "$stage/etc/forest-cloud/cloud.yaml"
	install -m 0644 "$root/README.md" "$here/debian/copyright" "$root/firmware/rabbitmq/definitions.json" \
		"$stage/usr/share/doc/forest-cloud/"
	install -m 0755 "$here/debian/postinst" "$here/debian/prerm" "$here/debian/postrm" "$stage/DEBIAN/"
	echo /etc/forest-cloud/cloud.yaml >"$stage/DEBIAN/conffiles"

	size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
	cat >"$stage/DEBIAN/control" <<CONTROL
Package: forest-cloud
Version: $version
Architecture: $arch
Maintainer: Forestwatch <forest@forestwatch.invalid>
Installed-Size: $size
Depends: adduser | passwd
Recommends: systemd
Section: net
Priority: optional
Homepage: https://github.com/forestwatch/forest
Description: stores forest monitoring frames from RabbitMQ in S3
 forest-cloud consumes the frames forest-agent devices publish to RabbitMQ
 and writes each frame's image, forest mask and JSON sidecar to S3, acking a
 message only once S3 holds every object, verified by SHA-256. S3 outages
 pause it without losing or dead-lettering anything.
 .
 Runs as the hardened systemd service forest-cloud.service under the system
 user forest-cloud; configure /etc/forest-cloud/cloud.yaml and the secrets
 in /etc/forest-cloud/environment.
CONTROL
	find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	out=$dist/forest-cloud_${version}_${arch}.deb
	dpkg-deb --build --root-owner-group -Zxz "$stage" "$out" >/dev/null
	rm -rf "$stage"
	trap - EXIT
	say "wrote $out"
	echo "$out"
done
