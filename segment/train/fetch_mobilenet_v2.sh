#!/bin/bash
# Unpack the ImageNet MobileNetV2 weights of the npm package nsfwjs@4.4.0 (MIT) for
# train_aerial.py --encoder mobilenet_v2 (see mobilenet_v2.py). Needs npm and node; writes
# <dir>/mobilenet_v2.json and <dir>/mobilenet_v2.bin (default dir: .cache/pretrained).
set -euo pipefail
dir=${1:-.cache/pretrained}
sha1=706017d11e44de0803b73a568819f800a50ae470  # npm view nsfwjs@4.4.0 dist.shasum
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent nsfwjs@4.4.0 >/dev/null)
echo "$sha1  $tmp/nsfwjs-4.4.0.tgz" | sha1sum -c --quiet
tar xzf "$tmp/nsfwjs-4.4.0.tgz" -C "$tmp" package/dist/models/mobilenet_v2
# The model and its weights are UMD modules: the manifest as an object, the weights as base64.
node -e '
const fs = require("fs"), d = process.argv[1], out = process.argv[2];
const m = require(d + "/model.min.js"), s = require(d + "/group1-shard1of1.min.js");
fs.writeFileSync(out + "/mobilenet_v2.json", JSON.stringify(m));
fs.writeFileSync(out + "/mobilenet_v2.bin", Buffer.from(s, "base64"));
' "$tmp/package/dist/models/mobilenet_v2" "$dir"
ls -l "$dir"/mobilenet_v2.*
