# Sourced by test.sh and bench.sh: where the tests find what `make deps`
# installed, and how to clean up after test binaries that died early.
arch=$( [[ $(uname -m) == aarch64 || $(uname -m) == arm64 ]] && echo arm64 || echo x64 )
export ONNXRUNTIME_LIB=${ONNXRUNTIME_LIB:-$PWD/.cache/onnxruntime/linux-$arch/libonnxruntime.so.1}
export FOREST_VERSITYGW=${FOREST_VERSITYGW:-$PWD/.cache/bin/versitygw}

# leftovers kills servers of a test binary that died before its cleanup ran.
leftovers() {
	pkill -KILL -f -- '-forest_harness /' 2>/dev/null || true
	pkill -KILL -f -- 'versitygw .*forest-s3-' 2>/dev/null || true
	pkill -KILL -f -- 'epmd -port [0-9]+ -address 127.0.0.1' 2>/dev/null || true
}
trap leftovers EXIT
