#!/usr/bin/env python3
"""Procedural captioned pictures for the demo model: coloured shapes on plain backgrounds.

The demo model (tools/demo/train.py) learns from an endless stream of these,
made on the training device with tensor ops, so that the data never waits on a
loader. The grammar is kept small on purpose, because a model of a few million
parameters trained for a few minutes must learn all of it:

    a {colour} {shape} on a {colour} background      one shape, the background named
    two {colour} {shape}s on a {colour} background   two shapes of the same kind and colour
    a {colour} {shape}                               background any other colour
    two {colour} {shape}s

colour: red, green, blue, yellow, white, black (far apart in RGB, so that a
colour can be told from the pixels); shape: circle, square, triangle (axis
aligned, so that the fill ratio of the bounding box tells them apart: 1.0,
pi/4, 1/2). The shape never has the background's colour. Position and size are
random; one shape has a side of 22..42 px of 64, two shapes 16..26 px, each in
its own half of the picture, so they never touch. Edges are anti-aliased from
the signed distance to the outline.

describe() measures a picture the way tests/unit/test_demo_model.c does (the
background from the border, the shape colour, connected components, fill
ratios), so training can report how often its own samples match their
captions, and the test's thresholds can be checked against the ground truth
here (--check).

usage: tools/demo/data.py --preview grid.png [--n 64] [--seed 0] [--size 64]
       tools/demo/data.py --check [--n 2000]
Needs PyTorch only (CPU or CUDA); PNGs are written with zlib.
"""
import argparse
import math
import struct
import sys
import zlib

import torch

COLOURS = [
    ("red", (220, 30, 30)),
    ("green", (30, 170, 50)),
    ("blue", (30, 60, 220)),
    ("yellow", (240, 220, 30)),
    ("white", (245, 245, 245)),
    ("black", (15, 15, 15)),
]
SHAPES = ["circle", "square", "triangle"]
# (text, shapes, background named), sampling weight
TEMPLATES = [
    ("a {c} {s} on a {b} background", 1, True),
    ("two {c} {s}s on a {b} background", 2, True),
    ("a {c} {s}", 1, False),
    ("two {c} {s}s", 2, False),
]
TEMPLATE_WEIGHTS = [0.4, 0.3, 0.15, 0.15]

NC, NS, NT = len(COLOURS), len(SHAPES), len(TEMPLATES)
MARGIN = 3.0          # px (at 64) between a shape and the border
ONE_R = (11.0, 21.0)  # half side of a single shape, px at 64
TWO_R = (8.0, 13.0)   # half side of each of two shapes


def caption(t, c, s, b):
    text, _, named = TEMPLATES[t]
    return text.format(c=COLOURS[c][0], s=SHAPES[s], b=COLOURS[b][0] if named else "")


def caption_table():
    """Every caption the grammar makes, in a fixed order, and a lookup
    (template, colour, shape, background) -> index (background ignored when
    the template does not name it)."""
    caps, index = [], {}
    for t in range(NT):
        named = TEMPLATES[t][2]
        for c in range(NC):
            for s in range(NS):
                for b in range(NC):
                    if b == c:
                        continue
                    key = (t, c, s, b if named else -1)
                    if key not in index:
                        index[key] = len(caps)
                        caps.append(caption(t, c, s, b))
    return caps, index


def words():
    """The caption vocabulary (what tools/demo/vocab.py makes tokens of)."""
    ws = set()
    for cap in caption_table()[0]:
        ws.update(cap.split())
    return sorted(ws)


_CONSTANTS = {}


def _constants(device):
    """Small tables on the device, made once: copying them for every batch
    would make the host wait for the GPU each time (a pageable copy is
    ordered behind the queued work)."""
    key = str(device)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = {
            "weights": torch.tensor(TEMPLATE_WEIGHTS, device=device),
            "count": torch.tensor([tp[1] for tp in TEMPLATES], device=device),
            "palette": torch.tensor([rgb for _, rgb in COLOURS], dtype=torch.float32, device=device) / 127.5 - 1,
            "captions": caption_index_tensor(device),
        }
    return _CONSTANTS[key]


def caption_index_tensor(device):
    """(NT, NC, NS, NC) long: the caption index of each combination (-1 where
    the colour equals the background)."""
    _, index = caption_table()
    lut = torch.full((NT, NC, NS, NC), -1, dtype=torch.long)
    for t in range(NT):
        for c in range(NC):
            for s in range(NS):
                for b in range(NC):
                    if b != c:
                        lut[t, c, s, b] = index[(t, c, s, b if TEMPLATES[t][2] else -1)]
    return lut.to(device)


def _uniform(n, lo, hi, g, device):
    return lo + (hi - lo) * torch.rand(n, generator=g, device=device)


def sample_specs(n, g, device, size=64):
    """n random scenes: a dict of tensors on device. g is a torch.Generator on
    that device. Geometry is in pixels of a size x size picture."""
    k = size / 64.0
    const = _constants(device)
    t = torch.multinomial(const["weights"].expand(n, -1), 1, generator=g).squeeze(1)
    c = torch.randint(0, NC, (n,), generator=g, device=device)
    b = (c + torch.randint(1, NC, (n,), generator=g, device=device)) % NC  # never c
    s = torch.randint(0, NS, (n,), generator=g, device=device)
    count = const["count"][t]
    two = count == 2
    m = MARGIN * k

    # One shape: anywhere it fits.
    r1 = _uniform(n, ONE_R[0] * k, ONE_R[1] * k, g, device)
    x1 = _uniform(n, 0, 1, g, device) * (size - 2 * (r1 + m)) + r1 + m
    y1 = _uniform(n, 0, 1, g, device) * (size - 2 * (r1 + m)) + r1 + m
    # Two shapes: one in each half (split left/right or top/bottom), 2 px apart at least.
    ra = _uniform(n, TWO_R[0] * k, TWO_R[1] * k, g, device)
    rb = _uniform(n, TWO_R[0] * k, TWO_R[1] * k, g, device)
    half = size / 2.0

    def along(r, first):
        lo = r + m if first else half + r + 1
        hi = half - r - 1 if first else size - r - m
        return lo + _uniform(n, 0, 1, g, device) * (hi - lo)

    def across(r):
        return r + m + _uniform(n, 0, 1, g, device) * (size - 2 * (r + m))

    a_al, b_al, a_ac, b_ac = along(ra, True), along(rb, False), across(ra), across(rb)
    vertical = torch.rand(n, generator=g, device=device) < 0.5  # split top/bottom
    xa = torch.where(vertical, a_ac, a_al)
    ya = torch.where(vertical, a_al, a_ac)
    xb = torch.where(vertical, b_ac, b_al)
    yb = torch.where(vertical, b_al, b_ac)

    cx = torch.stack([torch.where(two, xa, x1), xb], 1)
    cy = torch.stack([torch.where(two, ya, y1), yb], 1)
    r = torch.stack([torch.where(two, ra, r1), rb], 1)
    active = torch.stack([torch.ones_like(two), two], 1)
    lut = const["captions"]
    return {"template": t, "colour": c, "shape": s, "background": b, "count": count,
            "cx": cx, "cy": cy, "r": r, "active": active, "caption": lut[t, c, s, b]}


def _coverage(shape, cx, cy, r, xx, yy):
    """Anti-aliased coverage (n,H,W) in [0,1] of each scene's shape centred at
    (cx,cy) (n,) with half side r (n,)."""
    dx = xx - cx[:, None, None]
    dy = yy - cy[:, None, None]
    rr = r[:, None, None]
    circle = torch.sqrt(dx * dx + dy * dy) - rr
    square = torch.maximum(dx.abs(), dy.abs()) - rr
    # Apex up at (cx, cy-r), base from (cx-r, cy+r) to (cx+r, cy+r).
    side = (2 * dx.abs() - (dy + rr)) / math.sqrt(5.0)
    triangle = torch.maximum(side, dy - rr)
    sd = torch.where(shape[:, None, None] == 0, circle, torch.where(shape[:, None, None] == 1, square, triangle))
    return (0.5 - sd).clamp(0, 1)


def render(spec, size=64):
    """Pictures (n,3,size,size) in [-1,1] (float32) for the scenes of spec."""
    device = spec["colour"].device
    pal = _constants(device)["palette"]
    ys = torch.arange(size, dtype=torch.float32, device=device) + 0.5
    yy, xx = torch.meshgrid(ys, ys, indexing="ij")
    img = pal[spec["background"]][:, :, None, None].expand(-1, -1, size, size).clone()
    fg = pal[spec["colour"]][:, :, None, None]
    for k in range(2):
        a = _coverage(spec["shape"], spec["cx"][:, k], spec["cy"][:, k], spec["r"][:, k], xx, yy)
        a = (a * spec["active"][:, k, None, None].float())[:, None]
        img = img * (1 - a) + fg * a
    return img


def batch(n, g, device, size=64):
    """(pictures in [-1,1], caption indices) for n random scenes."""
    spec = sample_specs(n, g, device, size)
    return render(spec, size), spec["caption"]


def to_uint8(img):
    """(n,3,H,W) in [-1,1] -> (n,H,W,3) uint8 on the CPU, as diffusers rounds."""
    return ((img.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


# ---- measuring a picture (the same rules as tests/unit/test_demo_model.c) -----------

MIN_AREA = 12            # components smaller than this (px at 64) are specks, not shapes
SQUARE_FILL = 0.89       # fill ratio of the bounding box: square 1.0, circle 0.785,
TRIANGLE_FILL = 0.64     # triangle 0.5; the cuts are the midpoints


def nearest_colour(p):
    best, bd = 0, None
    for i, (_, rgb) in enumerate(COLOURS):
        d = sum((int(p[j]) - rgb[j]) ** 2 for j in range(3))
        if bd is None or d < bd:
            best, bd = i, d
    return best


def describe(rgb):
    """rgb: (H,W,3) uint8 tensor or nested lists. Returns a dict: background
    (palette index: the most common nearest colour of the border pixels),
    colour (the most common nearest colour of the other pixels, or -1),
    shapes (list of (class index, fill ratio, area)) from the 4-connected
    components of the foreground, which is every pixel nearer to the mean
    shape colour than to the mean background colour."""
    px = rgb.tolist() if hasattr(rgb, "tolist") else rgb
    H, W = len(px), len(px[0])
    lab = [[nearest_colour(px[y][x]) for x in range(W)] for y in range(H)]
    border = [(y, x) for y in range(H) for x in range(W) if y in (0, H - 1) or x in (0, W - 1)]
    counts = [0] * NC
    for y, x in border:
        counts[lab[y][x]] += 1
    bg = max(range(NC), key=lambda i: counts[i])
    counts = [0] * NC
    for y in range(H):
        for x in range(W):
            if lab[y][x] != bg:
                counts[lab[y][x]] += 1
    if max(counts) == 0:
        return {"background": bg, "colour": -1, "shapes": []}
    fg = max(range(NC), key=lambda i: counts[i])

    def mean(sel):
        s, n = [0.0, 0.0, 0.0], 0
        for y, x in sel:
            for j in range(3):
                s[j] += px[y][x][j]
            n += 1
        return [v / max(n, 1) for v in s]

    bgm = mean([(y, x) for y, x in border if lab[y][x] == bg])
    fgm = mean([(y, x) for y in range(H) for x in range(W) if lab[y][x] == fg])
    mask = [[sum((px[y][x][j] - fgm[j]) ** 2 for j in range(3)) < sum((px[y][x][j] - bgm[j]) ** 2 for j in range(3))
             for x in range(W)] for y in range(H)]
    seen = [[False] * W for _ in range(H)]
    shapes = []
    for y0 in range(H):
        for x0 in range(W):
            if not mask[y0][x0] or seen[y0][x0]:
                continue
            stack, area = [(y0, x0)], 0
            seen[y0][x0] = True
            ymin, ymax, xmin, xmax = y0, y0, x0, x0
            while stack:
                y, x = stack.pop()
                area += 1
                ymin, ymax, xmin, xmax = min(ymin, y), max(ymax, y), min(xmin, x), max(xmax, x)
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < H and 0 <= nx < W and mask[ny][nx] and not seen[ny][nx]:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
            if area < MIN_AREA * H * W / 4096:
                continue
            fill = area / ((ymax - ymin + 1) * (xmax - xmin + 1))
            cls = 1 if fill >= SQUARE_FILL else 0 if fill >= TRIANGLE_FILL else 2
            shapes.append((cls, fill, area))
    return {"background": bg, "colour": fg, "shapes": shapes}


def parse_caption(text):
    """(count, colour, shape, background or -1) of a caption of the grammar; None otherwise."""
    w = text.split()
    names = [n for n, _ in COLOURS]
    try:
        count = {"a": 1, "two": 2}[w[0]]
        c = names.index(w[1])
        s = SHAPES.index(w[2][:-1] if count == 2 else w[2])
        b = -1
        if len(w) == 7 and w[3:5] == ["on", "a"] and w[6] == "background":
            b = names.index(w[5])
        elif len(w) != 3:
            return None
        return count, c, s, b
    except (KeyError, ValueError, IndexError):
        return None


def matches(desc, text):
    """True when a describe() result fits the caption."""
    want = parse_caption(text)
    if want is None:
        return False
    count, c, s, b = want
    if b >= 0 and desc["background"] != b:
        return False
    if desc["colour"] != c or len(desc["shapes"]) != count:
        return False
    return all(cls == s for cls, _, _ in desc["shapes"])


# ---- PNG without PIL ---------------------------------------------------------------

def write_png(path, rgb):
    """rgb: (H,W,3) uint8 tensor."""
    H, W, _ = rgb.shape
    raw = b"".join(b"\x00" + bytes(rgb[y].reshape(-1).tolist()) for y in range(H))

    def chunk(tag, data):
        c = tag + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def grid(imgs, cols):
    """(n,H,W,3) uint8 -> one (rows*(H+2), cols*(W+2), 3) picture with grey gutters."""
    n, H, W, _ = imgs.shape
    rows = (n + cols - 1) // cols
    out = torch.full((rows * (H + 2), cols * (W + 2), 3), 128, dtype=torch.uint8)
    for i in range(n):
        y, x = (i // cols) * (H + 2) + 1, (i % cols) * (W + 2) + 1
        out[y:y + H, x:x + W] = imgs[i]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preview", metavar="PNG", help="write a grid of samples; their captions go to stdout")
    ap.add_argument("--check", action="store_true",
                    help="measure generated pictures with describe() and report how many match their caption")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if not args.preview and not args.check:
        ap.error("give --preview PNG or --check")
    g = torch.Generator(device=args.device).manual_seed(args.seed)
    imgs, caps = batch(args.n, g, args.device, args.size)
    u8 = to_uint8(imgs)
    table = caption_table()[0]
    if args.preview:
        write_png(args.preview, grid(u8, int(math.ceil(math.sqrt(args.n)))))
        for i, k in enumerate(caps.tolist()):
            print(f"{i:3d} {table[k]}")
    if args.check:
        bad = 0
        for i, k in enumerate(caps.tolist()):
            d = describe(u8[i])
            if not matches(d, table[k]):
                bad += 1
                print(f"mismatch {i}: {table[k]!r}: {d}", file=sys.stderr)
        print(f"{args.n - bad}/{args.n} pictures match their captions")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
