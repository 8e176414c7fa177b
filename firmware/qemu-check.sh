#!/usr/bin/env bash
# Proves the arm64 package runs: extracts the amd64 and arm64 .debs, runs
# `forest-agent segment` from each on the sample frames (arm64 under
# qemu-user-static, with the package's own arm64 ONNX Runtime), requires the
# same forest coverage within 0.5 percentage points, requires
# `forest-agent version` to report linux/arm64 and the packaged arm64 ONNX
# Runtime, and prints the time per 512×512 frame under emulation (a sign of
# life, not a device figure).
#
#   bash firmware/qemu-check.sh [--bench] [AMD64_DEB ARM64_DEB]
#
# --bench (run by `make bench`) times instead the device's default model,
# canopy-aerial-v1, with its default Auto tiling on 2 ONNX Runtime threads on a
# 2048×2048 aerial frame: the held-out OAM-TCD tile in segment/testdata/aerial
# mirrored edge to edge, the same pixels as BenchmarkSegmentAerial's 2048²
# frame, written to a temp dir by internal/benchframe/cmd/benchframe. Each process segments the
# frame 1+N times (N = FOREST_QEMU_BENCH_RUNS, default 3) and the first, warm-up
# call is dropped; the amd64 binary runs before and after the emulated arm64 one
# so both see the machine's load. It prints the medians of the `segment_ms`
# (wall) and `segment_cpu_ms` (CPU time of all threads, which a loaded machine
# inflates less) that `forest-agent segment --json` reports, their ratios
# (emulated/native) and the load average, and requires the same windows and
# coverage within 0.5 percentage points. qemu-user translates arm64 code on an amd64 CPU: the
# figure is emulation on this machine, not what a device does.
#
# Without arguments it uses dist/forest-agent_<version>_{amd64,arm64}.deb for
# the current version, building them with firmware/package.sh when missing.
# Installs qemu-user-static (and the arm64 runtime libraries) when run as root.
# Exit status 0 only when every check passes.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
say() { printf 'qemu-check: %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

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
apt_install qemu-user-static libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross
command -v python3 >/dev/null || die "python3 is needed to compare the results"

bench=
if [ "${1:-}" = --bench ]; then
	bench=1
	shift
fi
runs=${FOREST_QEMU_BENCH_RUNS:-3}
[[ $runs =~ ^[1-9][0-9]*$ ]] || die "FOREST_QEMU_BENCH_RUNS=$runs: want a count > 0"
[ $# -eq 0 ] || [ $# -eq 2 ] || die "usage: bash firmware/qemu-check.sh [--bench] [AMD64_DEB ARM64_DEB]"

if [ $# -eq 2 ]; then
	amd64_deb=$1 arm64_deb=$2
else
	version=$(bash firmware/package.sh version)
	amd64_deb=$root/dist/forest-agent_${version}_amd64.deb
	arm64_deb=$root/dist/forest-agent_${version}_arm64.deb
	for a in amd64 arm64; do
		deb=$root/dist/forest-agent_${version}_$a.deb
		[ -f "$deb" ] || VERSION=$version bash firmware/package.sh "$a" >/dev/null
	done
fi
[ -f "$amd64_deb" ] && [ -f "$arm64_deb" ] || die "packages missing: $amd64_deb $arm64_deb"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
dpkg-deb -x "$amd64_deb" "$work/amd64"
dpkg-deb -x "$arm64_deb" "$work/arm64"
file_arch() { readelf -h "$1" | awk -F: '/Machine/ { gsub(/^ +/, "", $2); print $2 }'; }
[ "$(file_arch "$work/arm64/usr/bin/forest-agent")" = AArch64 ] || die "arm64 binary is $(file_arch "$work/arm64/usr/bin/forest-agent")"
[ "$(file_arch "$work/arm64/usr/lib/forest-agent/libonnxruntime.so.1")" = AArch64 ] || die "arm64 package carries a non-arm64 ONNX Runtime"

frames=("$root"/firmware/testdata/frames/*.jpg)
if [ -n "$bench" ]; then
	GO=${GO:-go}
	command -v "$GO" >/dev/null || GO=/usr/local/go/bin/go
	"$GO" run ./internal/benchframe/cmd/benchframe -size 2048x2048 -o "$work/aerial-2048.png" segment/testdata/aerial/oam-tcd-0002.jpg
fi
qemu=(qemu-aarch64-static -L /usr/aarch64-linux-gnu)
# Run from $work (outside the checkout, so the agent does not find
# .cache/onnxruntime) without ONNXRUNTIME_LIB: each binary must load the
# library its package installs next to it.
cd "$work"
unset ONNXRUNTIME_LIB

say "forest-agent version (arm64, emulated):"
"${qemu[@]}" arm64/usr/bin/forest-agent version | tee version.arm64 >&2
grep -q 'linux/arm64' version.arm64 || die "version does not report linux/arm64"
grep -q "^onnxruntime 1\.24\.1 (.*/arm64/usr/lib/forest-agent/libonnxruntime.so.1)$" version.arm64 ||
	die "version does not show the packaged arm64 ONNX Runtime 1.24.1"

if [ -n "$bench" ]; then
	model=usr/share/forest-agent/models/canopy-aerial-v1.onnx
	frame=("aerial-2048.png")
	for ((i = 0; i < runs; i++)); do frame+=("aerial-2048.png"); done
	seg() { # arch outfile [qemu...]: warm-up + $runs Segment calls in one process
		local arch=$1 out=$2
		shift 2
		"$@" "$arch/usr/bin/forest-agent" segment --json --threads 2 --model "$arch/$model" "${frame[@]}" >"$out"
	}
	load_before=$(cut -d' ' -f1-3 /proc/loadavg)
	say "segment the 2048x2048 frame 1+$runs times, amd64 (native)"
	seg amd64 bench.amd64.1
	say "segment the 2048x2048 frame 1+$runs times, arm64 (qemu-user; minutes per frame)"
	seg arm64 bench.arm64 "${qemu[@]}"
	say "segment the 2048x2048 frame 1+$runs times, amd64 (native) again"
	seg amd64 bench.amd64.2
	load_after=$(cut -d' ' -f1-3 /proc/loadavg)
	python3 - "$load_before" "$load_after" "$(nproc)" bench.amd64.1 bench.arm64 bench.amd64.2 <<'PY'
import json, statistics, sys
load_before, load_after, cpus = sys.argv[1:4]
def calls(path):
    rows = [json.loads(l) for l in open(path)]
    if any(r.get("error") for r in rows):
        sys.exit(f"qemu-check: FAIL: {path}: {rows}")
    return rows[1:]  # the first call warms up
native = calls(sys.argv[4]) + calls(sys.argv[6])
emu = calls(sys.argv[5])
ok = True
med = {}
for name, rows in (("amd64 native", native), ("arm64 qemu-user", emu)):
    ms = [r["segment_ms"] for r in rows]
    cpu = [r["segment_cpu_ms"] for r in rows]
    med[name] = statistics.median(ms), statistics.median(cpu)
    print(f"{name:16} {rows[0]['width']}x{rows[0]['height']}, {rows[0]['windows']} windows, "
          f"coverage {rows[0]['coverage']*100:.2f} %: segment median {med[name][0]:.0f} ms wall, "
          f"{med[name][1]:.0f} ms CPU (runs {', '.join(f'{m:.0f}/{c:.0f}' for m, c in zip(ms, cpu))})")
d = abs(native[0]["coverage"] - emu[0]["coverage"]) * 100
if d > 0.5 or native[0]["windows"] != emu[0]["windows"]:
    print(f"arm64 differs: coverage {d:.3f} pp apart (limit 0.5), windows {emu[0]['windows']} vs {native[0]['windows']}")
    ok = False
(nw, nc), (ew, ec) = med["amd64 native"], med["arm64 qemu-user"]
print(f"canopy-aerial-v1, Auto tiling, 2 threads, 2048x2048: arm64 under qemu-user / amd64 native = "
      f"{ew/nw:.0f}x wall, {ec/nc:.0f}x CPU (emulation on this machine, not a device figure); "
      f"load average {load_before} before, {load_after} after, {cpus} CPUs")
print("qemu-check --bench: " + ("ok" if ok else "FAIL"))
sys.exit(0 if ok else 1)
PY
	exit
fi

model=usr/share/forest-agent/models/forest-unet-v1.onnx
say "segment ${#frames[@]} frames, amd64 (native)"
amd64/usr/bin/forest-agent segment --json --model "amd64/$model" "${frames[@]}" >seg.amd64
say "segment ${#frames[@]} frames, arm64 (qemu-user)"
start=$(date +%s.%N)
"${qemu[@]}" arm64/usr/bin/forest-agent segment --json --model "arm64/$model" "${frames[@]}" >seg.arm64
end=$(date +%s.%N)

python3 - seg.amd64 seg.arm64 "$start" "$end" <<'PY'
import json, statistics, sys, os
a = {r["file"]: r for r in map(json.loads, open(sys.argv[1]))}
b = {r["file"]: r for r in map(json.loads, open(sys.argv[2]))}
wall = float(sys.argv[4]) - float(sys.argv[3])
ok = set(a) == set(b) and len(a) > 0
print(f"{'frame':28} {'amd64 %':>8} {'arm64 %':>8} {'diff pp':>8} {'amd64 ms':>9} {'arm64 ms':>9}")
worst = 0.0
for f in sorted(a):
    ra, rb = a[f], b.get(f)
    if rb is None:
        print(f"{os.path.basename(f):28} missing on arm64"); ok = False; continue
    d = abs(ra["coverage"] - rb["coverage"]) * 100
    worst = max(worst, d)
    ok = ok and d <= 0.5 and (ra["width"], ra["height"]) == (rb["width"], rb["height"])
    print(f"{os.path.basename(f):28} {ra['coverage']*100:8.2f} {rb['coverage']*100:8.2f} {d:8.3f} {ra['ms']:9.1f} {rb['ms']:9.1f}")
ms = [b[f]["ms"] for f in b]
print(f"largest coverage difference: {worst:.3f} percentage points (limit 0.5)")
print(f"arm64 under qemu-user: median {statistics.median(ms):.0f} ms per 512x512 frame "
      f"(amd64 native median {statistics.median(a[f]['ms'] for f in a):.0f} ms); "
      f"whole arm64 run incl. start-up and model load {wall:.1f} s for {len(b)} frames")
print("qemu-check: " + ("ok" if ok else "FAIL"))
sys.exit(0 if ok else 1)
PY
