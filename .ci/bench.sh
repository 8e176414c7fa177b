#!/usr/bin/env bash
# `make bench`: every benchmark against its raw library, in one run on this
# machine, with the settings BENCHMARKS.md quotes. Output goes to the
# terminal and to .cache/bench/<package>.txt; compare medians.
#
#   bash .ci/bench.sh [COUNT]      (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-5}
. .ci/env.sh
out=.cache/bench
mkdir -p "$out"

bench() { # name package args...
	local name=$1 pkg=$2
	shift 2
	echo "== $name: go test $pkg $*"
	go test -run '^$' -benchmem "$@" "$pkg" | tee -a "$out/$name.txt"
}
rm -f "$out"/*.txt

# spool: durable Put (sequential, 4 producers, interleaved ratio), Ack of 64,
# against raw bbolt; RSS growth with 10,000 frames spooled.
bench spool ./spool -bench 'Put|AltBlob' -count "$count"
bench spool ./spool -bench 'Ack64' -benchtime 40x -count "$count"
bench spool ./spool -bench 'Memory10k' -benchtime 1x -count 3
# segment: Model.Segment against a bare onnxruntime_go Run (x_bare); the
# aerial model's default tiling on 2048x2048 and 4000x3000 frames against the
# bare Run once per window (seconds per frame, so a fixed count).
bench segment ./segment -bench 'BenchmarkSegment$|MaskFromScore|BoxDownscale' -count "$count"
bench segment ./segment -bench 'BenchmarkSegmentAerial' -benchtime 6x -count 3 -timeout 30m
# uplink: Publisher against bare amqp091-go, rounds interleaved.
bench uplink ./uplink -bench 'PublishRatio' -benchtime 16x -count 3
bench uplink ./uplink -bench 'Publish$' -benchtime 2000x -count 3
# agent: the drain from a spool to a quorum queue against bare amqp091-go;
# the per-frame pipeline against decode + segment alone.
bench agent ./agent -bench 'Drain$' -benchtime 2000x -count 3
bench agent ./agent -bench 'DrainRatio' -benchtime 5x -count 3
bench agent ./agent -bench 'Frame' -count "$count"
# encode: a 1-MP WebP encode through the system libwebp against the built-in
# WebAssembly one.
bench encode ./agent/encode -bench 'WebPEncode' -count "$count"
bench encode ./agent/encode -bench 'WebPEncode' -count "$count" -tags nodynamic
# cloud: queue -> S3 against bare aws-sdk-go-v2 PUTs.
bench cloud ./cloud -bench EndToEnd -count 3
# cloud: the old devices' legacy messages, forest-cloud against the Python
# service it replaces (../shared/peers/legacy_consumer.py), same messages,
# broker and S3 server; images/s, CPU per image, peak RSS and the ratios.
bench cloud-legacy ./cloud -bench Legacy -benchtime 1x -count 3

# Transmitted bytes against the legacy base64 JSON message, SSIM; the
# agent's RSS while spooling 1,000 frames; camera JPEGs of ../shared/data
# through the pipeline and the drain's wire message (issue 19's bar); 12-,
# 20- and 48-MP camera JPEGs through the binary: peak RSS, time against
# decode + segment, stage shares (issue 21's bars).
echo "== agent: transmitted size, camera JPEGs and RSS"
FOREST_AGENT_RSS=1 FOREST_BENCH_CAMERA=1 go test -count=1 -timeout 60m -run 'TestEncodeBudget|TestCameraWire|TestRSS1000Frames|TestLargeFrames' -v ./agent | grep -v '^=== RUN' | tee -a "$out/agent.txt"
# segment under emulation: the 2048x2048 aerial frame through the arm64 .deb
# under qemu-user-static against the amd64 .deb natively (builds both .debs
# when missing; minutes per emulated frame, so last).
echo "== segment-qemu: firmware/qemu-check.sh --bench"
bash firmware/qemu-check.sh --bench | tee -a "$out/segment-qemu.txt"
echo "bench: raw output in $out/"
