# Sourced by test.sh and bench.sh: where the tests find what `make deps`
# installed, and how to clean up after test binaries that died early.
arch=$( [[ $(uname -m) == aarch64 || $(uname -m) == arm64 ]] && echo arm64 || echo x64 )
export ONNXRUNTIME_LIB=${ONNXRUNTIME_LIB:-$PWD/.cache/onnxruntime/linux-$arch/libonnxruntime.so.1}
export FOREST_VERSITYGW=${FOREST_VERSITYGW:-$PWD/.cache/bin/versitygw}
export FOREST_MINIO=${FOREST_MINIO:-$PWD/.cache/bin/minio}

# FOREST_RUN tags every process this run starts: they inherit it. leftovers
# kills the ones still running at exit (servers of a test binary that died
# before its cleanup ran), and nothing of another run on the same machine.
export FOREST_RUN="run-$$-$RANDOM$RANDOM"
leftovers() {
	local f pid
	for f in $(grep -lsxzF "FOREST_RUN=$FOREST_RUN" /proc/[0-9]*/environ); do
		pid=${f#/proc/}
		pid=${pid%/environ}
		kill -KILL "$pid" 2>/dev/null || true
	done
}
trap leftovers EXIT
