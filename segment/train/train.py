#!/usr/bin/python3
"""Train the shipped forest segmentation model (forest-unet) and export it to ONNX.

Reproducible: fixed seeds, fixed scene split, single fixed schedule. Run from the repo root:

    /usr/bin/python3 segment/train/train.py --data /work/shared/data/amazon-forest-rgb \
        --out segment/models/forest-unet-v1.onnx

Writes the ONNX model (with the metadata contract the Go package reads), a JSON file of metrics
beside it (<out>.metrics.json) and prints progress. Needs only Debian's python3-torch, numpy, PIL.
"""
import argparse, copy, json, math, os, random, struct, sys, time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

SPLIT_SEED = 4
VAL_FRACTION = 0.2


def load_scenes(data):
    """Return {scene: (img[512,512,3] uint8, mask[512,512] uint8 0/1)} reassembled from tiles."""
    names = sorted(os.listdir(os.path.join(data, "images")))
    scenes = {}
    for n in names:
        stem = n[:-len("_r0c0.png")]
        r, c = int(n[-7]), int(n[-5])
        img = np.array(Image.open(os.path.join(data, "images", n)).convert("RGB"))
        m = np.array(Image.open(os.path.join(data, "masks", n)).convert("L"))
        s = scenes.setdefault(stem, [np.zeros((512, 512, 3), np.uint8), np.zeros((512, 512), np.uint8), 0])
        s[0][r * 256:(r + 1) * 256, c * 256:(c + 1) * 256] = img
        s[1][r * 256:(r + 1) * 256, c * 256:(c + 1) * 256] = (m > 127)
        s[2] += 1
    for k, v in scenes.items():
        assert v[2] == 4, k
    return {k: (v[0], v[1]) for k, v in scenes.items()}


def split(scenes, fold=0):
    """Scenes shuffled with SPLIT_SEED and cut into folds of VAL_FRACTION of them; folds 0..4
    partition the scenes (for cross-validation). Fold -1 trains on every scene and holds out
    none: that is the shipped model, whose quality figure is the cross-validation's."""
    keys = sorted(scenes)
    if fold < 0:
        return keys, []
    rng = random.Random(SPLIT_SEED)
    rng.shuffle(keys)
    nval = max(1, round(len(keys) * VAL_FRACTION))
    val = keys[fold * nval:(fold + 1) * nval]
    assert val, f"fold {fold}: only {len(keys) // nval} folds"
    return sorted(k for k in keys if k not in val), sorted(val)


class DS(nn.Module):
    """Depthwise-separable 3x3 conv + BN + ReLU."""

    def __init__(self, cin, cout, dil=1):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, padding=dil, dilation=dil, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x):
        x = F.relu(self.bn1(self.dw(x)))
        return F.relu(self.bn2(self.pw(x)))


class Block(nn.Module):
    def __init__(self, cin, cout, dil=1):
        super().__init__()
        self.a = DS(cin, cout)
        self.b = DS(cout, cout, dil)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.b(self.a(x)) + self.skip(x)


def up(a, b):
    """a upsampled bilinearly to b's size, then b's channels after a's (a U-Net skip)."""
    return torch.cat([F.interpolate(a, size=b.shape[2:], mode="bilinear", align_corners=False), b], 1)


class UNet(nn.Module):
    """U-Net of depthwise-separable residual blocks. The stem has stride 2, so the network
    works at half resolution (10 m imagery: forest edges are smooth at 20 m) and the logits
    are upsampled bilinearly to the input size at the end; this quarters the compute."""

    def __init__(self, ch=(16, 32, 64, 96, 128), adaptive=True, stride=2):
        super().__init__()
        c0, c1, c2, c3, c4 = ch
        self.adaptive = adaptive
        cin = 6 if adaptive else 3
        self.stem = nn.Sequential(nn.Conv2d(cin, c0, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c0), nn.ReLU())
        self.e0 = Block(c0, c0)
        self.e1 = Block(c0, c1)
        self.e2 = Block(c1, c2)
        self.e3 = Block(c2, c3)
        self.e4 = Block(c3, c4, dil=2)
        self.ctx = DS(c4, c4, dil=4)
        self.d3 = Block(c4 + c3, c3)
        self.d2 = Block(c3 + c2, c2)
        self.d1 = Block(c2 + c1, c1)
        self.d0 = Block(c1 + c0, c0)
        self.head = nn.Conv2d(c0, 1, 1)

    def forward(self, inp):
        x = inp
        if self.adaptive:
            # Per-image standardisation alongside the globally normalised input: the
            # network sees each pixel both absolutely and relative to its own tile (what
            # makes the per-tile Otsu baseline strong on scenes with unusual radiometry).
            mu = inp.mean(dim=(2, 3), keepdim=True)
            var = ((inp - mu) ** 2).mean(dim=(2, 3), keepdim=True)
            x = torch.cat([inp, (inp - mu) / torch.sqrt(var + 0.01)], 1)
        return self.body(x, inp.shape[2:])

    def body(self, x, size):
        """The network from its (3- or 6-channel) input to logits of the given size."""
        x0 = self.e0(self.stem(x))
        x1 = self.e1(F.max_pool2d(x0, 2))
        x2 = self.e2(F.max_pool2d(x1, 2))
        x3 = self.e3(F.max_pool2d(x2, 2))
        x4 = self.e4(F.max_pool2d(x3, 2))
        x4 = x4 + self.ctx(x4)
        y = self.d3(up(x4, x3))
        y = self.d2(up(y, x2))
        y = self.d1(up(y, x1))
        y = self.d0(up(y, x0))
        return F.interpolate(self.head(y), size=size, mode="bilinear", align_corners=False)


class TTA(nn.Module):
    """Averages the logits over flipped and transposed copies of the input (test-time
    augmentation inside the exported graph): "flip4" = identity and the three flips, "d8" = those
    and their transposes (all 8 dihedral transforms). The graph then runs the network 4 or 8 times."""

    def __init__(self, net, mode):
        super().__init__()
        self.net, self.mode = net, mode

    def forward(self, x):
        flips = [(), (3,), (2,), (2, 3)]
        out = 0
        n = 0
        for tr in ([False, True] if self.mode == "d8" else [False]):
            xt = x.transpose(2, 3) if tr else x
            for f in flips:
                y = self.net(torch.flip(xt, f) if f else xt)
                y = torch.flip(y, f) if f else y
                out = out + (y.transpose(2, 3) if tr else y)
                n += 1
        return out / n


def augment(img, m, rng, crop, channel_jitter=0.0, haze=0.0):
    """img HxWx3 float32 0..255, m HxW. Random crop, dihedral transform, photometric jitter,
    and with probability haze a veil: a blend towards a bright, slightly coloured haze."""
    H, W = m.shape
    y = rng.randint(0, H - crop)
    x = rng.randint(0, W - crop)
    img = img[y:y + crop, x:x + crop]
    m = m[y:y + crop, x:x + crop]
    k = rng.randint(0, 3)
    img = np.rot90(img, k)
    m = np.rot90(m, k)
    if rng.random() < 0.5:
        img = img[:, ::-1]
        m = m[:, ::-1]
    gain = rng.uniform(0.7, 1.4)
    cg = np.array([rng.uniform(1 - channel_jitter, 1 + channel_jitter) for _ in range(3)], np.float32)
    bias = rng.uniform(-12, 12)
    img = img * gain * cg + bias
    if rng.random() < 0.3:  # contrast around the mean
        mu = img.mean()
        img = (img - mu) * rng.uniform(0.75, 1.3) + mu
    if rng.random() < haze:
        veil = np.array([rng.uniform(90, 170) for _ in range(3)], np.float32)
        a = rng.uniform(0.1, 0.45)
        img = img * (1 - a) + veil * a
    img = np.clip(img, 0, 255)
    return np.ascontiguousarray(img), np.ascontiguousarray(m)


def to_tensor(imgs, mean, std):
    x = torch.from_numpy(np.stack(imgs)).float().permute(0, 3, 1, 2) / 255.0
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def tile_iter(scenes, keys):
    for k in keys:
        img, m = scenes[k]
        for r in range(2):
            for c in range(2):
                yield k, img[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256], m[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256]


def evaluate(model, scenes, keys, mean, std):
    """Per-tile inference at 256x256 (exactly what the Go package does); pooled IoU/accuracy,
    and per scene: IoU, accuracy, predicted and true forest fraction."""
    model.eval()
    tp = fp = fn = tn = 0
    per = {}
    with torch.no_grad():
        for k, img, m in tile_iter(scenes, keys):
            x = to_tensor([img.astype(np.float32)], mean, std)
            p = (model(x)[0, 0] > 0).numpy()
            g = m.astype(bool)
            c = [int((p & g).sum()), int((p & ~g).sum()), int((~p & g).sum()), int((~p & ~g).sum())]
            tp += c[0]; fp += c[1]; fn += c[2]; tn += c[3]
            per[k] = [a + b for a, b in zip(per.get(k, [0, 0, 0, 0]), c)]
    model.train()
    scenes_ev = {k: {"iou": round(a / max(1, a + b + c), 4), "accuracy": round((a + d) / (a + b + c + d), 4), "tp_fp_fn_tn": [a, b, c, d],
                     "pred_forest": round((a + b) / (a + b + c + d), 3), "true_forest": round((a + c) / (a + b + c + d), 3)}
                 for k, (a, b, c, d) in per.items()}
    return {"iou": tp / max(1, tp + fp + fn), "accuracy": (tp + tn) / (tp + fp + fn + tn),
            "nonforest_iou": tn / max(1, tn + fp + fn), "scenes": scenes_ev}


def otsu(v):
    hist, edges = np.histogram(v, bins=256)
    centers = (edges[:-1] + edges[1:]) / 2
    w = np.cumsum(hist); mu = np.cumsum(hist * centers)
    wt, mt = w[-1], mu[-1]
    wb = w; wf = wt - w
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mt * wb / wt - mu) ** 2 / (wb * wf) * wt
    between = np.nan_to_num(between)
    return centers[int(np.argmax(between))]


def baseline(scenes, keys):
    """Excess green 2G-R-B thresholded per tile with Otsu; forest = ExG above threshold."""
    tp = fp = fn = tn = 0
    for _, img, m in tile_iter(scenes, keys):
        f = img.astype(np.float32)
        exg = 2 * f[..., 1] - f[..., 0] - f[..., 2]
        p = exg > otsu(exg.ravel())
        g = m.astype(bool)
        tp += int((p & g).sum()); fp += int((p & ~g).sum()); fn += int((~p & g).sum()); tn += int((~p & ~g).sum())
    return {"iou": tp / max(1, tp + fp + fn), "accuracy": (tp + tn) / (tp + fp + fn + tn)}


def metadata_props_bytes(props):
    """Serialize ModelProto.metadata_props (field 14, StringStringEntryProto{key=1,value=2})."""
    def varint(n):
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out.append(b | 0x80)
            else:
                out.append(b)
                return bytes(out)

    def field(num, data):
        return varint((num << 3) | 2) + varint(len(data)) + data

    return b"".join(field(14, field(1, k.encode()) + field(2, v.encode())) for k, v in props.items())


def export(model, path, mean, std, props, size=256, extra=None):
    """Write model as ONNX with input "image" (1x3xsize x size) and any extra inputs ({name:
    example tensor}, after it), output "logits", and props as metadata."""
    model.eval()
    tmp = path + ".tmp"
    extra = extra or {}
    x = (torch.zeros(1, 3, size, size),) + tuple(extra.values())
    torch.onnx.export(model, x, tmp, input_names=["image"] + list(extra), output_names=["logits"], opset_version=13,
                      do_constant_folding=True)
    with open(tmp, "rb") as f:
        data = f.read()
    data += metadata_props_bytes(props)
    with open(path, "wb") as f:
        f.write(data)
    os.remove(tmp)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data/amazon-forest-rgb")
    ap.add_argument("--out", default="segment/models/forest-unet-v1.onnx")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--width", type=str, default="16,32,64,96,128")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--ema", type=float, default=0.99, help="EMA decay of the weights that are evaluated and exported (0: off)")
    ap.add_argument("--channel-jitter", type=float, default=0.0, help="per-channel gain jitter (hue); 0 keeps colour ratios")
    ap.add_argument("--stem-stride", type=int, default=1, help="1: network works at full resolution (shipped); 2: half, 4x cheaper")
    ap.add_argument("--time-steps", type=int, default=0, help="only time N steps and exit")
    ap.add_argument("--haze", type=float, default=0.0, help="probability of a haze veil in augmentation")
    ap.add_argument("--fold", type=int, default=-1,
                    help="validation fold 0-4 (cross-validation; see cv.sh); -1 (default, the shipped model): train on all scenes")
    ap.add_argument("--version", default="1.2.0", help="forest.version written into the model")
    ap.add_argument("--tta", choices=["none", "flip4", "d8"], default="none",
                    help="test-time augmentation built into the exported graph (runs the network 4 or 8 times)")
    ap.add_argument("--from", dest="init", default="", help="skip training: load these weights (.pt), evaluate, export")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    np.random.seed(args.seed)

    scenes = load_scenes(args.data)
    train_keys, val_keys = split(scenes, args.fold)
    print(f"scenes: {len(scenes)} train {len(train_keys)} val {len(val_keys)}: {val_keys}", flush=True)

    px = np.concatenate([scenes[k][0].reshape(-1, 3) for k in train_keys]).astype(np.float64) / 255.0
    mean = torch.tensor(px.mean(0), dtype=torch.float32)
    std = torch.tensor(px.std(0), dtype=torch.float32)
    print("mean", mean.tolist(), "std", std.tolist(), flush=True)

    model = UNet(tuple(int(c) for c in args.width.split(",")), stride=args.stem_stride)
    nparams = sum(p.numel() for p in model.parameters())
    print("params", nparams, flush=True)

    ema = copy.deepcopy(model) if args.ema > 0 else model
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    fimgs = {k: scenes[k][0].astype(np.float32) for k in train_keys}
    t0 = time.time()
    nsteps = args.time_steps or args.steps
    if args.init:
        ema.load_state_dict(torch.load(args.init))
        nsteps = 0
    history = []
    for step in range(1, nsteps + 1):
        bi, bm = [], []
        for _ in range(args.batch):
            k = rng.choice(train_keys)
            a, b = augment(fimgs[k], scenes[k][1], rng, args.crop, args.channel_jitter, args.haze)
            bi.append(a); bm.append(b)
        x = to_tensor(bi, mean, std)
        y = torch.from_numpy(np.stack(bm)).float().unsqueeze(1)
        logit = model(x)
        bce = F.binary_cross_entropy_with_logits(logit, y)
        p = torch.sigmoid(logit)
        inter = (p * y).sum((1, 2, 3)); den = (p + y).sum((1, 2, 3))
        dice = 1 - ((2 * inter + 1) / (den + 1)).mean()
        # dice on the non-forest class too, so all-forest and no-forest crops are balanced
        inter0 = ((1 - p) * (1 - y)).sum((1, 2, 3)); den0 = ((1 - p) + (1 - y)).sum((1, 2, 3))
        dice0 = 1 - ((2 * inter0 + 1) / (den0 + 1)).mean()
        loss = bce + 0.5 * (dice + dice0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not args.time_steps:
            sched.step()
        if args.ema > 0:
            with torch.no_grad():
                for pe, pm in zip(ema.state_dict().values(), model.state_dict().values()):
                    if pe.dtype.is_floating_point:
                        pe.mul_(args.ema).add_(pm, alpha=1 - args.ema)
                    else:
                        pe.copy_(pm)
        if step % 25 == 0:
            el = time.time() - t0
            print(f"step {step} loss {loss.item():.4f} bce {bce.item():.4f} {el:.0f}s ({el / step:.2f}s/step)", flush=True)
        if not args.time_steps and val_keys and (step % args.eval_every == 0 or step == args.steps):
            ev = evaluate(ema, scenes, val_keys, mean, std)
            ev["step"] = step
            history.append({k: v for k, v in ev.items() if k != "scenes"})
            print(f"eval step {step}: val iou {ev['iou']:.4f} acc {ev['accuracy']:.4f}", flush=True)
            torch.save(ema.state_dict(), args.out + ".pt")  # checkpoint (not shipped)
    if args.time_steps:
        return

    net = ema  # evaluate and export the averaged weights
    torch.save(net.state_dict(), args.out + ".pt")
    model = TTA(net, args.tta) if args.tta != "none" else net
    train_ev = evaluate(model, scenes, train_keys, mean, std)
    elapsed = time.time() - t0
    plain = final = base = None
    if val_keys:
        plain = evaluate(net, scenes, val_keys, mean, std)
        final = evaluate(model, scenes, val_keys, mean, std) if model is not net else plain
        print(f"val iou without test-time augmentation {plain['iou']:.4f} acc {plain['accuracy']:.4f}", flush=True)
        base = baseline(scenes, val_keys)
        print(f"final val iou {final['iou']:.4f} acc {final['accuracy']:.4f}; baseline iou {base['iou']:.4f} acc {base['accuracy']:.4f}; {elapsed / 60:.1f} min", flush=True)
    else:
        print(f"no validation scenes; training scenes iou {train_ev['iou']:.4f} acc {train_ev['accuracy']:.4f}; {elapsed / 60:.1f} min", flush=True)

    props = {
        "forest.model_id": "forest-unet",
        "forest.name": "forest-unet-v1 (Sentinel-2 RGB forest/non-forest)",
        "forest.version": args.version,
        "forest.input_name": "image",
        "forest.output_name": "logits",
        "forest.layout": "NCHW",
        "forest.channel_order": "RGB",
        "forest.input_size": "256x256",
        "forest.size_multiple": "16",
        "forest.scale": repr(1 / 255.0),
        "forest.mean": ",".join(f"{v:.6f}" for v in mean.tolist()),
        "forest.std": ",".join(f"{v:.6f}" for v in std.tolist()),
        "forest.output": "logits",
        "forest.activation": "sigmoid",
        "forest.forest_channel": "0",
        "forest.classes": "forest",
        "forest.threshold": "0.5",
        "forest.pixel_size_m": "10,10",
        "forest.license": "model: same as repository; training data CC BY 4.0 Bragagnolo et al. doi:10.5281/zenodo.3233081, contains modified Copernicus Sentinel-2 data",
    }
    if final:
        props["forest.val_iou"] = f"{final['iou']:.4f}"
        props["forest.val_accuracy"] = f"{final['accuracy']:.4f}"
    export(model, args.out, mean, std, props)
    metrics = {"params": nparams, "val_scenes": val_keys, "train_scenes": train_keys, "val": final, "val_no_tta": plain,
               "train": train_ev, "baseline_exg_otsu_val": base, "history": history,
               "minutes": elapsed / 60, "args": vars(args), "mean": mean.tolist(), "std": std.tolist(),
               "torch": torch.__version__, "onnx_bytes": os.path.getsize(args.out)}
    with open(args.out + ".metrics.json", "w") as f:
        json.dump(metrics, f, indent=1)
    torch.save(net.state_dict(), args.out + ".pt")
    print("wrote", args.out, os.path.getsize(args.out), "bytes", flush=True)


if __name__ == "__main__":
    main()
