"""Image data for the GAN scripts: folders of photos, the Cat Dataset face crop, procedural demo data, batches.

A dataset is decoded once into one uint8 array (N x 3 x S x S: channels first, like the models want it) and
cached on disk as a .npy file that later runs memory-map, so no training loop ever decodes a JPEG. Batches are
drawn by `InfiniteBatches`: endless, seeded, exactly resumable, converted to float on the device.

    dataset = load_dataset("/data/cats", 64)             # or "demo:cats", "demo:dogs:512"
    batches = InfiniteBatches(dataset, 64, "cuda", seed=0, flip=True)
    x = next(batches)                                    # float32 64 x 3 x 64 x 64 in [-1, 1] on the GPU

Specs: a folder (searched recursively for jpg/jpeg/png/bmp/webp/gif/tif/tiff, decoded by content, so a PNG
named .jpg is fine), or `demo:cats` / `demo:dogs` / `demo:cats:N`: procedural cartoon faces (N images,
default 2048) generated in a second from a fixed seed, for trying everything without downloading data.
Cat Dataset folders (`x.jpg` + `x.jpg.cat` landmarks) are cropped to the face automatically (thesis 2.1).

Command line:
    python data.py prepare ~/CAT_DATASET data/cats-128 --size 128   # crop faces, resize, write PNGs once
    python data.py info /work/shared/data/cat-faces-64 --size 64    # count, size, pixel statistics
    python data.py info demo:dogs --size 32
    python data.py demo out/demo-cats --domain cats --n 64 --size 64  # look at / FID-test the demo data
"""
import argparse
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from common import UserError, run_main

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
DEMO_DOMAINS = ("cats", "dogs")
DEMO_SIZES = (32, 64, 128, 256)  # the sizes the models are built for; the demo renderer works at any size
DEMO_DEFAULT_N = 2048
CAT_MARGIN = 10  # pixels added around the landmarks' bounding box (thesis 2.1)
CACHE_VERSION = 1  # bump when decoding/cropping/resizing changes, so old caches are not reused


class DataWarning(UserWarning):
    """Some images were skipped or degraded (unreadable files, images upsampled to the training size)."""


# ----------------------------------------------------------------------------- files and decoding

def list_images(folder):
    """All image files under `folder` (recursive, by extension, case-insensitive), sorted by path."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise UserError(f"image folder {folder} {what}")
    paths = []
    for root, _dirs, files in os.walk(folder):
        paths += [os.path.join(root, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        kinds = "/".join(e[1:] for e in IMAGE_EXTENSIONS)
        raise UserError(f"no images ({kinds}) found in {folder}")
    return sorted(paths)


def to_rgb(img):
    """Any PIL mode -> RGB. Transparent pixels are composited on black: the colour stored under alpha=0 is
    arbitrary (often junk), so dropping alpha would show it; black gives every image the same defined backdrop."""
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        # 16-bit greyscale (PNG/TIFF): convert() would clip at 255 (all white), so scale 0..65535 to 0..255 first
        a = np.asarray(img, dtype=np.float64) / 257.0
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
    if img.has_transparency_data:  # RGBA, LA, PA, or P/L/RGB with a transparent colour
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, img.convert("RGBA")).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # L, P, CMYK, YCbCr, 1, F ...


def load_image(path):
    """Decode one image file into an RGB PIL image (format sniffed from the content, not the name).

    `.load()` decodes now, so a truncated or corrupt file raises here (OSError/ValueError), not later.
    EXIF orientation is ignored, as in torchvision's loaders: pixels stay in stored order, which is also the
    order the Cat Dataset landmarks refer to.
    """
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def read_cat_landmarks(path):
    """A Cat Dataset `.cat` file, `K x1 y1 ... xK yK` (K = 9 there), as a float array of shape (K, 2)."""
    with open(path) as f:
        fields = f.read().split()
    try:
        k = int(fields[0])
        xy = [float(v) for v in fields[1:1 + 2 * k]]
    except (IndexError, ValueError):
        raise ValueError(f"malformed landmark file {os.path.basename(path)}") from None
    if k < 1 or len(xy) != 2 * k:
        raise ValueError(f"landmark file {os.path.basename(path)} promises {k} points but has {len(xy) // 2}")
    return np.array(xy, dtype=np.float64).reshape(k, 2)


def cat_face_box(points, width, height):
    """The thesis' face crop from landmarks: (left, top, right, bottom), a PIL crop box (right/bottom exclusive).

    Bounding box of the points, extended by CAT_MARGIN px on each side and clipped to the image; then a square
    of side max(w, h) anchored at the box's top-left corner. If that square runs past the right/bottom edge it
    is slid left/up until it fits (so it stays square and still contains the whole face box); if it is larger
    than the image's shorter side it is shrunk to that side, keeping the top-left anchor.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    left = max(0, math.floor(pts[:, 0].min()) - CAT_MARGIN)
    top = max(0, math.floor(pts[:, 1].min()) - CAT_MARGIN)
    right = min(width, math.ceil(pts[:, 0].max()) + CAT_MARGIN)
    bottom = min(height, math.ceil(pts[:, 1].max()) + CAT_MARGIN)
    if right <= left or bottom <= top:
        raise ValueError(f"landmarks lie outside the {width}x{height} image")
    side = min(max(right - left, bottom - top), width, height)
    left, top = min(left, width - side), min(top, height - side)
    return left, top, left + side, top + side


def load_cropped(path, cat_crop=True):
    """`load_image`, then the Cat Dataset face crop when `cat_crop` and a `<path>.cat` landmark file exists."""
    img = load_image(path)
    if cat_crop and os.path.isfile(path + ".cat"):
        img = img.crop(cat_face_box(read_cat_landmarks(path + ".cat"), *img.size))
    return img


def preprocess(img, size):
    """Center-crop to a square, resize to size x size -> uint8 array (size, size, 3).

    LANCZOS in PIL is antialiased (the kernel widens with the reduction factor), so downscaling a 512 px photo
    does not alias; reducing_gap first box-reduces by an integer factor when the image is >= 3x too big, which
    is much faster with no visible difference. Images smaller than `size` are upsampled (the loader warns).
    """
    img = to_rgb(img)
    w, h = img.size
    s = min(w, h)
    if w != h:
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if s != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def load_and_preprocess(path, size, cat_crop=True):
    """One file -> uint8 array (size, size, 3): decode, face crop if landmarks exist, center crop, resize."""
    return preprocess(load_cropped(path, cat_crop), size)


def _decode_all(paths, size, cat_crop, store, progress=None):
    """Decode/crop/resize every path on a few threads and pass each result to `store(i, hwc_uint8)`.

    Threads, not processes: PIL releases the GIL while decoding and resizing, and `store` can write straight
    into a shared (memory-mapped) array without pickling anything. Returns (ok mask, [(path, reason)] of the
    files that failed, number of images that were smaller than `size`).
    """
    n = len(paths)
    ok = np.zeros(n, dtype=bool)
    small = np.zeros(n, dtype=bool)
    reasons = {}

    def work(chunk):
        for i in chunk:
            try:
                img = load_cropped(paths[i], cat_crop)
                small[i] = min(img.size) < size
                store(i, preprocess(img, size))
                ok[i] = True
            except Exception as e:  # corrupt, truncated, not an image, bad landmarks: skip the file, go on
                reasons[i] = str(e).replace(paths[i], os.path.basename(paths[i]))[:80] or type(e).__name__
        return len(chunk)

    chunks = [range(i, min(i + 64, n)) for i in range(0, n, 64)]
    done = 0
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for k in pool.map(work, chunks):
            done += k
            if progress:
                progress(done, n)
    return ok, [(paths[i], reasons[i]) for i in sorted(reasons)], int(small.sum())


def _skipped_message(folder, failed, total):
    names = ", ".join(f"{os.path.relpath(p, folder)} ({why})" for p, why in failed[:5])
    more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
    return f"skipped {len(failed)} of {total} images in {folder} that could not be read: {names}{more}"


def _small_message(folder, n_small, total, size):
    return (f"{n_small} of {total} images in {folder} are smaller than {size}x{size} (after cropping) "
            f"and were upsampled")


# ----------------------------------------------------------------------------- dataset

def uint8_to_float(x):
    """uint8 tensor -> float32 in [-1, 1] (x / 127.5 - 1). One function, so every path normalises identically."""
    return x.float().div_(127.5).sub_(1.0)


class ImageDataset(torch.utils.data.Dataset):
    """N images, `images` = uint8 array N x 3 x S x S (channels first, the models' layout, so a batch is one
    fancy index + transfer + float conversion). For folders it is a read-only memmap of the cache file."""

    def __init__(self, images, name, *, spec=None, paths=(), cache_file=None):
        self.images = images
        self.name = name  # short, filename-safe ("cat-faces-64", "demo-cats")
        self.spec = spec if spec is not None else name  # what the user asked for (folder path or demo spec)
        self.size = int(images.shape[-1])
        self.paths = list(paths)  # source file of each image; empty for demo data
        self.cache_file = cache_file

    def __len__(self):
        return int(self.images.shape[0])

    def __getitem__(self, i):
        # np.array copies: the memmap is read-only and torch wants writable memory
        return uint8_to_float(torch.from_numpy(np.array(self.images[i])))

    def __getstate__(self):
        # DataLoader workers get a pickled copy: send the cache file name, not gigabytes of pixels
        state = dict(self.__dict__)
        if self.cache_file is not None:
            state["images"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.images is None:
            self.images = np.load(self.cache_file, mmap_mode="r")

    def __repr__(self):
        return f"ImageDataset({self.spec!r}: {len(self)} images, {self.size}x{self.size})"


def check_size(size):
    """Validate an image size (an int from 8 to 1024); a bad one is a UserError."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 1024:
        raise UserError(f"image size must be an integer from 8 to 1024, got {size!r}")
    return int(size)


def default_cache_dir():
    return os.environ.get("GANOPT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ganopt")


def load_dataset(spec, size, *, cache_dir=None, cat_crop=True, max_images=None, verbose=True):
    """A folder of images or a demo spec -> ImageDataset of size x size images.

    Folders are decoded once (unreadable files are skipped with one DataWarning) and cached in `cache_dir`
    (default $GANOPT_CACHE or ~/.cache/ganopt; False disables) as a .npy keyed by the files' relative paths,
    sizes and mtimes (and .cat landmark files) plus the settings, so any change to the data means a rebuild.
    `max_images` keeps the first N files in sorted order. Demo data is generated, never cached.
    """
    size = check_size(size)
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise UserError(f"max_images must be a positive integer, got {max_images!r}")
    spec = os.fspath(spec)
    log = (lambda msg, **kw: print(msg, file=sys.stderr, flush=True, **kw)) if verbose else (lambda *a, **k: None)

    if spec.startswith("demo:"):
        domain, n = parse_demo_spec(spec)
        n = min(n, max_images or n)
        t0 = time.time()
        images = make_demo(domain, n, size)
        log(f"data: generated {n} demo {domain} at {size}x{size} in {time.time() - t0:.1f} s")
        return ImageDataset(images, f"demo-{domain}", spec=spec)

    folder = os.path.abspath(spec)
    paths = list_images(folder)[:max_images]
    if cache_dir is False:
        images, kept, messages = _decode_into_memory(folder, paths, size, cat_crop, log)
        cache_file = None
    else:
        images, kept, messages, cache_file = _load_or_build_cache(
            folder, paths, size, cat_crop, max_images, cache_dir or default_cache_dir(), log)
    for msg in messages:
        warnings.warn(msg, DataWarning, stacklevel=2)
    name = os.path.basename(folder.rstrip(os.sep)) or "images"
    return ImageDataset(images, name, spec=folder, paths=kept, cache_file=cache_file)


def _decode_folder(folder, paths, size, cat_crop, out, log, note=""):
    """Decode `paths` into `out` (N x 3 x S x S uint8, in RAM or a memmap). Returns (ok mask, kept paths,
    warning messages); nothing decodable is a UserError. Rows of failed files are left as holes."""
    n = len(paths)

    def store(i, hwc):
        out[i] = hwc.transpose(2, 0, 1)

    live = sys.stderr.isatty() and n >= 1000  # a live counter on a terminal, for sets that take a while
    last = [0.0]

    def progress(done, total):
        if time.time() - last[0] > 0.5:
            last[0] = time.time()
            log(f"\rdata: decoding {total} images from {folder}: {done}/{total}", end="")

    t0 = time.time()
    ok, failed, n_small = _decode_all(paths, size, cat_crop, store, progress if live else None)
    cr = "\r" if live else ""
    log(f"{cr}data: decoded {int(ok.sum())} images from {folder} to {size}x{size} in {time.time() - t0:.1f} s{note}")
    if not ok.any():
        examples = "; ".join(f"{os.path.relpath(p, folder)}: {why}" for p, why in failed[:3])
        raise UserError(f"none of the {n} images in {folder} could be read ({examples})")
    messages = []
    if failed:
        messages.append(_skipped_message(folder, failed, n))
    if n_small:
        messages.append(_small_message(folder, n_small, n - len(failed), size))
    return ok, [p for p, good in zip(paths, ok) if good], messages


def _decode_into_memory(folder, paths, size, cat_crop, log):
    out = np.empty((len(paths), 3, size, size), np.uint8)
    ok, kept, messages = _decode_folder(folder, paths, size, cat_crop, out, log)
    return (out if ok.all() else out[ok]), kept, messages


def _new_npy(path, shape):
    """A writable uint8 .npy memmap whose disk space is reserved up front: a full disk is then a clean OSError
    here, not a SIGBUS later while writing pixels into a sparse file."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, os.path.getsize(path))
    return out


def _cache_key(folder, paths, size, cat_crop, max_images):
    """Hash of everything that determines the decoded array: files (relative path, size, mtime; the .cat
    landmarks too when cropping), size, crop flag, max_images, the cache format version."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, size, bool(cat_crop), max_images]).encode())
    for p in paths:
        st = os.stat(p)
        entry = [os.path.relpath(p, folder), st.st_size, st.st_mtime_ns]
        if cat_crop and os.path.exists(p + ".cat"):
            st = os.stat(p + ".cat")
            entry += [st.st_size, st.st_mtime_ns]
        h.update(json.dumps(entry).encode())
    return h.hexdigest()[:20]


def _load_or_build_cache(folder, paths, size, cat_crop, max_images, cache_dir, log):
    """Returns (images memmap, kept paths, warning messages, cache file)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(folder)) or "images"
    stem = os.path.join(cache_dir, f"{base}-{size}px-{_cache_key(folder, paths, size, cat_crop, max_images)}")
    npy, meta_file = stem + ".npy", stem + ".json"

    # warm: opening the memmap is instant; pages are read as batches touch them
    try:
        with open(meta_file) as f:
            meta = json.load(f)
        images = np.load(npy, mmap_mode="r")
        if images.dtype == np.uint8 and images.shape == (len(meta["paths"]), 3, size, size):
            log(f"data: {len(images)} images from {folder} at {size}x{size} (cached: {npy})")
            return images, [os.path.join(folder, r) for r in meta["paths"]], meta["messages"], npy
    except (OSError, ValueError, KeyError, TypeError):
        pass  # missing, half-written or foreign files: rebuild

    # cold: decode straight into temp .npy files beside the final ones (so sets larger than RAM work), then
    # rename them into place: atomic, so a reader never sees half a file, and concurrent builders both win
    tmps = []

    def tmp_file():
        fd, path = tempfile.mkstemp(dir=cache_dir, prefix=os.path.basename(stem) + ".", suffix=".tmp")
        os.close(fd)
        os.chmod(path, 0o644)  # mkstemp makes 0600; a shared $GANOPT_CACHE should be readable by others
        tmps.append(path)
        return path

    try:
        try:
            os.makedirs(cache_dir, exist_ok=True)
            tmp = tmp_file()
            out = _new_npy(tmp, (len(paths), 3, size, size))
        except OSError as e:  # read-only or full disk: caching is an optimisation, carry on without it
            images, kept, messages = _decode_into_memory(folder, paths, size, cat_crop, log)
            return images, kept, [f"cannot write the data cache in {cache_dir} ({e}); decoded into memory"] + messages, None
        ok, kept, messages = _decode_folder(folder, paths, size, cat_crop, out, log, f" (caching in {npy})")
        if not ok.all():  # some files failed: copy the good rows into a file of the right length
            keep = np.flatnonzero(ok)
            tmp = tmp_file()
            compact = _new_npy(tmp, (len(keep), 3, size, size))
            for j in range(0, len(keep), 1024):
                compact[j:j + 1024] = out[keep[j:j + 1024]]
            out = compact
        out.flush()
        del out
        os.replace(tmp, npy)
        meta = {"folder": folder, "size": size, "cat_crop": bool(cat_crop), "max_images": max_images,
                "paths": [os.path.relpath(p, folder) for p in kept], "messages": messages}
        with open(tmp_file(), "w") as f:
            json.dump(meta, f)
        os.replace(tmps[-1], meta_file)
    finally:
        for path in tmps:
            if os.path.exists(path):
                os.remove(path)
    return np.load(npy, mmap_mode="r"), kept, messages, npy


# ----------------------------------------------------------------------------- demo data

def parse_demo_spec(spec):
    """'demo:cats' / 'demo:dogs' / 'demo:cats:N' -> (domain, N)."""
    parts = spec.split(":")
    valid = ", ".join(f"demo:{d}" for d in DEMO_DOMAINS)
    if len(parts) not in (2, 3) or parts[1] not in DEMO_DOMAINS:
        raise UserError(f"unknown demo data {spec!r}: use one of {valid} (optionally :N images, e.g. demo:cats:512)")
    if len(parts) == 3 and not (parts[2].isdigit() and int(parts[2]) >= 1):
        raise UserError(f"bad image count in {spec!r}: expected a positive integer, e.g. demo:cats:512")
    return parts[1], int(parts[2]) if len(parts) == 3 else DEMO_DEFAULT_N


# Palettes (RGB 0..1). Cats: ginger, grey, black, cream, blue-grey, white fur and green/yellow/amber/blue eyes;
# dogs: golden, chocolate, tan, black, white, red fur and brown eyes. Related domains, visibly different.
_CAT_FUR = np.array([(0.86, 0.52, 0.22), (0.56, 0.56, 0.58), (0.17, 0.16, 0.17), (0.92, 0.84, 0.68),
                     (0.58, 0.63, 0.72), (0.94, 0.94, 0.92)], np.float32)
_CAT_EYES = np.array([(0.45, 0.72, 0.25), (0.88, 0.78, 0.20), (0.90, 0.56, 0.14), (0.40, 0.62, 0.88)], np.float32)
_DOG_FUR = np.array([(0.86, 0.66, 0.32), (0.42, 0.26, 0.14), (0.76, 0.56, 0.36), (0.13, 0.11, 0.10),
                     (0.93, 0.90, 0.84), (0.70, 0.36, 0.16)], np.float32)
_DEMO_SEED = {"cats": 1, "dogs": 2}
_DEMO_PARAMS = 20  # uniform numbers drawn per image (one row each, so demo:cats:N is a prefix of demo:cats:M)


def _ellipse(u, v, cx, cy, rx, ry, px):
    """Coverage (0..1) of an axis-aligned ellipse, with a ~1 px linear edge (antialiasing without exp/erf)."""
    cx, cy, rx, ry = (np.asarray(a, np.float32) for a in (cx, cy, rx, ry))  # float32 throughout
    d = np.sqrt(((u - cx) * (1 / rx)) ** 2 + ((v - cy) * (1 / ry)) ** 2)
    return np.clip((1 - d) * (np.minimum(rx, ry) / px) + 0.5, 0, 1)


def _triangle(u, v, corners, px):
    """Signed distance to a triangle in pixels (positive inside): the minimum of the three edge distances.
    Coverage is clip(sd + 0.5, 0, 1), a ~1 px edge; sd > k*px is the same triangle inset by k px."""
    f32 = lambda a: np.asarray(a, np.float32)  # keep everything float32 (a float64 scalar would promote)
    (ax, ay), (bx, by), (cx, cy) = [(f32(x), f32(y)) for x, y in corners]
    orient = np.sign((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))  # so "inside" is positive either way round
    sd = None
    for (x0, y0), (x1, y1) in (((ax, ay), (bx, by)), ((bx, by), (cx, cy)), ((cx, cy), (ax, ay))):
        ex, ey = x1 - x0, y1 - y0
        k = orient / (np.sqrt(ex * ex + ey * ey) * px)  # per image: fold sign, edge length and pixel size
        d = (ex * k) * (v - y0) - (ey * k) * (u - x0)
        sd = d if sd is None else np.minimum(sd, d)
    return sd


def _paint(img, alpha, rgb):
    """Alpha-blend a per-image colour (n, 3) into img (n, 3, H, W) where the coverage `alpha` (n, H, W) says."""
    img += alpha[:, None] * (rgb[:, :, None, None] - img)


def _pick(palette, u, jitter, brightness):
    """A palette colour per image, varied a little per channel and in brightness."""
    idx = np.minimum((u * len(palette)).astype(np.int64), len(palette) - 1)
    rgb = palette[idx] * (0.85 + 0.3 * brightness)[:, None] + (jitter - 0.5) * 0.08
    return np.clip(rgb, 0, 1).astype(np.float32)


def _render_faces(domain, p, size):
    """Draw one cartoon face per row of `p` (n x _DEMO_PARAMS uniforms) -> uint8 n x 3 x size x size.

    Vectorised over the batch: every shape is a coverage mask computed on the whole n x H x W grid in
    face-local coordinates (u, v) (shifted, scaled and tilted per image), then alpha-blended in order.
    Only + - * / sqrt and clipping are used (IEEE correctly rounded), so the bytes do not depend on the CPU's
    vector width or the thread count: same spec, same images.
    """
    n, f32 = len(p), np.float32
    col = lambda a: a.astype(f32).reshape(-1, 1, 1)  # per-image scalar, broadcast over the pixel grid
    c = (np.arange(size, dtype=f32) + f32(0.5)) * f32(2 / size) - f32(1)  # pixel centres in [-1, 1]
    x, y = c.reshape(1, 1, size), c.reshape(1, size, 1)

    # background: a muted vertical gradient, same distribution for both domains
    top = p[:, 0:3] * 0.6 + 0.2
    top = (top + top.mean(1, keepdims=True)) * 0.5
    bottom = top * (0.55 + 0.4 * p[:, 3:4])
    t = (y + 1) * f32(0.5)
    img = top[:, :, None, None] * (1 - t) + bottom[:, :, None, None] * t  # (n, 3, size, 1)
    img = np.ascontiguousarray(np.broadcast_to(img, (n, 3, size, size)), dtype=f32)

    # pose: centre +-0.1, scale 0.85..1.1, tilt +-0.15 rad (sin drawn, cos = sqrt(1 - sin^2): no libm cos)
    cx, cy, s = col(p[:, 4] * 0.2 - 0.1), col(p[:, 5] * 0.2 - 0.1), col(0.85 + 0.25 * p[:, 6])
    sn = col(p[:, 7] * 0.3 - 0.15)
    cs = np.sqrt(1 - sn * sn)
    u = (cs * (x - cx) + sn * (y - cy)) / s
    v = (cs * (y - cy) - sn * (x - cx)) / s
    px = f32(2 / size) / s  # one pixel in face units: the width of the antialiased edges

    eye_gap, eye_size, ear = col(0.19 + 0.07 * p[:, 12]), col(0.85 + 0.3 * p[:, 13]), col(0.9 + 0.25 * p[:, 14])
    light = (0.3 + 0.5 * p[:, 15:16]).astype(f32)  # how much lighter the muzzle is than the fur
    grey = lambda g: np.full((n, 3), g, f32)
    if domain == "cats":
        fur = _pick(_CAT_FUR, p[:, 8], p[:, 9:12], p[:, 16])
        for side in (-1, 1):  # pointy ears first, so the head covers their base
            base0, base1 = (side * 0.58, 0.0), (side * 0.12, -0.36)
            apex = (side * (0.5 + 0.1 * col(p[:, 17])), -0.38 - 0.5 * ear)
            sd = _triangle(u, v, (base0, base1, apex), px)
            _paint(img, np.clip(sd + 0.5, 0, 1), fur)
            inner = np.clip(sd - (0.075 / px) + 0.5, 0, 1)  # pink inner ear: the same triangle, inset
            _paint(img, inner, np.clip(fur * 0.4 + np.array([0.55, 0.35, 0.38], f32), 0, 1))
        _paint(img, _ellipse(u, v, 0, 0.08, 0.6, 0.5, px), fur)  # round, wide head
        cheeks = fur + (0.95 - fur) * light
        for side in (-1, 1):
            _paint(img, _ellipse(u, v, side * 0.09, 0.33, 0.12, 0.1, px), cheeks)
        iris = _pick(_CAT_EYES, p[:, 18], p[:, 9:12], p[:, 19])
        for side in (-1, 1):  # almond eyes with slit pupils
            _paint(img, _ellipse(u, v, side * eye_gap, 0.0, 0.12 * eye_size, 0.085 * eye_size, px), iris)
            _paint(img, _ellipse(u, v, side * eye_gap, 0.0, 0.03 * eye_size, 0.078 * eye_size, px), grey(0.05))
        pink = np.broadcast_to(np.array([0.85, 0.5, 0.55], f32), (n, 3))
        nose = _triangle(u, v, ((-0.065, 0.19), (0.065, 0.19), (0.0, 0.27)), px)
        _paint(img, np.clip(nose + 0.5, 0, 1), pink)  # small nose
    else:
        fur = _pick(_DOG_FUR, p[:, 8], p[:, 9:12], p[:, 16])
        _paint(img, _ellipse(u, v, 0, -0.02, 0.5, 0.6, px), fur)  # long head
        ear_rgb = fur * (0.35 + 0.3 * p[:, 17:18])  # darker floppy ears
        for side in (-1, 1):  # tall ellipses hanging beside the head, tilted outwards (cos/sin of ~0.245 rad)
            eu, ev = u - side * 0.5, v - 0.02
            _paint(img, _ellipse(0.97 * eu + side * 0.24 * ev, 0.97 * ev - side * 0.24 * eu, 0, 0,
                                 0.17 * ear, 0.42 * ear, px), ear_rgb)
        _paint(img, _ellipse(u, v, 0, 0.3, 0.3, 0.25, px), fur + (0.93 - fur) * light)  # light snout
        _paint(img, _ellipse(u, v, 0, 0.17, 0.11, 0.075, px), grey(0.08))  # big black nose
        brown = np.broadcast_to(np.array([0.25, 0.14, 0.07], f32), (n, 3))
        for side in (-1, 1):  # round brown eyes with a highlight
            _paint(img, _ellipse(u, v, side * eye_gap, -0.14, 0.075 * eye_size, 0.075 * eye_size, px), brown)
            _paint(img, _ellipse(u, v, side * eye_gap + 0.022, -0.16, 0.022 * eye_size, 0.022 * eye_size, px),
                   grey(0.95))
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_demo(domain, n, size):
    """`n` procedural `domain` faces (uint8 n x 3 x size x size), deterministic: same arguments, same bytes."""
    if domain not in DEMO_DOMAINS:
        raise UserError(f"unknown demo domain {domain!r}: use one of {', '.join(DEMO_DOMAINS)}")
    size = check_size(size)
    p = np.random.default_rng(_DEMO_SEED[domain]).random((n, _DEMO_PARAMS)).astype(np.float32)
    out = np.empty((n, 3, size, size), np.uint8)
    step = max(1, (1 << 16) // (size * size))  # 256 KB float32 masks: stay in cache, no page-fault storm
    for i in range(0, n, step):
        out[i:i + step] = _render_faces(domain, p[i:i + step], size)
    return out


# ----------------------------------------------------------------------------- batches

def _mix(*ints):
    """A 63-bit torch seed from several ints (seed, pass, stream), with no accidental collisions."""
    return int.from_bytes(hashlib.sha256(repr(ints).encode()).digest()[:8], "little") >> 1


class InfiniteBatches:
    """Endless shuffled batches of an ImageDataset: float B x 3 x S x S in [-1, 1] on `device`.

    Pass k over the data is the permutation from a torch.Generator seeded with (seed, k); a tail shorter than
    a batch is dropped and pass k+1 begins. Flip bits (flip=True) come from a second generator seeded with
    (seed, k, 1). Both are pure functions of (seed, pass), so the whole state is (pass, position): resuming
    from `state_dict()` gives bitwise the batches an uninterrupted run would have drawn.
    """

    def __init__(self, dataset, batch_size, device, *, seed=0, flip=False):
        n = len(dataset)
        if not 1 <= batch_size <= n:
            raise UserError(f"batch size {batch_size} must be between 1 and the number of images ({n} in {dataset.name})")
        self.dataset, self.batch_size, self.seed, self.flip = dataset, batch_size, seed, flip
        self.device = torch.device(device)
        self.epoch, self.pos = 0, 0  # current pass and position in its permutation
        self._order_epoch = None

    def _order(self):
        if self._order_epoch != self.epoch:  # draw the permutation (and flips) of a new pass once
            n = len(self.dataset)
            self._perm = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(self.seed, self.epoch))).numpy()
            flips = torch.rand(n, generator=torch.Generator().manual_seed(_mix(self.seed, self.epoch, 1))) < 0.5
            self._flips = flips.numpy()
            self._order_epoch = self.epoch
        return self._perm, self._flips

    def __iter__(self):
        return self

    def __next__(self):
        if self.pos + self.batch_size > len(self.dataset):
            self.epoch, self.pos = self.epoch + 1, 0
        perm, flips = self._order()
        i, j = self.pos, self.pos + self.batch_size
        self.pos = j
        x = np.asarray(self.dataset.images[perm[i:j]])  # fancy index: a fresh, writable copy (also of a memmap)
        if self.flip:
            f = flips[i:j]
            x[f] = x[f, :, :, ::-1]
        # ship uint8 (4x less traffic than float), convert on the device; pinned memory lets the copy overlap
        t = torch.from_numpy(x)
        if self.device.type == "cuda":
            t = t.pin_memory()
        return uint8_to_float(t.to(self.device, non_blocking=True))

    def state_dict(self):
        return {"seed": int(self.seed), "epoch": int(self.epoch), "pos": int(self.pos), "n": len(self.dataset)}

    def load_state_dict(self, state):
        self.seed, self.epoch, self.pos = int(state["seed"]), int(state["epoch"]), int(state["pos"])
        if int(state["n"]) != len(self.dataset):
            warnings.warn(f"the dataset had {state['n']} images when this state was saved and has {len(self.dataset)}"
                          " now: continuing with a new pass, not the exact batch sequence", DataWarning, stacklevel=2)
            self.epoch, self.pos = self.epoch + 1, 0


def make_loader(dataset, batch_size, *, workers=0, device="cpu", seed=0):
    """The standard-PyTorch alternative to InfiniteBatches: an endless generator over a shuffled DataLoader
    (drop_last, worker processes, pinned memory on CUDA). Transfers float32, and resuming is not exact."""
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed))
    if len(loader) == 0:
        raise UserError(f"batch size {batch_size} is larger than the dataset ({len(dataset)} images)")

    def forever():
        while True:
            for x in loader:
                yield x.to(device, non_blocking=True)
    return forever()


# ----------------------------------------------------------------------------- command line

def _output_folder(dst, overwrite):
    """Create `dst`; refuse a non-empty one unless overwrite (then our numbered PNGs there are removed)."""
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise UserError(f"output {dst} exists and is not a folder")
    os.makedirs(dst, exist_ok=True)
    entries = os.listdir(dst)
    if entries and not overwrite:
        raise UserError(f"output folder {dst} is not empty (use --overwrite to write into it)")
    for e in entries:  # stale images of an earlier, larger run would otherwise mix in
        if re.fullmatch(r"\d+\.png|sources\.txt", e):
            os.remove(os.path.join(dst, e))


def prepare(src, dst, size, *, cat_crop=True, overwrite=False, verbose=True):
    """Write a face-cropped, center-cropped, resized PNG copy of folder `src`: dst/00000.png, ... in sorted
    source order, plus dst/sources.txt mapping each PNG to its source file. Returns the number written."""
    size = check_size(size)
    if src.startswith("demo:"):
        raise UserError("prepare copies an image folder; for demo data use: python data.py demo DST --domain cats")
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    paths = list_images(src)
    if os.path.realpath(src) == os.path.realpath(dst):
        raise UserError(f"output folder must differ from the source folder {src}")
    _output_folder(dst, overwrite)
    digits = max(5, len(str(len(paths) - 1)))
    names = [f"{i:0{digits}d}.png" for i in range(len(paths))]

    def store(i, hwc):  # runs on the decoding threads: PNG compression releases the GIL too
        Image.fromarray(hwc).save(os.path.join(dst, names[i]))

    t0 = time.time()
    ok, failed, n_small = _decode_all(paths, size, cat_crop, store)
    if not ok.any():
        raise UserError(f"none of the {len(paths)} images in {src} could be read")
    with open(os.path.join(dst, "sources.txt"), "w") as f:
        f.writelines(f"{names[i]}\t{os.path.relpath(paths[i], src)}\n" for i in np.flatnonzero(ok))
    if failed:
        warnings.warn(_skipped_message(src, failed, len(paths)), DataWarning, stacklevel=2)
    if n_small:
        warnings.warn(_small_message(src, n_small, int(ok.sum()), size), DataWarning, stacklevel=2)
    if verbose:
        print(f"wrote {int(ok.sum())} {size}x{size} PNGs to {dst} in {time.time() - t0:.1f} s", file=sys.stderr)
    return int(ok.sum())


def write_pngs(images, dst):
    """uint8 N x 3 x S x S -> dst/00000.png, ..."""
    digits = max(5, len(str(len(images) - 1)))
    for i, chw in enumerate(images):
        Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(os.path.join(dst, f"{i:0{digits}d}.png"))


def info(spec, size, *, cat_crop=True, cache_dir=None):
    """Print what `load_dataset` makes of `spec`: count, size, cache file, per-channel pixel statistics."""
    ds = load_dataset(spec, size, cat_crop=cat_crop, cache_dir=cache_dir)
    s1, s2 = np.zeros(3), np.zeros(3)
    for i in range(0, len(ds), 1024):  # chunked, so a memmapped set larger than RAM is fine
        chunk = np.asarray(ds.images[i:i + 1024], dtype=np.float64) / 255
        s1 += chunk.sum(axis=(0, 2, 3))
        s2 += (chunk ** 2).sum(axis=(0, 2, 3))
    count = len(ds) * ds.size * ds.size
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean ** 2, 0))
    print(f"dataset  {ds.name}  ({ds.spec})")
    print(f"images   {len(ds)} at {ds.size}x{ds.size}, uint8 N x 3 x S x S = {ds.images.nbytes / 2**20:.1f} MiB")
    print(f"cache    {ds.cache_file or '-'}")
    print(f"mean RGB {' '.join(f'{m:.3f}' for m in mean)}   (pixels in 0..1)")
    print(f"std  RGB {' '.join(f'{v:.3f}' for v in std)}")
    if ds.paths:
        print(f"files    {', '.join(os.path.basename(p) for p in ds.paths[:3])}, ...")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("prepare", help="write a cropped, resized PNG copy of an image folder (once, before training)")
    q.add_argument("src", help="image folder (searched recursively; Cat Dataset .cat landmarks are used)")
    q.add_argument("dst", help="output folder: DST/00000.png ... and DST/sources.txt")
    q.add_argument("--size", type=int, required=True, help="output side in pixels, e.g. 64 or 128")
    q.add_argument("--no-cat-crop", action="store_true", help="ignore .cat landmark files (no face crop)")
    q.add_argument("--overwrite", action="store_true", help="write into a non-empty DST (its numbered PNGs are replaced)")

    q = sub.add_parser("info", help="count, size and pixel statistics of a folder or demo spec")
    q.add_argument("spec", help="image folder, or demo:cats / demo:dogs[:N]")
    q.add_argument("--size", type=int, default=64, help="(default: %(default)s)")
    q.add_argument("--no-cat-crop", action="store_true", help="ignore .cat landmark files")
    q.add_argument("--cache-dir", default=None, help="(default: $GANOPT_CACHE or ~/.cache/ganopt)")
    q.add_argument("--no-cache", action="store_true", help="decode into memory, write no cache")

    q = sub.add_parser("demo", help="write procedural demo faces as PNGs")
    q.add_argument("dst", help="output folder: DST/00000.png ...")
    q.add_argument("--domain", choices=DEMO_DOMAINS, default="cats", help="(default: %(default)s)")
    q.add_argument("--n", type=int, default=64, help="number of images (default: %(default)s)")
    q.add_argument("--size", type=int, default=64, help="(default: %(default)s)")
    q.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")
    args = p.parse_args(argv)

    if args.command == "prepare":
        prepare(args.src, args.dst, args.size, cat_crop=not args.no_cat_crop, overwrite=args.overwrite)
    elif args.command == "info":
        info(args.spec, args.size, cat_crop=not args.no_cat_crop, cache_dir=False if args.no_cache else args.cache_dir)
    else:
        if args.n < 1:
            raise UserError(f"--n must be a positive integer, got {args.n}")
        images = make_demo(args.domain, args.n, args.size)
        dst = os.path.abspath(args.dst)
        _output_folder(dst, args.overwrite)
        write_pngs(images, dst)
        print(f"wrote {args.n} demo {args.domain} ({args.size}x{args.size}) to {dst}", file=sys.stderr)


if __name__ == "__main__":
    # warnings as one plain line ("warning: skipped 2 of ..."), not a source excerpt
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    run_main(main)
