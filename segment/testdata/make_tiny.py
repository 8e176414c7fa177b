#!/usr/bin/python3
"""Build the tiny test models in this directory (run from the repo root):

    /usr/bin/python3 segment/testdata/make_tiny.py

tiny-nometa.onnx    1x3x32x32 -> 1x1x32x32, output = input channel 1 (green), no metadata.
tiny.onnx           the same graph with the forest.* metadata contract (mean 0.5, std 0.5,
                    scale 1/255, logits, classes "forest"), so logit = G/127.5 - 1 and a
                    pixel is forest (p > 0.5) exactly when G > 127.5.
tiny-2class-nometa.onnx  1x3x32x32 -> 1x2x32x32, channel 0 = -green, channel 1 = +green.
tiny-two-inputs.onnx  tiny.onnx's metadata on a graph with a second input, frame_stats (1x6),
                    that the package does not feed: Load must refuse it.
"""
import os, sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "train"))
from train import metadata_props_bytes  # noqa: E402

here = os.path.dirname(os.path.abspath(__file__))


def conv(weights):
    c = nn.Conv2d(3, len(weights), 1)
    with torch.no_grad():
        c.weight.copy_(torch.tensor(weights, dtype=torch.float32).view(len(weights), 3, 1, 1))
        c.bias.zero_()
    return c.eval()


class MinusSecondInput(nn.Module):
    def forward(self, image, stats):
        return image[:, 1:2] - stats[:, 1].view(-1, 1, 1, 1)


def export(model, name, props=None, second_input=False):
    path = os.path.join(here, name)
    args, names = (torch.zeros(1, 3, 32, 32),), ["image"]
    if second_input:
        args, names = args + (torch.zeros(1, 6),), names + ["frame_stats"]
    torch.onnx.export(model, args, path, input_names=names, output_names=["logits"], opset_version=13)
    if props:
        with open(path, "ab") as f:
            f.write(metadata_props_bytes(props))
    print(name, os.path.getsize(path))


torch.manual_seed(0)
export(conv([[0, 1, 0]]), "tiny-nometa.onnx")
tiny = {
    "forest.model_id": "tiny-green", "forest.name": "tiny test model", "forest.version": "0.0.1",
    "forest.input_name": "image", "forest.output_name": "logits", "forest.layout": "NCHW",
    "forest.input_size": "32x32", "forest.size_multiple": "8", "forest.scale": repr(1 / 255.0),
    "forest.mean": "0.5,0.5,0.5", "forest.std": "0.5,0.5,0.5", "forest.output": "logits",
    "forest.classes": "forest",
}
export(conv([[0, 1, 0]]), "tiny.onnx", tiny)
export(conv([[0, -1, 0], [0, 1, 0]]), "tiny-2class-nometa.onnx")
export(MinusSecondInput(), "tiny-two-inputs.onnx", tiny, second_input=True)
