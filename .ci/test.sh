#!/usr/bin/env bash
# `make test`: installs what is missing (.ci/deps.sh), runs every Go test
# (the test harnesses start private RabbitMQ and versitygw servers on
# 127.0.0.1 and stop them), the cloud tests again against MinIO, runs each
# fuzz target briefly, and makes sure no server is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/deps.sh

. .ci/env.sh

start=$SECONDS
# The end-to-end test writes its tally here (go test shows no log of a
# passing package); it is printed below.
export FOREST_E2E_TALLY=$PWD/.cache/e2e-tally.txt
rm -f "$FOREST_E2E_TALLY"
go test -count=1 -timeout 45m ${GOTESTFLAGS:-} ./...
if [ -s "$FOREST_E2E_TALLY" ]; then
	cat "$FOREST_E2E_TALLY"
fi

# The frame encoder's tests again with the built-in WebAssembly libwebp,
# which a device without libwebp-dev uses (the run above used the system's).
echo "encode tests with -tags nodynamic"
go test -count=1 -tags nodynamic ${GOTESTFLAGS:-} ./agent/encode/

# The cloud tests of what forest-cloud relies on from S3 (conditional
# writes, checksums, duplicates, outages, kills) again against MinIO, so that
# none of it is one server's quirk (internal/s3test runs both servers itself).
echo "cloud tests against MinIO"
FOREST_S3_SERVER=minio go test -count=1 -timeout 20m ${GOTESTFLAGS:-} \
	-run '^(TestStoreFrames|TestReplicas|TestNoConditionalNoChecksum|TestMalformed|TestKill9|TestS3Outage|TestStartWhileS3Down|TestDeliveryLimit|TestGolden)$' ./cloud/

# Each fuzz target for a bounded number of inputs: the seed corpus ran
# above already. A count, not a duration: Go 1.26's fuzz coordinator can
# report a spurious "context deadline exceeded" failure when a -fuzztime
# duration ends (golang/go#75804, fixed in Go 1.27); a count has no deadline.
FUZZTIME=${FUZZTIME:-10000x}
grep -rl --include='*_test.go' '^func Fuzz' . | while read -r f; do
	pkg=./$(dirname "${f#./}")
	for fn in $(grep -o '^func Fuzz[A-Za-z0-9_]*' "$f" | cut -d' ' -f2); do
		echo "fuzz $pkg $fn ($FUZZTIME)"
		out=$(go test -run '^$' -fuzz "^$fn\$" -fuzztime "$FUZZTIME" "$pkg" 2>&1) || { echo "$out"; exit 1; }
	done
done
echo "make test: all passed in $((SECONDS - start))s"
