#!/usr/bin/env bash
# `make run`: the agent on the bundled sample frames, offline, once per
# model: canopy-aerial-v1 (agent/testdata/run.yaml) on
# agent/testdata/frames/aerial, forest-unet-v1
# (agent/testdata/run-satellite.yaml) on agent/testdata/frames/satellite.
# Each run starts afresh in .cache/run/<set>/: the samples are copied into
# incoming/ (the dir source moves what it spooled to incoming/done/),
# segmented, spooled in spool/, with a mask overlay per frame in overlays/.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A config=([aerial]=agent/testdata/run.yaml [satellite]=agent/testdata/run-satellite.yaml)
for set in aerial satellite; do
	rm -rf ".cache/run/$set"
	mkdir -p ".cache/run/$set/incoming"
	cp "agent/testdata/frames/$set"/* ".cache/run/$set/incoming/"
	echo "== the $set samples (agent/testdata/frames/$set), config ${config[$set]}"
	bin/forest-agent run --config "${config[$set]}" --once
	echo
done
echo "Overlays, one PNG per frame with what the model marks as forest tinted green:"
for set in aerial satellite; do
	echo "  $PWD/.cache/run/$set/overlays"
done
