#!/usr/bin/env bash
# `make run`: the agent on the bundled sample frames, offline. The samples
# are copied into .cache/run/incoming (the dir source moves what it spooled
# to done/), segmented, spooled in .cache/run/spool, with mask overlays in
# .cache/run/overlays.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache/run/incoming
cp agent/testdata/frames/*.png agent/testdata/frames/*.jpg .cache/run/incoming/
exec bin/forest-agent run --config agent/testdata/run.yaml --once
