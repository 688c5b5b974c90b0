"""Procedural demo data for trying everything without a download: `demo:cats`, `demo:dogs`, `demo:cats:N`.

Cartoon faces made of a few large shapes on a plain light background, easy enough for a narrow GAN to learn
in minutes on a CPU, yet a distribution: fur colour (3 per domain), face position and size, eye spacing and
ear size vary per image. Cats: pointy ears in the fur colour with pink insides, green eyes with slit pupils,
a pink nose. Dogs: dark floppy ears hanging beside a longer head, a light snout, a black nose, brown eyes.
Deterministic: the same spec and size give the same bytes on any machine, and demo:cats:N is a prefix of
demo:cats:M. data.py imports this module only for demo specs; errors here are ValueErrors (data.py turns them
into one-line user errors).
"""
import numpy as np

DEMO_DOMAINS = ("cats", "dogs")
DEMO_SIZES = (32, 64, 128, 256)  # the sizes the models are built for; the renderer works at any size
DEMO_DEFAULT_N = 2048

# RGB in 0..1: three fur colours per domain (cats: ginger, grey, dark; dogs: golden, brown, white)
_FUR = {"cats": np.array([(0.90, 0.55, 0.20), (0.56, 0.57, 0.62), (0.25, 0.22, 0.22)], np.float32),
        "dogs": np.array([(0.88, 0.70, 0.38), (0.66, 0.40, 0.20), (0.95, 0.93, 0.87)], np.float32)}
_BACKGROUND = np.array([0.82, 0.87, 0.93], np.float32)  # pale blue-grey, both domains
_SEED = {"cats": 1, "dogs": 2}
_PARAMS = 8  # uniform numbers drawn per image (one row each, hence the prefix property)


def parse_demo_spec(spec):
    """'demo:cats' / 'demo:dogs' / 'demo:cats:N' -> (domain, N)."""
    parts = spec.split(":")
    valid = ", ".join(f"demo:{d}" for d in DEMO_DOMAINS)
    if len(parts) not in (2, 3) or parts[0] != "demo" or parts[1] not in DEMO_DOMAINS:
        raise ValueError(f"unknown demo data {spec!r}: use one of {valid} (optionally :N images, e.g. demo:cats:512)")
    if len(parts) == 3 and not (parts[2].isdigit() and int(parts[2]) >= 1):
        raise ValueError(f"bad image count in {spec!r}: expected a positive integer, e.g. demo:cats:512")
    return parts[1], int(parts[2]) if len(parts) == 3 else DEMO_DEFAULT_N


def make_demo(domain, n, size):
    """`n` `domain` faces as uint8 n x 3 x size x size; the same arguments give the same bytes."""
    if domain not in DEMO_DOMAINS:
        raise ValueError(f"unknown demo domain {domain!r}: use one of {', '.join(DEMO_DOMAINS)}")
    p = np.random.default_rng(_SEED[domain]).random((n, _PARAMS)).astype(np.float32)
    out = np.empty((n, 3, size, size), np.uint8)
    step = max(1, (1 << 16) // (size * size))  # 256 KB float32 masks: they stay in cache
    for i in range(0, n, step):
        out[i:i + step] = _render(domain, p[i:i + step], size)
    return out


def _ellipse(u, v, cx, cy, rx, ry, px):
    """Coverage (0..1) of an axis-aligned ellipse, with a ~1 px linear edge (antialiasing without exp/erf)."""
    cx, cy, rx, ry = (np.asarray(a, np.float32) for a in (cx, cy, rx, ry))  # float32 throughout
    d = np.sqrt(((u - cx) * (1 / rx)) ** 2 + ((v - cy) * (1 / ry)) ** 2)
    return np.clip((1 - d) * (np.minimum(rx, ry) / px) + 0.5, 0, 1)


def _triangle(u, v, corners, px, inset=0.0):
    """Coverage of a triangle (shrunk by `inset` face units), with a ~1 px edge: from the signed distance to
    its edges in pixels (positive inside), the minimum over the three edges."""
    f32 = lambda a: np.asarray(a, np.float32)  # keep everything float32 (a float64 scalar would promote)
    (ax, ay), (bx, by), (cx, cy) = [(f32(x), f32(y)) for x, y in corners]
    orient = np.sign((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))  # so "inside" is positive either way round
    sd = None
    for (x0, y0), (x1, y1) in (((ax, ay), (bx, by)), ((bx, by), (cx, cy)), ((cx, cy), (ax, ay))):
        ex, ey = x1 - x0, y1 - y0
        k = orient / (np.sqrt(ex * ex + ey * ey) * px)  # per image: fold sign, edge length and pixel size
        d = (ex * k) * (v - y0) - (ey * k) * (u - x0)
        sd = d if sd is None else np.minimum(sd, d)
    return np.clip(sd - f32(inset) / px + 0.5, 0, 1)


def _paint(img, alpha, rgb):
    """Alpha-blend a colour ((3,) or per image (n, 3)) into img (n, 3, H, W) where the coverage (n, H, W) says."""
    rgb = np.broadcast_to(np.asarray(rgb, np.float32), (len(img), 3))
    img += alpha[:, None] * (rgb[:, :, None, None] - img)


def _render(domain, p, size):
    """One face per row of `p` (n x _PARAMS uniforms) -> uint8 n x 3 x size x size.

    Vectorised over the batch: each shape is a coverage mask on the n x H x W grid in face coordinates (u, v)
    (shifted and scaled per image), alpha-blended in order. Only + - * / sqrt and clipping are used (IEEE
    correctly rounded), so the bytes do not depend on the CPU's vector width or the thread count.
    """
    n, f32 = len(p), np.float32
    col = lambda a: a.astype(f32).reshape(-1, 1, 1)  # per-image scalar, broadcast over the pixel grid
    c = (np.arange(size, dtype=f32) + f32(0.5)) * f32(2 / size) - f32(1)  # pixel centres in [-1, 1]
    x, y = c.reshape(1, 1, size), c.reshape(1, size, 1)
    img = np.empty((n, 3, size, size), f32)
    img[:] = (_BACKGROUND * (0.96 + 0.08 * p[:, 0:1]))[:, :, None, None]  # near-plain, slightly lighter/darker

    # pose: centre +-0.06, scale 0.9..1.1; y points down
    cx, cy, s = col(p[:, 1] * 0.12 - 0.06), col(p[:, 2] * 0.12 - 0.06), col(0.9 + 0.2 * p[:, 3])
    u, v = (x - cx) / s, (y - cy) / s
    px = f32(2 / size) / s  # one pixel in face units: the width of the antialiased edges
    palette = _FUR[domain]
    fur = palette[np.minimum((p[:, 4] * len(palette)).astype(np.int64), len(palette) - 1)]
    fur = np.clip(fur * (0.92 + 0.16 * p[:, 5:6]), 0, 1)
    gap, ear = col(0.21 + 0.06 * p[:, 6]), col(0.9 + 0.2 * p[:, 7])

    if domain == "cats":
        for side in (-1, 1):  # pointy ears first, so the head covers their base
            corners = ((side * 0.6, 0.0), (side * 0.1, -0.35), (side * 0.55, -0.35 - 0.45 * ear))
            _paint(img, _triangle(u, v, corners, px), fur)
            _paint(img, _triangle(u, v, corners, px, inset=0.08), (0.95, 0.6, 0.65))  # pink inside
        _paint(img, _ellipse(u, v, 0, 0.1, 0.62, 0.52, px), fur)  # round, wide head
        for side in (-1, 1):  # green eyes, black slit pupils
            _paint(img, _ellipse(u, v, side * gap, 0.02, 0.12, 0.1, px), (0.45, 0.8, 0.25))
            _paint(img, _ellipse(u, v, side * gap, 0.02, 0.035, 0.09, px), (0.05, 0.05, 0.05))
        _paint(img, _triangle(u, v, ((-0.08, 0.22), (0.08, 0.22), (0.0, 0.32)), px), (0.95, 0.5, 0.6))
    else:
        _paint(img, _ellipse(u, v, 0, 0.0, 0.5, 0.62, px), fur)  # long head
        for side in (-1, 1):  # dark brown floppy ears hanging beside it
            _paint(img, _ellipse(u, v, side * 0.5, 0.08, 0.17 * ear, 0.42 * ear, px), (0.3, 0.18, 0.1))
        _paint(img, _ellipse(u, v, 0, 0.33, 0.28, 0.22, px), (0.96, 0.92, 0.84))  # light snout
        _paint(img, _ellipse(u, v, 0, 0.2, 0.12, 0.085, px), (0.05, 0.05, 0.05))  # big black nose
        for side in (-1, 1):  # round brown eyes
            _paint(img, _ellipse(u, v, side * gap, -0.14, 0.08, 0.08, px), (0.25, 0.14, 0.07))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
