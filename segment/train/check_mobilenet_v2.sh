#!/bin/bash
# Checks mobilenet_v2.py against tfjs's own run of the same model: both run the weights that
# fetch_mobilenet_v2.sh unpacked on a 224² crop of an OAM tile, and the outputs of the blocks
# the encoder hands to the decoder must agree to 0.005. Needs npm, node (installs
# @tensorflow/tfjs@4.22.0, pure JavaScript, into a temporary folder) and /usr/bin/python3 with torch.
#   bash segment/train/check_mobilenet_v2.sh [WEIGHTS_DIR] [DATA]   (from the repository root)
set -euo pipefail
dir=$(cd "${1:-.cache/pretrained}" && pwd)
data=${2:-/work/shared/data}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm install --silent --no-audit --no-fund @tensorflow/tfjs@4.22.0 >/dev/null 2>&1)
/usr/bin/python3 -c '
import sys, numpy as np
from PIL import Image
a = np.asarray(Image.open(sys.argv[1]).convert("RGB"))[100:324, 200:424].astype(np.float32) / 127.5 - 1
a.astype("<f4").tofile(sys.argv[2])
' "$data/aerial-trees/oam-tcd-640/images/0001.jpg" "$tmp/x.bin"
cat >"$tmp/run.js" <<'JS'
const tf = require("@tensorflow/tfjs"), fs = require("fs"), [dir, tmp] = process.argv.slice(2);
(async () => {
  const m = JSON.parse(fs.readFileSync(dir + "/mobilenet_v2.json")), bin = fs.readFileSync(dir + "/mobilenet_v2.bin");
  const model = await tf.loadLayersModel(tf.io.fromMemory({modelTopology: m.modelTopology,
    weightSpecs: m.weightsManifest[0].weights, weightData: bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.length)}));
  const x = tf.tensor(new Float32Array(fs.readFileSync(tmp + "/x.bin").buffer.slice(0)), [1, 224, 224, 3]);
  const names = ["expanded_conv_project_BN", "block_2_add", "block_5_add", "block_7_add"];
  const outs = tf.model({inputs: model.inputs, outputs: names.map(n => model.getLayer(n).output)}).predict(x);
  outs.forEach((o, i) => fs.writeFileSync(`${tmp}/tap${i}.bin`, Buffer.from(o.dataSync().buffer)));
})();
JS
(cd "$tmp" && node run.js "$dir" "$tmp" 2>/dev/null)
/usr/bin/python3 - "$here" "$dir" "$tmp" <<'PY'
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[1])
import mobilenet_v2 as mv
d, tmp = sys.argv[2], sys.argv[3]
enc = mv.Encoder(last=7)
mv.load_pretrained(enc, d)
enc.eval()
x = torch.from_numpy(np.fromfile(tmp + "/x.bin", "<f4").reshape(1, 224, 224, 3)).permute(0, 3, 1, 2)
with torch.no_grad():
    outs = enc(x)
worst = 0.0
for i, o in enumerate(outs):
    n, c, h, w = o.shape
    ref = np.fromfile(f"{tmp}/tap{i}.bin", "<f4").reshape(n, h, w, c).transpose(0, 3, 1, 2)
    diff = float(np.abs(o.numpy() - ref).max())
    worst = max(worst, diff)
    print(f"block {enc.taps[i]} ({c}x{h}x{w}): max |torch - tfjs| {diff:.5f}, outputs up to {np.abs(ref).max():.1f}")
sys.exit(f"FAIL: the port differs from tfjs by {worst}" if worst > 0.005 else 0)
PY
echo "ok: mobilenet_v2.py matches tfjs"
