"""The first blocks of Keras's ImageNet MobileNetV2 (alpha 1.0) in PyTorch, as a pretrained encoder.

The weights come from the npm package nsfwjs@4.4.0 (MIT, Infinite Red): its mobilenet_v2 model is
Keras's ImageNet MobileNetV2 with blocks 0-10 frozen (their weights are ImageNet's) and a classifier
fine-tuned on top. fetch_mobilenet_v2.sh unpacks it to a JSON manifest and a weight file; the weights
are quantised to uint8 (value = min + scale * q), which is close enough for a starting point.

Layers follow Keras: a stride-2 convolution pads one pixel at the bottom and right only, and the
network expects pixels in [-1, 1].
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# (expansion, output channels, stride) of Keras's blocks 0..16
BLOCKS = [(1, 16, 1), (6, 24, 2), (6, 24, 1), (6, 32, 2), (6, 32, 1), (6, 32, 1),
          (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1), (6, 96, 1), (6, 96, 1), (6, 96, 1),
          (6, 160, 2), (6, 160, 1), (6, 160, 1), (6, 320, 1)]
BN_EPS = 1e-3


def conv_bn(cin, cout, k, stride=1, groups=1):
    return nn.ModuleDict({"conv": nn.Conv2d(cin, cout, k, stride=stride, groups=groups, bias=False),
                          "bn": nn.BatchNorm2d(cout, eps=BN_EPS)})


def run(cb, x, relu=True):
    k, s = cb["conv"].kernel_size[0], cb["conv"].stride[0]
    if k == 3:
        x = F.pad(x, (0, 1, 0, 1)) if s == 2 else F.pad(x, (1, 1, 1, 1))
    x = cb["bn"](cb["conv"](x))
    return F.relu6(x) if relu else x


class InvertedResidual(nn.Module):
    def __init__(self, cin, t, cout, stride):
        super().__init__()
        mid = cin * t
        self.expand = conv_bn(cin, mid, 1) if t != 1 else None
        self.depthwise = conv_bn(mid, mid, 3, stride=stride, groups=mid)
        self.project = conv_bn(mid, cout, 1)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = run(self.expand, x) if self.expand is not None else x
        y = run(self.project, run(self.depthwise, y), relu=False)
        return x + y if self.residual else y


class Encoder(nn.Module):
    """Conv1 and blocks 0..last. forward returns the output of the last block of each stride
    (2, 4, 8, ...), so a decoder can take skips from them."""

    def __init__(self, last=7):
        super().__init__()
        self.stem = conv_bn(3, 32, 3, stride=2)
        blocks, cin = [], 32
        for t, c, s in BLOCKS[:last + 1]:
            blocks.append(InvertedResidual(cin, t, c, s))
            cin = c
        self.blocks = nn.ModuleList(blocks)
        self.taps = [i for i in range(last + 1) if i == last or BLOCKS[i + 1][2] == 2]
        self.channels = [BLOCKS[i][1] for i in self.taps]

    def forward(self, x):
        x = run(self.stem, x)
        outs = []
        for i, b in enumerate(self.blocks):
            x = b(x)
            if i in self.taps:
                outs.append(x)
        return outs


def keras_weights(manifest_path, bin_path):
    """{Keras weight name: float32 array} from a tfjs layers-model manifest and its weight file."""
    with open(manifest_path) as f:
        m = json.load(f)
    with open(bin_path, "rb") as f:
        data = f.read()
    out, off = {}, 0
    for w in m["weightsManifest"][0]["weights"]:
        n = int(np.prod(w["shape"]))
        q = w.get("quantization")
        if q:
            assert q["dtype"] == "uint8", q
            a = np.frombuffer(data, np.uint8, n, off).astype(np.float32) * q["scale"] + q["min"]
            off += n
        else:
            a = np.frombuffer(data, np.float32, n, off).copy()
            off += 4 * n
        out[w["name"]] = a.reshape(w["shape"])
    assert off == len(data), (off, len(data))
    return out


def load_keras(enc, kw):
    """Copy Keras's weights into an Encoder (in place)."""
    def put(cb, conv, bn, depthwise=False):
        k = kw[conv + ("/depthwise_kernel" if depthwise else "/kernel")]
        k = k.transpose(2, 3, 0, 1) if depthwise else k.transpose(3, 2, 0, 1)
        cb["conv"].weight.data.copy_(torch.from_numpy(np.ascontiguousarray(k)).reshape(cb["conv"].weight.shape))
        for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance")):
            getattr(cb["bn"], ours).data.copy_(torch.from_numpy(kw[f"{bn}/{theirs}"]))

    put(enc.stem, "Conv1", "bn_Conv1")
    for i, b in enumerate(enc.blocks):
        p = "expanded_conv" if i == 0 else f"block_{i}"
        if b.expand is not None:
            put(b.expand, f"{p}_expand", f"{p}_expand_BN")
        put(b.depthwise, f"{p}_depthwise", f"{p}_depthwise_BN", depthwise=True)
        put(b.project, f"{p}_project", f"{p}_project_BN")


def load_pretrained(enc, d):
    """Copy the weights fetch_mobilenet_v2.sh unpacked into directory d into enc; exits with a
    message naming the fetch script when they are missing."""
    if not os.path.exists(os.path.join(d, "mobilenet_v2.bin")):
        sys.exit(f"{d}/mobilenet_v2.bin is missing: run bash segment/train/fetch_mobilenet_v2.sh {d}")
    load_keras(enc, keras_weights(os.path.join(d, "mobilenet_v2.json"), os.path.join(d, "mobilenet_v2.bin")))
