#!/usr/bin/python3
"""Train the aerial canopy model (canopy-aerial) from tree boxes and export it to ONNX.

Run from the repository root:

    bash segment/train/fetch_mobilenet_v2.sh
    /usr/bin/python3 segment/train/train_aerial.py --data /work/shared/data --encoder mobilenet_v2 \\
        --crown-power 0.5 --out segment/models/canopy-aerial-v1.onnx

The labels are boxes, not masks, so the model is trained with weak supervision (see
../models/CANOPY_AERIAL.md): the ellipse inscribed in each crown box is tree, the rest of a box is
ignored, everything outside every box of a fully labelled tile is not tree, shadows and no-data
borders are weighted as hard negatives and large canopy-group boxes are ignored. Writes the ONNX
model (the forest.* metadata contract plus forest.pixel_size_m), <out>.metrics.json and <out>.pt.
Needs only Debian's python3-torch, numpy and PIL; --encoder mobilenet_v2 (the shipped 2.0.0) also
needs the pretrained weights that fetch_mobilenet_v2.sh unpacks.
"""
import argparse, copy, hashlib, io, json, math, os, random, sys, time
import xml.etree.ElementTree as ET

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageFilter

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import DS, Block, UNet, export, otsu, up  # noqa: E402
import mobilenet_v2  # noqa: E402

# Ground pixel size of each source, metres.
GSD_OAM = 0.32   # OAM-TCD 2048² tiles at ≈10 cm, downscaled to 640²
GSD_NEON = 0.10
# The split is by scene (a tile or a NEON image is a scene). Test tiles are never seen in
# training or model selection; they were drawn once, before any training, by split_draw() below.
SPLIT_SEED = 18
NODATA_OAM = ["0002", "0008", "0016"]  # OAM tiles with black or white no-data borders
# Tiles with fewer than 5 boxes under 25 % of the tile cannot measure crown recall, so they are
# not drawn for test or validation: 0009 (one group box), 0012 (one box), 0018, 0019 (one group box).
ELIGIBLE_OAM = ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0010", "0011",
                "0013", "0014", "0015", "0016", "0017", "0020"]
ALL_OAM = [f"{i:04d}" for i in range(1, 21)]
TEST_NEON = ["SOAP_061"]
TRAIN_NEON = ["2019_YELL_2_541000_4977000_image_crop"]
INPUT = 256          # exported input side
THRESHOLDS = [0.05, 0.08, 0.1, 0.12, 0.15, 0.18, 0.22, 0.27, 0.33, 0.4, 0.5]
GROUP_FRAC = 0.04    # boxes larger than this share of their image are canopy groups (ignored)
ELLIPSE = 0.9        # positives: the inscribed ellipse of a crown box scaled by this (set from --ellipse)
GSD_RANGE = (0.08, 0.40)  # training pixel sizes (metres) with --scale-mode absolute
PIXEL_SIZE_RANGE = (0.1, 0.4)  # recorded as forest.pixel_size_m: where most training crops lie
SCALE_JITTER = (0.5, 2.0)  # --scale-mode relative: pixel size = the source's times this, log-uniform
SCALE_MODE = "relative"


def split_draw():
    """One no-data tile and three others for test, then three for validation (model selection)."""
    rng = random.Random(SPLIT_SEED)
    test = [rng.choice(NODATA_OAM)]
    rest = [t for t in ELIGIBLE_OAM if t not in NODATA_OAM]
    test += rng.sample(rest, 3)
    left = [t for t in ELIGIBLE_OAM if t not in test]
    val = rng.sample(left, 3)
    return sorted(test), sorted(val)


TEST_OAM, VAL_OAM = split_draw()
assert TEST_OAM == ["0002", "0003", "0011", "0015"] and VAL_OAM == ["0006", "0008", "0017"], (TEST_OAM, VAL_OAM)

# Threshold choice by cross-validation (--cv-fold): the 12 eligible tiles that are not test tiles,
# validation tiles included, are shuffled once (seed 18) and cut into 3 folds of 4; each fold run
# trains on everything else but the test tiles and records its held-out tiles' counts at every
# threshold of CV_THRESHOLDS, and --cv-pool chooses the threshold from the counts of all folds.
CV_FOLDS = 3
CV_THRESHOLDS = THRESHOLDS + [0.6, 0.7, 0.8]


def cv_draw():
    tiles = [t for t in ELIGIBLE_OAM if t not in TEST_OAM]
    random.Random(SPLIT_SEED).shuffle(tiles)
    n = len(tiles) // CV_FOLDS
    return [sorted(tiles[k * n:(k + 1) * n]) for k in range(CV_FOLDS)]


def cv_pool(paths, scale="1"):
    """Pool the fold runs' held-out counts and choose the threshold the way issue 18's bar reads:
    the one whose worse margin, min(crown recall - 0.80, 0.25 - outside-box share), is largest.
    scale: the counts of the held-out tiles resampled by this factor (--eval-scales)."""
    folds = [json.load(open(p)) for p in paths]
    counts = [f["cv_counts"] if scale == "1" else f["cv_counts_at_scale"][scale] for f in folds]
    held = sorted(t for f in folds for t in f["validation"])
    want = sorted(t for fold in cv_draw() for t in fold)
    if held != want:
        sys.exit(f"the fold runs hold out {held}, the folds are {want}")
    margin = {}
    for p in CV_THRESHOLDS:
        c = [sum(fc[str(p)][i] for fc in counts) for i in range(4)]
        recall, outside = c[0] / c[1], c[2] / max(1, c[3])
        margin[p] = min(recall - 0.80, 0.25 - outside)
        print(f"threshold {p}: pooled crown recall {recall:.4f} outside-box share {outside:.4f} margin {margin[p]:+.4f}")
    best = max(CV_THRESHOLDS, key=margin.get)
    print("chosen threshold", best)
    return best


CROWN_POWER = 0.0  # crown pixels weigh (A0 / ellipse area) ** CROWN_POWER (set from --crown-power)
CROWN_A0 = 400.0   # px², about a 23 px crown at the source's resolution
CROWN_MAX = 2.0    # cap of that weight
RING, RING_WEIGHT = 0, 1.0  # pixels within RING px outside every box weigh RING_WEIGHT (set from --ring)
SHADOW_WEIGHT = 2.0  # dark pixels (luma < 70) outside every box weigh this (set from --shadow-weight)
HUE, SAT = 0.08, (0.5, 1.4)  # photometric jitter (set from --hue, --sat)
FRAME_CONTEXT = "scene"  # --frame-norm: the training crop's frame (set from --frame-context)


class Scene:
    def __init__(self, name, img, boxes, gsd):
        self.name, self.img, self.boxes, self.gsd = name, img, boxes, gsd
        self.target, self.weight = labels(img, boxes)
        self.thumb = frame_pixels(img)


def frame_pixels(img):
    """About 20,000 of img's pixels (no-data left out), 0..1: what --frame-norm computes a
    training frame's statistics from, after the crop's own colour jitter."""
    k = max(1, int(math.sqrt(img.shape[0] * img.shape[1] / 20000)))
    sub = img[::k, ::k]
    return sub[~pure_nodata(sub)].astype(np.float32) / 255


class FrameUNet(UNet):
    """--frame-norm: the U-Net fed each pixel twice, normalised by the training pixels' statistics
    and standardised by its whole frame's (per channel, no-data left out). The frame's statistics
    come in as a second input, [N, 6]: the three channel means and variances of the frame in the
    first normalisation, so that every window of one frame sees the same standardisation (no
    seams), unlike the satellite model's per-window one."""

    def __init__(self, ch, stride, mix=1.0):
        super().__init__(ch, adaptive=True, stride=stride)
        self.mix = mix  # --frame-mix: the frame's statistics are shrunk this far from the training set's (0, 1)

    def forward(self, inp, stats):
        mu, var = stats[:, :3, None, None], stats[:, 3:, None, None]
        if self.mix != 1:
            mu, var = mu * self.mix, var * self.mix + (1 - self.mix)
        return self.body(torch.cat([inp, (inp - mu) / torch.sqrt(var + 0.01)], 1), inp.shape[2:])


class MobileUNet(nn.Module):
    """--encoder mobilenet_v2: the first blocks of ImageNet's MobileNetV2 (pretrained, see
    mobilenet_v2.py; to stride 16, 64 channels) with a small U-Net decoder of the repo's blocks
    back to stride 2, then bilinear to the input size like UNet. The input comes normalised by
    the training pixels' mean and std (the model contract); the encoder wants RGB in [-1, 1], so
    the first operation undoes the normalisation."""

    def __init__(self, mean, std, last=7):
        super().__init__()
        self.register_buffer("scale", (2 * std).view(1, 3, 1, 1))
        self.register_buffer("shift", (2 * mean - 1).view(1, 3, 1, 1))
        self.encoder = mobilenet_v2.Encoder(last)
        c2, c4, c8, c16 = self.encoder.channels
        self.ctx = DS(c16, c16, dil=4)
        self.d8 = Block(c16 + c8, 48)
        self.d4 = Block(48 + c4, 32)
        self.d2 = Block(32 + c2, 24)
        self.head = nn.Conv2d(24, 1, 1)

    def forward(self, inp):
        f2, f4, f8, f16 = self.encoder(inp * self.scale + self.shift)
        y = f16 + self.ctx(f16)
        y = self.d8(up(y, f8))
        y = self.d4(up(y, f4))
        y = self.d2(up(y, f2))
        return F.interpolate(self.head(y), size=inp.shape[2:], mode="bilinear", align_corners=False)


def frame_stats(px, mean, std):
    """[1, 6] statistics of pixels px ([N, 3], 0..1) after the global normalisation."""
    z = (torch.as_tensor(px, dtype=torch.float32) - mean) / std
    return torch.cat([z.mean(0), z.var(0, unbiased=False)])[None]


def load(data):
    """All labelled scenes: {name: Scene}; OAM tiles are named by their number."""
    out = {}
    coco = json.load(open(os.path.join(data, "aerial-trees/oam-tcd-640/boxes.json")))
    files = {im["id"]: im["file_name"] for im in coco["images"]}
    boxes = {n[:-4]: [] for n in files.values()}
    for a in coco["annotations"]:
        boxes[files[a["image_id"]][:-4]].append([float(v) for v in a["bbox"]])
    for n in ALL_OAM:
        img = np.array(Image.open(os.path.join(data, "aerial-trees/oam-tcd-640/images", n + ".jpg")).convert("RGB"))
        out[n] = Scene(n, img, boxes[n], GSD_OAM)
    for n in TEST_NEON + TRAIN_NEON:
        img = np.array(Image.open(os.path.join(data, "neon-tree-crowns", n + ".png")).convert("RGB"))
        out[n] = Scene(n, img, voc_boxes(os.path.join(data, "neon-tree-crowns", n + ".xml")), GSD_NEON)
    return out


def voc_boxes(path):
    """Pascal-VOC boxes as [x, y, w, h] (every object: Tree, Alive and Dead alike)."""
    out = []
    for o in ET.parse(path).findall("object"):
        b = o.find("bndbox")
        x0, y0, x1, y1 = (float(b.find(k).text) for k in ("xmin", "ymin", "xmax", "ymax"))
        out.append([x0, y0, x1 - x0, y1 - y0])
    return out


def box_filter(m, r):
    """Mean of m over (2r+1)² windows (edges replicated), via integral images."""
    p = np.pad(m.astype(np.float64), r + 1, mode="edge")
    c = p.cumsum(0).cumsum(1)
    k = 2 * r + 1
    s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    return s[:m.shape[0], :m.shape[1]] / (k * k)


def nodata(img):
    """No-data pixels: areas of (near) pure black or white, with their compression fringe."""
    near = (img.max(2) <= 8) | (img.min(2) >= 247)
    core = near & (box_filter(near, 4) >= 0.8)
    return box_filter(core, 3) > 0


def labels(img, boxes):
    """Weak per-pixel labels: target 0/1 and weight (0 = ignored)."""
    H, W = img.shape[:2]
    target = np.zeros((H, W), np.uint8)
    lum = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    # Outside every box: not tree. Dark pixels (shadows) weigh SHADOW_WEIGHT.
    weight = np.where(lum < 70, SHADOW_WEIGHT, 1.0).astype(np.float32)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    crowns = []
    inside = np.zeros((H, W), bool)
    for x, y, w, h in boxes:
        x0, y0 = max(0, int(math.floor(x)) - 1), max(0, int(math.floor(y)) - 1)
        x1, y1 = min(W, int(math.ceil(x + w)) + 1), min(H, int(math.ceil(y + h)) + 1)
        weight[y0:y1, x0:x1] = 0  # box: ignored unless inside a crown ellipse
        inside[y0:y1, x0:x1] = True
        if w * h <= GROUP_FRAC * H * W:
            crowns.append((x, y, w, h))
    if RING > 0:
        # Just outside a box is surely not tree: weigh it more, so masks stay tight.
        ring = (box_filter(inside, RING) > 0) & ~inside
        weight[ring] = np.maximum(weight[ring], RING_WEIGHT)
    for x, y, w, h in crowns:
        rx, ry = max(w * ELLIPSE / 2, 0.5), max(h * ELLIPSE / 2, 0.5)
        cx, cy = x + w / 2, y + h / 2
        y0, y1 = max(0, int(cy - ry) - 1), min(H, int(cy + ry) + 2)
        x0, x1 = max(0, int(cx - rx) - 1), min(W, int(cx + rx) + 2)
        e = ((xx[y0:y1, x0:x1] - cx) / rx) ** 2 + ((yy[y0:y1, x0:x1] - cy) / ry) ** 2 <= 1
        target[y0:y1, x0:x1][e] = 1
        # Crown recall averages over crowns, not pixels: with CROWN_POWER > 0 small crowns
        # weigh more per pixel than large ones.
        cw = min(CROWN_MAX, max(0.25, (CROWN_A0 / max(1.0, math.pi * rx * ry)) ** CROWN_POWER))
        weight[y0:y1, x0:x1][e] = np.maximum(weight[y0:y1, x0:x1][e], cw)
    nd = nodata(img)
    target[nd] = 0
    weight[nd] = 3.0
    return target, weight


# ---------------------------------------------------------------------------- augmentation

def resize(a, size, resample):
    if a.ndim == 2:
        return np.array(Image.fromarray(a).resize(size, resample))
    return np.array(Image.fromarray(a).resize(size, resample))


def sample(scene, rng, crop, frame=False):
    """A random crop at a random pixel size (SCALE_MODE: relative to the source's, or absolute
    in GSD_RANGE): image uint8, target, weight, and with frame its frame's pixels under the
    crop's colour jitter (else None)."""
    if SCALE_MODE == "relative":
        g = scene.gsd * math.exp(rng.uniform(math.log(SCALE_JITTER[0]), math.log(SCALE_JITTER[1])))
    else:
        g = math.exp(rng.uniform(math.log(GSD_RANGE[0]), math.log(GSD_RANGE[1])))
    H, W = scene.target.shape
    r = crop * g / scene.gsd  # source pixels covered by the crop
    r = min(r, H, W)
    ri = max(8, int(round(r)))
    y = rng.randint(0, H - ri)
    x = rng.randint(0, W - ri)
    img = scene.img[y:y + ri, x:x + ri]
    t = scene.target[y:y + ri, x:x + ri]
    w = scene.weight[y:y + ri, x:x + ri]
    if ri != crop:
        img = resize(img, (crop, crop), Image.BILINEAR if ri < crop else Image.BOX)
        t = resize(t, (crop, crop), Image.NEAREST)
        w = np.array(Image.fromarray(w).resize((crop, crop), Image.NEAREST))
    k = rng.randint(0, 3)
    img, t, w = np.rot90(img, k), np.rot90(t, k), np.rot90(w, k)
    if rng.random() < 0.5:
        img, t, w = img[:, ::-1], t[:, ::-1], w[:, ::-1]
    img, t, w = np.ascontiguousarray(img), np.ascontiguousarray(t), np.ascontiguousarray(w).copy()
    if rng.random() < 0.15:
        img, t, w = fake_nodata(img, t, w, rng)
    ctx = None
    if frame:
        ctx = scene.thumb
        if FRAME_CONTEXT == "random":
            # The frame is a square of the scene around the crop, from the crop itself to the
            # whole scene: frames of closed canopy are rare among the scenes, crops of it are not.
            c = int(round(math.exp(rng.uniform(math.log(ri), math.log(min(H, W))))))
            cy = rng.randint(max(0, y + ri - c), min(y, H - c))
            cx = rng.randint(max(0, x + ri - c), min(x, W - c))
            ctx = frame_pixels(scene.img[cy:cy + c, cx:cx + c])
            if len(ctx) == 0:
                ctx = scene.thumb
    img, ctx = photometric(img, rng, ctx)
    return img, t, w, ctx


def fake_nodata(img, t, w, rng):
    """Paint an orthomosaic-style no-data border: one side of a random line black or white."""
    n = img.shape[0]
    a = rng.uniform(0, 2 * math.pi)
    d = rng.uniform(-0.35, 0.35) * n
    yy, xx = np.mgrid[0:n, 0:n] - n / 2
    side = (xx * math.cos(a) + yy * math.sin(a)) > d
    img = img.copy()
    img[side] = 0 if rng.random() < 0.7 else 255
    t = t.copy()
    t[side] = 0
    w[side] = 3.0
    return img, t, w


def photometric(img, rng, thumb=None):
    """Brightness, contrast, saturation, hue, per-channel gain, gamma, blur, noise, JPEG.
    Pure black and white pixels (no-data) stay pure. Returns the image and thumb (a frame's
    pixels, 0..1, or None) under the same global colour transform."""
    pure = (img.max(2) == 0) | (img.min(2) == 255)
    gamma, gain = rng.uniform(0.75, 1.35), rng.uniform(0.65, 1.45)
    mu = float(((img.astype(np.float32) / 255) ** gamma * gain).mean())
    contrast, sat = rng.uniform(0.7, 1.4), rng.uniform(*SAT)
    gains = np.array([rng.uniform(0.9, 1.1) for _ in range(3)], np.float32)
    h = rng.uniform(-HUE, HUE) * math.pi  # hue rotation about the gray axis
    R = None
    if h:
        c, s = math.cos(h), math.sin(h)
        k = np.ones(3, np.float32) / math.sqrt(3)
        K = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]], np.float32)
        R = c * np.eye(3, dtype=np.float32) + s * K + (1 - c) * np.outer(k, k)

    def colour(f):
        f = (f ** gamma) * gain
        f = (f - mu) * contrast + mu
        gray = f @ np.array([0.299, 0.587, 0.114], np.float32)
        f = gray[..., None] + (f - gray[..., None]) * sat
        f = f * gains
        return f if R is None else f @ R.T

    out = np.clip(colour(img.astype(np.float32) / 255) * 255, 0, 255)
    if rng.random() < 0.3:
        out = out + np.random.normal(0, rng.uniform(2, 8), out.shape)
    out = np.clip(out, 0, 255).astype(np.uint8)
    out[pure] = img[pure]
    im = Image.fromarray(out)
    if rng.random() < 0.2:
        im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    if rng.random() < 0.4:
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=rng.randint(45, 95))
        im = Image.open(buf).convert("RGB")
    return np.array(im), None if thumb is None else np.clip(colour(thumb), 0, 1)


# ---------------------------------------------------------------------------- inference as Go does it

def positions(length, t, o):
    """Window origins (as segment.tilePositions): windows of t overlapping by at least o."""
    if length <= t:
        return [0]
    n = max(2, -(-(length - o) // (t - o)))
    return [int(math.floor(i * (length - t) / (n - 1) + 0.5)) for i in range(n)]


def axis_weights(pos, t, o, length):
    """Per-window blending weights along one axis (as segment's tiling): a linear ramp over o
    pixels at every edge shared with another window, normalised to sum to 1 at each pixel."""
    raw = []
    for i, p in enumerate(pos):
        x = np.arange(t, dtype=np.float64) + 0.5
        r = np.ones(t)
        if i > 0:
            r = np.minimum(r, x / o)
        if i < len(pos) - 1:
            r = np.minimum(r, (t - x) / o)
        raw.append(r)
    tot = np.zeros(max(length, t))
    for p, r in zip(pos, raw):
        tot[p:p + t] += r
    return [r / tot[p:p + t] for p, r in zip(pos, raw)]


def segment_logits(model, img, mean, std, t=INPUT):
    """Blended logits at img's size, windows of t at full resolution overlapping by t/8 (smaller
    sides reflect-padded), exactly as segment.Model does by default."""
    H, W = img.shape[:2]
    stats = None
    if isinstance(model, FrameUNet):
        stats = frame_stats(img[~pure_nodata(img)].astype(np.float32) / 255, mean, std)
    o = t // 8
    ph, pw = max(H, t), max(W, t)
    if ph != H or pw != W:
        img = np.pad(img, ((0, ph - H), (0, pw - W), (0, 0)), mode="symmetric")
    xs, ys = positions(pw, t, o), positions(ph, t, o)
    wx, wy = axis_weights(xs, t, o, pw), axis_weights(ys, t, o, ph)
    acc = np.zeros((ph, pw), np.float64)
    model.eval()
    with torch.no_grad():
        for j, y in enumerate(ys):
            for i, x in enumerate(xs):
                win = img[y:y + t, x:x + t].astype(np.float32)
                xt = (torch.from_numpy(win).permute(2, 0, 1)[None] / 255.0 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
                lg = (model(xt) if stats is None else model(xt, stats))[0, 0].numpy().astype(np.float64)
                acc[y:y + t, x:x + t] += lg * wy[j][:, None] * wx[i][None, :]
    model.train()
    return acc[:H, :W]


def pure_nodata(img):
    """The Go package's no-data rule: a pixel with all three samples <= 2 or all >= 253."""
    return (img.max(2) <= 2) | (img.min(2) >= 253)


def box_metrics(pred, boxes):
    """Per crown (boxes under 25 % of the image): share of its inscribed ellipse marked tree; and
    (tree pixels outside every box, tree pixels). Ellipse and box pixels as the Go tests count
    them: pixel centres inside the ellipse; boxes cover pixels floor(x0)..ceil(x1)-1."""
    H, W = pred.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64) + 0.5
    inside = np.zeros((H, W), bool)
    rec = []
    for x, y, w, h in boxes:
        x0, y0 = max(0, int(math.floor(x))), max(0, int(math.floor(y)))
        x1, y1 = min(W, int(math.ceil(x + w))), min(H, int(math.ceil(y + h)))
        inside[y0:y1, x0:x1] = True
        if w * h < 0.25 * H * W:
            e = ((xx - (x + w / 2)) / (w / 2)) ** 2 + ((yy - (y + h / 2)) / (h / 2)) ** 2 <= 1
            if e.any():
                rec.append(float(pred[e].mean()))
    return rec, int((pred & ~inside).sum()), int(pred.sum())


def scaled_logits(model, img, mean, std, s):
    """segment_logits of img resampled by s, brought back to img's size, as segment.Model does for
    a frame whose pixel size is outside the model's range: the frame resampled bilinearly
    (enlarging) or by area (shrinking) to 8-bit RGB, the logits averaged by area (or
    interpolated) back."""
    if s == 1:
        return segment_logits(model, img, mean, std)
    H, W = img.shape[:2]
    sh, sw = max(1, round(H * s)), max(1, round(W * s))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].double()
    x = F.interpolate(x, size=(sh, sw), mode="bilinear", align_corners=False) if s > 1 else F.interpolate(x, size=(sh, sw), mode="area")
    small = x[0].permute(1, 2, 0).round().clamp(0, 255).numpy().astype(np.uint8)
    lg = torch.from_numpy(segment_logits(model, small, mean, std))[None, None]
    lg = F.interpolate(lg, size=(H, W), mode="area") if s > 1 else F.interpolate(lg, size=(H, W), mode="bilinear", align_corners=False)
    return lg[0, 0].numpy()


def tile_logits(model, scenes, names, mean, std, s=1.0):
    """The model's logits for each named scene, run as the Go package runs it (at scale s)."""
    return {n: scaled_logits(model, scenes[n].img, mean, std, s) for n in names}


def score(scenes, preds):
    """Crown recall and outside-box share of boolean tree masks, per scene name and pooled."""
    per = {}
    rec_all, out, tot = [], 0, 0
    for n, pred in preds.items():
        s = scenes[n]
        rec, o, t = box_metrics(pred, s.boxes)
        per[n] = {"crowns": len(rec), "crown_recall": round(float(np.mean(rec)), 4) if rec else None,
                  "outside_box_share": round(o / max(1, t), 4), "tree_fraction": round(t / pred.size, 4),
                  "nodata_tree_px": int((pred & nodata(s.img)).sum())}
        rec_all += rec
        out += o
        tot += t
    return {"crown_recall": float(np.mean(rec_all)), "outside_box_share": out / max(1, tot), "crowns": len(rec_all),
            "counts": [float(np.sum(rec_all)), len(rec_all), out, tot], "tiles": per}


def evaluate(scenes, logits, tau):
    """score() of the scenes in logits, tree where logit > tau and not pure no-data."""
    return score(scenes, {n: (lg > tau) & ~pure_nodata(scenes[n].img) for n, lg in logits.items()})


def exg_otsu(img):
    f = img.astype(np.float32)
    exg = 2 * f[..., 1] - f[..., 0] - f[..., 2]
    return exg > otsu(exg.ravel())


def baseline(scenes, names):
    """score() of excess green + Otsu."""
    return score(scenes, {n: exg_otsu(scenes[n].img) for n in names})


def coverage(model, folder, mean, std, threshold):
    """Print the share of each image in folder that model marks tree at threshold, and the median
    (a check on unlabelled frames, such as the closed forest of the Montseny patches)."""
    tau = math.log(threshold / (1 - threshold))
    cov = []
    for f in sorted(os.listdir(folder)):
        img = np.array(Image.open(os.path.join(folder, f)).convert("RGB"))
        cov.append(float((segment_logits(model, img, mean, std) > tau).mean()))
        print(f"{f}: {cov[-1]:.3f}", flush=True)
    print(f"{len(cov)} images: median coverage {np.median(cov):.3f}, min {min(cov):.3f}, max {max(cov):.3f}")


# ---------------------------------------------------------------------------- training

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/shared/data")
    ap.add_argument("--out", default="segment/models/canopy-aerial-v1.onnx")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--lr", type=float, default=4e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--width", default="16,32,64,96,128")
    ap.add_argument("--stem-stride", type=int, default=2)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--neon-share", type=float, default=0.25, help="share of training crops from the NEON image")
    ap.add_argument("--final", action="store_true",
                    help="train on the validation tiles too and report the test tiles (run once, with the chosen recipe)")
    ap.add_argument("--threshold", default="auto",
                    help="tree probability threshold written into the model; auto: the one of THRESHOLDS that maximises "
                         "crown recall minus outside-box share on the validation tiles")
    ap.add_argument("--report-test", action="store_true", help="evaluate the test tiles (implied by --final)")
    ap.add_argument("--crown-power", type=float, default=0.0, help="crown pixels weigh (400 px² / crown area) ** P")
    ap.add_argument("--hue", type=float, default=0.08, help="hue jitter, fraction of pi")
    ap.add_argument("--sat", default="0.5,1.4", help="saturation jitter range")
    ap.add_argument("--scale-mode", choices=["relative", "absolute"], default="relative")
    ap.add_argument("--focal", type=float, default=0.0, help="focal loss gamma (0: plain BCE)")
    ap.add_argument("--ring", type=int, default=0, help="pixels just outside boxes (this many, at the source's resolution) ...")
    ap.add_argument("--ring-weight", type=float, default=3.0, help="... weigh this much as negatives")
    ap.add_argument("--ellipse", type=float, default=0.9,
                    help="positives: the ellipse inscribed in each crown box, scaled by this (1: the whole inscribed ellipse)")
    ap.add_argument("--crown-max", type=float, default=2.0, help="cap of the crown weight")
    ap.add_argument("--shadow-weight", type=float, default=2.0, help="weight of dark pixels (luma < 70) outside every box")
    ap.add_argument("--frame-norm", action="store_true",
                    help="feed each pixel also standardised by its whole frame's statistics, a second model input "
                         "(an experiment, not shipped: the Go package refuses a model with a second input)")
    ap.add_argument("--frame-context", choices=["scene", "random"], default="scene",
                    help="--frame-norm in training: the crop's frame is its whole scene, or a random square around it")
    ap.add_argument("--frame-mix", type=float, default=1.0,
                    help="--frame-norm: standardise by statistics this share of the way from the training set's "
                         "(mean 0, variance 1 after normalisation) to the frame's")
    ap.add_argument("--encoder", choices=["unet", "mobilenet_v2"], default="unet",
                    help="mobilenet_v2: an ImageNet-pretrained MobileNetV2 encoder (weights from fetch_mobilenet_v2.sh)")
    ap.add_argument("--pretrained", default=".cache/pretrained", metavar="DIR",
                    help="where fetch_mobilenet_v2.sh wrote mobilenet_v2.json and mobilenet_v2.bin")
    ap.add_argument("--encoder-lr", type=float, default=0.1, help="--encoder mobilenet_v2: the encoder's learning rate, times --lr")
    ap.add_argument("--encoder-last", type=int, default=7, choices=[7, 8],
                    help="--encoder mobilenet_v2: the last pretrained block (7: 160k parameters; 8: one more "
                         "64-channel block at stride 16, 213k)")
    ap.add_argument("--version", default="1.0.0")
    ap.add_argument("--time-steps", type=int, default=0, help="only time N steps and exit")
    ap.add_argument("--from", dest="init", default="", help="skip training: load these weights (.pt), evaluate, export")
    ap.add_argument("--coverage-of", metavar="DIR", default="",
                    help="with --from (and the run's split options): print the share of each image in DIR marked tree, "
                         "and the median, then exit")
    ap.add_argument("--cv-fold", type=int, default=-1, help=f"hold out cross-validation fold K (0..{CV_FOLDS - 1}) instead of the validation tiles")
    ap.add_argument("--eval-scales", default="", metavar="S,S",
                    help="with --cv-fold: also record the held-out counts with the tiles resampled by each factor")
    ap.add_argument("--pool-scale", default="1", metavar="S", help="with --cv-pool: pool the counts recorded at this --eval-scales factor")
    ap.add_argument("--cv-pool", nargs="+", default=[], metavar="METRICS_JSON",
                    help="print the folds' pooled figures at each threshold and the threshold chosen from them, then exit")
    args = ap.parse_args()
    if args.cv_pool:
        cv_pool(args.cv_pool, args.pool_scale)
        return
    if args.coverage_of and not args.init:
        sys.exit("--coverage-of needs --from: the weights to run")
    # Recorded in <out>.metrics.json, so that every model names the run that made it.
    command = " ".join(["/usr/bin/python3", "segment/train/train_aerial.py"] + sys.argv[1:])
    with open(os.path.abspath(__file__), "rb") as f:
        script_sha256 = hashlib.sha256(f.read()).hexdigest()

    global CROWN_POWER, CROWN_MAX, HUE, SAT, SCALE_MODE, RING, RING_WEIGHT, ELLIPSE, SHADOW_WEIGHT, FRAME_CONTEXT
    ELLIPSE, SHADOW_WEIGHT, FRAME_CONTEXT = args.ellipse, args.shadow_weight, args.frame_context
    CROWN_POWER, CROWN_MAX, HUE, SAT = args.crown_power, args.crown_max, args.hue, tuple(float(v) for v in args.sat.split(","))
    SCALE_MODE, RING, RING_WEIGHT = args.scale_mode, args.ring, args.ring_weight
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    rng = random.Random(args.seed)

    scenes = load(args.data)
    test = TEST_OAM + TEST_NEON
    val = [] if args.final else cv_draw()[args.cv_fold] if args.cv_fold >= 0 else VAL_OAM
    train_oam = [n for n in ALL_OAM if n not in TEST_OAM and n not in val]
    print(f"train OAM {train_oam} + {TRAIN_NEON}; validation {val}; test {test}", flush=True)

    px = np.concatenate([scenes[n].img.reshape(-1, 3) for n in train_oam + TRAIN_NEON]).astype(np.float64) / 255
    keep = ~((px.max(1) <= 8 / 255) | (px.min(1) >= 247 / 255))
    mean = torch.tensor(px[keep].mean(0), dtype=torch.float32)
    std = torch.tensor(px[keep].std(0), dtype=torch.float32)
    print("mean", mean.tolist(), "std", std.tolist(), flush=True)

    width = tuple(int(c) for c in args.width.split(","))
    groups = None
    if args.encoder == "mobilenet_v2":
        if args.frame_norm:
            sys.exit("--frame-norm works with --encoder unet only")
        model = MobileUNet(mean, std, last=args.encoder_last)
        if not args.init:
            mobilenet_v2.load_pretrained(model.encoder, args.pretrained)
        enc = list(model.encoder.parameters())
        rest = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
        groups = [{"params": enc, "lr": args.lr * args.encoder_lr}, {"params": rest, "lr": args.lr}]
    elif args.frame_norm:
        model = FrameUNet(width, stride=args.stem_stride, mix=args.frame_mix)
    else:
        model = UNet(width, adaptive=False, stride=args.stem_stride)
    nparams = sum(p.numel() for p in model.parameters())
    print("params", nparams, flush=True)
    ema = copy.deepcopy(model)
    opt = torch.optim.AdamW(groups or model.parameters(), lr=args.lr, weight_decay=1e-4)
    max_lr = [g["lr"] for g in groups] if groups else args.lr
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=args.steps, pct_start=0.1)
    nsteps = args.time_steps or args.steps
    if args.init:
        ck = torch.load(args.init)
        if "state" not in ck:
            sys.exit(f"{args.init} has no recorded training arguments (written by an older script): retrain")
        ema.load_state_dict(ck["state"])
        trained = ck
        nsteps = 0
        if args.coverage_of:
            coverage(ema, args.coverage_of, mean, std, 0.5 if args.threshold == "auto" else float(args.threshold))
            return
    # OAM tiles weighted by labelled area, the NEON image by --neon-share.
    t0 = time.time()
    history = []
    val_logits = None  # of the current EMA weights, once evaluated
    for step in range(1, nsteps + 1):
        bi, bt, bw, bs = [], [], [], []
        for _ in range(args.batch):
            n = rng.choice(TRAIN_NEON) if rng.random() < args.neon_share else rng.choice(train_oam)
            a, t, w, fp = sample(scenes[n], rng, args.crop, args.frame_norm)
            bi.append(a); bt.append(t); bw.append(w)
            if fp is not None:
                bs.append(frame_stats(fp, mean, std))
        x = (torch.from_numpy(np.stack(bi)).float().permute(0, 3, 1, 2) / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        y = torch.from_numpy(np.stack(bt)).float().unsqueeze(1)
        w = torch.from_numpy(np.stack(bw)).float().unsqueeze(1)
        logit = model(x, torch.cat(bs)) if bs else model(x)
        bce = F.binary_cross_entropy_with_logits(logit, y, reduction="none")
        if args.focal > 0:  # focal loss: easy pixels (p_true near 1) weigh less
            pt = torch.exp(-bce.detach())
            bce = bce * (1 - pt) ** args.focal * (1 + args.focal)
        pw, nw = w * y, w * (1 - y)
        # Tree and not-tree pixels weigh half each, whatever their counts.
        loss = 0.5 * (bce * pw).sum() / pw.sum().clamp(min=1) + 0.5 * (bce * nw).sum() / nw.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not args.time_steps:
            sched.step()
        with torch.no_grad():
            for pe, pm in zip(ema.state_dict().values(), model.state_dict().values()):
                if pe.dtype.is_floating_point:
                    pe.mul_(args.ema).add_(pm, alpha=1 - args.ema)
                else:
                    pe.copy_(pm)
        if step % 25 == 0:
            el = time.time() - t0
            print(f"step {step} loss {loss.item():.4f} {el:.0f}s ({el / step:.2f}s/step)", flush=True)
        if not args.time_steps and val and (step % args.eval_every == 0 or step == args.steps):
            val_logits = tile_logits(ema, scenes, val, mean, std)
            ev = evaluate(scenes, val_logits, 0.0)
            history.append({"step": step, "crown_recall": ev["crown_recall"], "outside_box_share": ev["outside_box_share"]})
            print(f"eval step {step}: val crown recall {ev['crown_recall']:.4f} outside-box share {ev['outside_box_share']:.4f} "
                  + " ".join(f"{k}:{v['crown_recall']}/{v['outside_box_share']}" for k, v in ev["tiles"].items()), flush=True)
            torch.save({"state": ema.state_dict(), "args": vars(args), "command": command, "step": step}, args.out + ".pt")
    if args.time_steps:
        return
    if args.init:
        # Evaluated from a checkpoint: what made the weights is the run that wrote it.
        command, trained_args = trained["command"], dict(trained["args"], init=args.init, step=trained["step"])
    else:
        trained_args = vars(args)
    res = {"params": nparams, "args": trained_args, "command": command, "script_sha256": script_sha256, "mean": mean.tolist(), "std": std.tolist(), "history": history,
           "train": train_oam + TRAIN_NEON, "validation": val, "test": test, "torch": torch.__version__}
    if val_logits is None:  # with --from; else the loop last evaluated these same weights
        val_logits = tile_logits(ema, scenes, val, mean, std)
    if val:
        sweep = {}
        for p in THRESHOLDS:
            ev = evaluate(scenes, val_logits, math.log(p / (1 - p)))
            sweep[p] = [ev["crown_recall"], ev["outside_box_share"]]
            print(f"threshold {p}: val crown recall {ev['crown_recall']:.4f} outside-box share {ev['outside_box_share']:.4f}", flush=True)
        res["val_threshold_sweep"] = sweep
    if args.cv_fold >= 0:
        # [sum of crown shares, crowns, tree pixels outside every box, tree pixels] per threshold
        res["cv_counts"] = {str(p): evaluate(scenes, val_logits, math.log(p / (1 - p)))["counts"] for p in CV_THRESHOLDS}
        res["cv_counts_at_scale"] = {}
        for sc in filter(None, args.eval_scales.split(",")):
            lg = tile_logits(ema, scenes, val, mean, std, float(sc))
            res["cv_counts_at_scale"][sc] = {str(p): evaluate(scenes, lg, math.log(p / (1 - p)))["counts"] for p in CV_THRESHOLDS}
    if args.threshold == "auto":
        assert val, "--threshold auto needs validation tiles"
        threshold = max(THRESHOLDS, key=lambda p: sweep[p][0] - sweep[p][1])
    else:
        threshold = float(args.threshold)
    res["threshold"] = threshold
    tau = math.log(threshold / (1 - threshold))
    print("threshold", threshold, flush=True)
    if val:
        res["val"] = evaluate(scenes, val_logits, tau)
        res["val_baseline_exg_otsu"] = baseline(scenes, val)
        print("val", json.dumps(res["val"]), "\nval baseline", json.dumps(res["val_baseline_exg_otsu"]), flush=True)
    if args.final or args.report_test:
        res["test_metrics"] = evaluate(scenes, tile_logits(ema, scenes, test, mean, std), tau)
        res["test_baseline_exg_otsu"] = baseline(scenes, test)
        print("test", json.dumps(res["test_metrics"]), "\ntest baseline", json.dumps(res["test_baseline_exg_otsu"]), flush=True)
    res["minutes"] = (time.time() - t0) / 60
    props = {
        "forest.model_id": "canopy-aerial",
        "forest.name": "canopy-aerial-v1 (airborne RGB tree canopy, 8-40 cm per pixel)",
        "forest.version": args.version,
        "forest.input_name": "image",
        "forest.output_name": "logits",
        "forest.layout": "NCHW",
        "forest.channel_order": "RGB",
        "forest.input_size": f"{INPUT}x{INPUT}",
        "forest.size_multiple": "32",
        "forest.scale": repr(1 / 255.0),
        "forest.mean": ",".join(f"{v:.6f}" for v in mean.tolist()),
        "forest.std": ",".join(f"{v:.6f}" for v in std.tolist()),
        "forest.output": "logits",
        "forest.activation": "sigmoid",
        "forest.forest_channel": "0",
        "forest.classes": "tree",
        "forest.threshold": f"{threshold}",
        "forest.pixel_size_m": f"{PIXEL_SIZE_RANGE[0]},{PIXEL_SIZE_RANGE[1]}",
        "forest.license": "model: same as repository; training data OAM-TCD, Restor Foundation (CC BY 4.0), "
                          "OpenAerialMap contributors; NSF NEON imagery (CC0/CC BY 4.0) with DeepForest boxes (MIT)",
    }
    if args.frame_norm:
        props["forest.frame_stats_input"] = "frame_stats"
    if args.encoder == "mobilenet_v2":
        props["forest.license"] += ("; encoder initialised from Keras's ImageNet MobileNetV2 weights "
                                    "as shipped in the npm package nsfwjs 4.4.0 (MIT, Infinite Red)")
    if args.final or args.report_test:
        props["forest.test_crown_recall"] = f"{res['test_metrics']['crown_recall']:.4f}"
        props["forest.test_outside_box_share"] = f"{res['test_metrics']['outside_box_share']:.4f}"
    export(ema, args.out, mean, std, props, size=INPUT,
           extra={"frame_stats": torch.zeros(1, 6)} if args.frame_norm else None)
    res["onnx_bytes"] = os.path.getsize(args.out)
    with open(args.out + ".metrics.json", "w") as f:
        json.dump(res, f, indent=1)
    if not args.init:
        torch.save({"state": ema.state_dict(), "args": trained_args, "command": command, "step": nsteps}, args.out + ".pt")
    print("wrote", args.out, res["onnx_bytes"], "bytes", flush=True)


if __name__ == "__main__":
    main()
