"""Image data for the GAN scripts: image folders, demo data (demo.py), endless batches, DiffAugment.

    dataset = load_dataset("/data/cats", 64)             # or "demo:cats", "demo:dogs:512"
    batches = InfiniteBatches(dataset, 64, "cuda", seed=0, flip=True)
    x = diffaug(next(batches))                           # float32 64 x 3 x 64 x 64 in [-1, 1], augmented

A folder is searched recursively for jpg/jpeg/png/bmp/webp/gif/tif/tiff (decoded by content), a Cat Dataset
landmark file `x.jpg.cat` beside `x.jpg` crops the face (thesis 2.1), and the set is decoded once into a uint8
N x 3 x S x S .npy cache that later runs memory-map. Command line:
    python data.py prepare ~/CAT_DATASET data/cats-128 --size 128   # crop faces, resize, write PNGs once
    python data.py info data/cats-128 --size 128                    # count, size, pixel statistics
    python data.py demo out/demo-cats --domain cats --n 64 --size 64  # the demo data as PNGs
"""
import argparse, contextlib, errno, functools, hashlib, json, math, os, re, shutil, stat, sys, tempfile, time, warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
CAT_MARGIN = 10  # pixels added around the landmarks' bounding box (thesis 2.1)
CACHE_VERSION = 1  # bump when decoding/cropping/resizing changes, so old caches are not reused


class DataError(Exception):
    """A user error about data (bad path or spec, nothing readable, unwritable output): one line, exit 2."""


class DataWarning(UserWarning):
    """Some images were skipped or degraded (unreadable files, images upsampled to the training size)."""


def list_images(folder):
    """All image files under `folder` (recursive, by extension, case-insensitive), sorted by path. Only regular
    files: a symlink to one is followed; dangling links, link loops and anything else (a FIFO would block the
    reader forever, a device never ends) are skipped with one warning. Linked folders are not entered (no loops)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise DataError(f"image folder {folder} {'is not a folder' if os.path.exists(folder) else 'does not exist'}")
    paths, skipped = [], []
    for root, _, files in os.walk(folder):
        for f in files:
            if f.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(root, f)
                why = _not_a_regular_file(path)
                (skipped.append(f"{shown(os.path.relpath(path, folder))} ({why})") if why else paths.append(path))
    if skipped:
        warnings.warn(f"skipped {len(skipped)} entries of {folder} that are not regular files: {', '.join(skipped[:5])}"
                      f"{f' and {len(skipped) - 5} more' if len(skipped) > 5 else ''}", DataWarning, stacklevel=2)
    if not paths:
        raise DataError(f"no images ({'/'.join(e[1:] for e in IMAGE_EXTENSIONS)}) found in {folder}")
    return sorted(paths)


def _not_a_regular_file(path):
    """None for a regular file (or a symlink to one), else why not: dangling link, link loop, FIFO, ..."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks
    except OSError as e:
        return "dangling link" if e.errno == errno.ENOENT and os.path.islink(path) else e.strerror or str(e)
    return None if stat.S_ISREG(mode) else "not a regular file"


def shown(text):
    """A path as one line of a message: tabs, newlines and backslashes escaped (\\t, \\n, \\\\)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def to_rgb(img):
    """Any PIL mode -> RGB; transparent pixels are composited on black (the colour stored under alpha=0 is junk)."""
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit grey: convert() would clip at 255
        img = Image.fromarray(np.clip(np.rint(np.asarray(img, np.float64) / 257), 0, 255).astype(np.uint8), "L")
    if img.has_transparency_data:  # RGBA, LA, PA, or P/L/RGB with a transparent colour
        black = Image.new("RGBA", img.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, img.convert("RGBA")).convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")  # L, P, CMYK, YCbCr, 1, F ...


def load_image(path):
    """One image file (format sniffed from the content) -> RGB PIL image; a corrupt file raises here (`.load()`).
    EXIF orientation is ignored (as torchvision does): the Cat Dataset landmarks refer to the stored pixels."""
    with Image.open(path) as img:
        img.load()
        return to_rgb(img)


def cat_face_box(points, width, height):
    """The thesis' face crop, a PIL box (left, top, right, bottom): the landmarks' bounding box plus CAT_MARGIN px,
    clipped to the image; then a square of side max(w, h) from its top-left corner, slid left/up until it fits,
    and shrunk to the image's shorter side if larger."""
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
    """`load_image`, then the face crop when `cat_crop` and a Cat Dataset `<path>.cat` file exists."""
    img = load_image(path)
    if cat_crop and os.path.isfile(path + ".cat"):
        with open(path + ".cat") as f:
            fields = f.read().split()  # K x1 y1 ... xK yK (K = 9)
        if not (fields and fields[0].isdigit() and 1 <= int(fields[0]) <= (len(fields) - 1) // 2):
            raise ValueError(f"malformed landmark file {os.path.basename(path)}.cat")
        img = img.crop(cat_face_box(np.array(fields[1:1 + 2 * int(fields[0])], float).reshape(-1, 2), *img.size))
    return img


def preprocess(img, size):
    """Center-crop to a square, resize to size x size -> uint8 array (size, size, 3). PIL's LANCZOS is
    antialiased; reducing_gap box-reduces first when >= 3x too big (faster, no visible difference)."""
    img = to_rgb(img)
    w, h = img.size
    s = min(w, h)
    if w != h:
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != size:
        img = img.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)


def load_and_preprocess(path, size, cat_crop=True):
    """One file -> uint8 array (size, size, 3): decode, face crop if landmarks exist, center crop, resize."""
    return preprocess(load_cropped(path, cat_crop), size)


def _decode_folder(folder, paths, size, cat_crop):
    """Decode/crop/resize `paths` on a few threads (PIL releases the GIL) -> (uint8 N x 3 x S x S of the readable
    ones, their indices in `paths`, DataWarning texts); unreadable files are skipped, none readable is an error."""
    check_memory(len(paths) * 3 * size * size, f"decoding {len(paths)} images of {folder} at {size}x{size}")
    out, small, reasons = np.empty((len(paths), 3, size, size), np.uint8), np.zeros(len(paths), bool), {}

    def work(i):
        try:
            img = load_cropped(paths[i], cat_crop)
            small[i] = min(img.size) < size
            out[i] = preprocess(img, size).transpose(2, 0, 1)
        except Exception as e:  # corrupt, truncated, not an image, bad landmarks: skip the file, go on
            why = " ".join(str(e).replace(paths[i], os.path.basename(paths[i])).split())[:80] or type(e).__name__
            reasons[i] = f"{shown(os.path.relpath(paths[i], folder))} ({why})"

    _on_threads(work, range(len(paths)))
    ok = np.ones(len(paths), bool)
    ok[list(reasons)] = False
    kept, failed = np.flatnonzero(ok), [reasons[i] for i in sorted(reasons)]
    if not len(kept):
        raise DataError(f"none of the {len(paths)} images in {folder} could be read: {', '.join(failed[:3])}")
    messages = [f"skipped {len(failed)} of {len(paths)} images in {folder} that could not be read: "
                f"{', '.join(failed[:5])}{f' and {len(failed) - 5} more' if len(failed) > 5 else ''}"] if failed else []
    if small[kept].any():
        messages.append(f"{small[kept].sum()} of {len(kept)} images in {folder} are smaller than {size}x{size} "
                        "(after cropping) and were upsampled")
    return (out if not failed else out[kept]), kept, messages


def _on_threads(work, items):
    """`work(item)` for every item on a few threads (PIL releases the GIL). Ctrl-C or an error cancels what has
    not started instead of waiting for all of it."""
    pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))
    try:
        list(pool.map(work, items))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def check_memory(nbytes, what):
    """Refuse in one line what needs more memory than this machine has available now, before the allocation
    that would fail deep inside numpy or torch (or make the machine swap)."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):  # not Linux: the physical memory
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if nbytes > available:
        raise DataError(f"{what} needs {nbytes / 2**30:,.1f} GiB of memory, more than the {available / 2**30:,.1f} "
                        "GiB available here")


def uint8_to_float(x):
    """uint8 tensor -> float32 in [-1, 1] (x / 127.5 - 1). One function, so every path normalises identically."""
    return x.float().div_(127.5).sub_(1.0)


class ImageDataset(torch.utils.data.Dataset):
    """N images, `images` = uint8 array N x 3 x S x S (channels first, the models' layout, so a batch is one
    fancy index + transfer + float conversion). For folders it is a read-only memmap of the cache file."""

    def __init__(self, images, name, *, spec=None, paths=(), cache_file=None):  # name: short, filename-safe
        self.images, self.name, self.spec, self.paths = images, name, spec or name, list(paths)
        self.size, self.cache_file = int(images.shape[-1]), cache_file

    def __len__(self):
        return int(self.images.shape[0])

    def __getitem__(self, i):  # np.array copies: the memmap is read-only and torch wants writable memory
        return uint8_to_float(torch.from_numpy(np.array(self.images[i])))


def check_size(size):
    """Validate an image size (an int from 8 to 1024); a bad one is a DataError."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 8 <= size <= 1024:
        raise DataError(f"image size must be an integer from 8 to 1024, got {size!r}")
    return int(size)


def load_dataset(spec, size, *, cache_dir=None, cat_crop=True, max_images=None, verbose=True):
    """A folder of images or a demo spec -> ImageDataset of size x size images. A folder is decoded once
    (unreadable files skipped with one DataWarning) and cached in `cache_dir` (default $GANOPT_CACHE or
    ~/.cache/ganopt; False: no cache) under a key of its files' paths, sizes and mtimes (.cat files too) and the
    settings, so any change means a rebuild. `max_images` keeps the first N files. Demo data is not cached."""
    size = check_size(size)
    if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1):
        raise DataError(f"max_images must be a positive integer, got {max_images!r}")
    spec, t0 = os.fspath(spec), time.time()
    if not spec.strip():  # os.path.abspath("") is the current folder: never train on whatever images lie there
        raise DataError("the data path is empty: give an image folder or a demo spec (demo:cats, demo:dogs)")
    log = (lambda msg: print(msg, file=sys.stderr, flush=True)) if verbose else (lambda msg: None)
    if spec.startswith("demo:"):
        try:  # only demo data needs the renderer: a copy of the scripts for real data can leave it out
            import demo
            domain, n = demo.parse_demo_spec(spec)
        except ImportError:
            raise DataError(f"{spec}: demo data needs demo.py beside data.py (copy it too)") from None
        except ValueError as e:
            raise DataError(str(e)) from None
        n = min(n, max_images or n)
        check_memory(n * 3 * size * size, f"{spec} ({n:,} images at {size}x{size})")
        images = demo.make_demo(domain, n, size)
        log(f"data: generated {len(images)} demo {domain} at {size}x{size} in {time.time() - t0:.1f} s")
        return ImageDataset(images, f"demo-{domain}", spec=spec)

    folder = os.path.abspath(spec)
    paths = list_images(folder)[:max_images]
    npy = cache_dir is not False and _cache_file(folder, paths, size, cat_crop, max_images, cache_dir)
    cached = npy and _read_cache(npy, folder, size)
    if cached:
        images, kept, messages = cached
        log(f"data: {len(images)} images from {folder} at {size}x{size} (cached: {npy})")
    else:
        images, kept, messages = _decode_folder(folder, paths, size, cat_crop)
        kept = [paths[i] for i in kept]
        log(f"data: decoded {len(images)} images from {folder} to {size}x{size} in {time.time() - t0:.1f} s")
        if npy:
            meta = {"folder": folder, "size": size, "cat_crop": bool(cat_crop), "max_images": max_images,
                    "paths": [os.path.relpath(p, folder) for p in kept], "messages": messages}
            try:  # the array, then the .json that makes it valid; then the memmap, so the copy in RAM can go
                _atomic_write(npy, lambda f: np.save(f, images), mkdir=True)
                _atomic_write(npy[:-4] + ".json", lambda f: f.write(json.dumps(meta).encode()))
                images = np.load(npy, mmap_mode="r")
            except DataError as e:  # read-only or full disk: the cache only saves time, so carry on without it
                messages, npy = messages + [f"{e}, so the decoded images stay in memory, uncached"], None
    for msg in messages:
        warnings.warn(msg, DataWarning, stacklevel=2)
    name = os.path.basename(folder.rstrip(os.sep)) or "images"
    return ImageDataset(images, name, spec=folder, paths=kept, cache_file=npy or None)


def _demo_module(what):
    """demo.py, imported only for demo data (a copy of the scripts for real data can leave it out)."""
    try:
        import demo
    except ImportError:
        raise DataError(f"{what} needs demo.py, the demo renderer: copy it beside data.py") from None
    return demo


def _cache_file(folder, paths, size, cat_crop, max_images, cache_dir):
    """<cache_dir>/<folder name>-<size>px-<hash of all that determines the array>.npy: the files (relative path,
    size, mtime; the .cat landmarks too when cropping), size, crop flag, max_images, the cache format version."""
    h = hashlib.sha256(json.dumps([CACHE_VERSION, size, bool(cat_crop), max_images]).encode())
    for p in paths:
        entry = [os.path.relpath(p, folder), os.stat(p).st_size, os.stat(p).st_mtime_ns]
        if cat_crop and os.path.exists(p + ".cat"):
            entry += [os.stat(p + ".cat").st_size, os.stat(p + ".cat").st_mtime_ns]
        h.update(json.dumps(entry).encode())
    cache_dir = cache_dir or os.environ.get("GANOPT_CACHE") or os.path.expanduser("~/.cache/ganopt")
    base = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(folder)) or "images"
    return os.path.join(cache_dir, f"{base}-{size}px-{h.hexdigest()[:20]}.npy")


def _read_cache(npy, folder, size):
    """(memmapped images, paths, warning messages) from a cache file and its .json, or None if unusable."""
    try:  # opening the memmap is instant; pages are read as batches touch them
        with open(npy[:-4] + ".json") as f:
            meta = json.load(f)
        images = np.load(npy, mmap_mode="r")
        if images.dtype == np.uint8 and images.shape == (len(meta["paths"]), 3, size, size):
            return images, [os.path.join(folder, r) for r in meta["paths"]], meta["messages"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, half-written or foreign files: rebuild


def _atomic_write(path, write, mkdir=False):
    """`write(f)` into a temp file beside `path`, then rename it over `path`, so nobody ever sees half a file.
    An OSError (disk full or read-only, no permission, file too large) becomes one DataError naming the file."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        if mkdir:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(tmp)


def _mix(*ints):
    """A 63-bit torch seed from several ints (seed, pass, stream), with no accidental collisions."""
    return int.from_bytes(hashlib.sha256(repr(ints).encode()).digest()[:8], "little") >> 1


class InfiniteBatches:
    """Endless shuffled batches of an ImageDataset: float B x 3 x S x S in [-1, 1] on `device`.

    Pass k is a permutation of the N images seeded with (seed, k), plus a flip bit per position seeded with
    (seed, k, 1): the same on every rank, so ranks agree without talking. Rank r of W takes positions r, r + W,
    ... (N // W of them, so all ranks make the same number of steps): disjoint shares whose union is the pass.
    A tail shorter than a batch is dropped. The state is (pass, position): resuming with the same W draws
    bitwise what an uninterrupted run would; a state saved with another W resumes the same pass at the same
    fraction of it, in the new ranks' order (so the rest of that pass may repeat or miss a few images)."""

    def __init__(self, dataset, batch_size, device, *, seed=0, flip=False, rank=0, world_size=1):
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} must be from 0 to world_size - 1 = {world_size - 1}")
        self.share = len(dataset) // world_size  # images per rank and pass
        if not 1 <= batch_size <= self.share:
            ranks = f" shared by {world_size} ranks" if world_size > 1 else ""
            raise DataError(f"batch size {batch_size} must be between 1 and {self.share} "
                            f"({len(dataset)} images in {dataset.name}{ranks})")
        self.dataset, self.batch_size, self.seed, self.flip = dataset, batch_size, seed, flip
        self.rank, self.world_size, self.device = rank, world_size, torch.device(device)
        self.epoch, self.pos, self._key = 0, 0, None  # current pass, position in this rank's share of it

    def _order(self):
        if self._key != (self.seed, self.epoch):  # a new pass: draw its permutation and flips once
            gen = lambda *stream: torch.Generator().manual_seed(_mix(self.seed, self.epoch, *stream))
            n, mine = len(self.dataset), slice(self.rank, self.share * self.world_size, self.world_size)
            self._perm = torch.randperm(n, generator=gen()).numpy()[mine]
            self._flips = (torch.rand(n, generator=gen(1)) < 0.5).numpy()[mine]
            self._key = (self.seed, self.epoch)
        return self._perm, self._flips

    def __iter__(self):
        return self

    def __next__(self):
        if self.pos + self.batch_size > self.share:
            self.epoch, self.pos = self.epoch + 1, 0
        perm, flips = self._order()
        i, j = self.pos, self.pos + self.batch_size
        self.pos = j
        x = np.asarray(self.dataset.images[perm[i:j]])  # fancy index: a fresh, writable copy (also of a memmap)
        if self.flip:
            x[flips[i:j]] = x[flips[i:j], :, :, ::-1]
        # ship uint8 (4x less traffic than float), convert on the device; pinned memory lets the copy overlap
        t = torch.from_numpy(x)
        if self.device.type == "cuda":
            t = t.pin_memory()
        return uint8_to_float(t.to(self.device, non_blocking=True))

    def state_dict(self):
        return {"seed": int(self.seed), "epoch": int(self.epoch), "pos": int(self.pos), "n": len(self.dataset),
                "world_size": int(self.world_size)}

    def load_state_dict(self, state):
        self.seed, self.epoch, self.pos = int(state["seed"]), int(state["epoch"]), int(state["pos"])
        if int(state["n"]) != len(self.dataset):
            warnings.warn(f"the dataset had {state['n']} images when this state was saved and has "
                          f"{len(self.dataset)} now, so batches continue with a new pass, not the exact sequence",
                          DataWarning, stacklevel=2)
            self.epoch, self.pos = self.epoch + 1, 0
        else:  # states saved before multi-GPU support had no world_size: one rank
            self.pos = self.pos * int(state.get("world_size", 1)) // self.world_size  # same fraction of the pass


def _uniform(x):  # U[0, 1) per sample, from torch's global RNG (so seeded runs repeat and resume exactly)
    return torch.rand(x.size(0), 1, 1, 1, dtype=x.dtype, device=x.device)


def _translation(x):  # shift by up to 1/8 of the side each way, zeros shifted in
    b, _, h, w = x.shape
    dy = torch.randint(-(h // 8), h // 8 + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-(w // 8), w // 8 + 1, (b, 1, 1), device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h, 1) + dy + 1).clamp(0, h + 1)  # +1: into a zero border
    cols = (torch.arange(w, device=x.device).view(1, 1, w) + dx + 1).clamp(0, w + 1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    return padded[torch.arange(b, device=x.device).view(b, 1, 1), :, rows, cols].permute(0, 3, 1, 2)


def _cutout(x):  # zero a square of half the side anywhere (it may hang over the edge)
    b, _, h, w = x.shape
    top = torch.randint(0, h + 1 - (h // 2) % 2, (b, 1, 1), device=x.device) - h // 4
    left = torch.randint(0, w + 1 - (w // 2) % 2, (b, 1, 1), device=x.device) - w // 4
    rows = torch.arange(h, device=x.device).view(1, h, 1) - top
    cols = torch.arange(w, device=x.device).view(1, 1, w) - left
    inside = (rows >= 0) & (rows < h // 2) & (cols >= 0) & (cols < w // 2)
    return x * (~inside).unsqueeze(1).to(x.dtype)


DIFFAUG = {  # policy name -> its transforms, in order
    "color": (lambda x: x + (_uniform(x) - 0.5),  # brightness +-0.5
              lambda x: (x - x.mean(1, keepdim=True)) * (2 * _uniform(x)) + x.mean(1, keepdim=True),  # saturation
              lambda x: (x - x.mean((1, 2, 3), keepdim=True)) * (_uniform(x) + 0.5) + x.mean((1, 2, 3), keepdim=True)),
    "translation": (_translation,),
    "cutout": (_cutout,)}


@functools.lru_cache(maxsize=None)
def diffaug_policy(policy):
    """'color,translation,cutout' -> its transform functions in order ('' or 'none' -> none); parsed once."""
    names = [s.strip() for s in policy.split(",") if s.strip() and s.strip() != "none"]
    unknown = [name for name in names if name not in DIFFAUG]
    if unknown:
        raise DataError(f"unknown DiffAugment policy {unknown[0]!r} in {policy!r}: use a comma-separated list of "
                        f"{', '.join(DIFFAUG)}, or none")
    return tuple(f for name in names for f in DIFFAUG[name])


def diffaug(x, policy="color,translation,cutout", p=1.0):
    """DiffAugment (Zhao et al. 2020) of a B x C x H x W batch in [-1, 1], differentiable w.r.t. x, for every image
    the critic sees, real and generated. color: brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5];
    translation: up to 1/8 of the side, zero padding; cutout: a zeroed square of half the side. Each of the five
    is applied to each sample with probability `p` (1: always, as in the paper; 0: identity), with parameters
    per sample from torch's global RNG, so runs repeat under torch.manual_seed and resume with its state."""
    transforms = diffaug_policy(policy)
    if not 0 <= p <= 1:
        raise DataError(f"DiffAugment probability must be between 0 and 1, got {p}")
    for transform in transforms if p > 0 else ():
        if p == 1:
            x = transform(x)
        else:
            x = torch.where(torch.rand(x.size(0), 1, 1, 1, device=x.device) < p, transform(x), x)
    return x


LOCK_NAME = ".lock"  # the write lock inside an output folder (lock_folder)
_HELD = {}  # lock file -> (open descriptor, output folder, outermost folder made for it or None)


def lock_folder(folder, lock_file=None):
    """Take the exclusive write lock of the output `folder` (made if missing) for this process, so that no two
    processes ever write one folder: a second writer is refused in one line naming the holder's PID.
    fcntl.flock on FOLDER/.lock (or `lock_file`), which holds the holder's PID; the kernel drops a flock when
    its process dies, so the file a killed process left is simply taken over. Held until `unlock_folders`
    (or the end of the process); taking a lock this process holds already does nothing."""
    import fcntl
    lock_file = os.path.abspath(lock_file or os.path.join(folder, LOCK_NAME))
    if lock_file in _HELD:
        return
    made, d = None, os.path.abspath(folder)  # the outermost folder made here, removed on release if still empty
    while not os.path.lexists(d):
        made, d = d, os.path.dirname(d)
    try:
        os.makedirs(folder, exist_ok=True)
        while True:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 100).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise DataError(f"{folder} is being written by another process (PID {holder}): wait for it to "
                                "finish, or write elsewhere") from None
            if os.path.exists(lock_file) and os.path.samestat(os.fstat(fd), os.stat(lock_file)):
                break
            os.close(fd)  # its holder removed the file while we waited: lock the one that is there now
        before = os.read(fd, 100).decode(errors="replace").strip()
        if before and before != str(os.getpid()):
            print(f"note: {lock_file} was left by process {before}, which is gone: taken over", file=sys.stderr)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as e:
        _remove_empty(folder, made)
        raise DataError(f"cannot write to the output folder {folder}: {e.strerror or e}") from None
    except DataError:
        _remove_empty(folder, made)
        raise
    _HELD[lock_file] = (fd, folder, made)


def unlock_folders():
    """Release every lock `lock_folder` took (its file goes; folders made for it go too if still empty)."""
    for lock_file, (fd, folder, made) in list(_HELD.items()):
        with contextlib.suppress(OSError):
            os.remove(lock_file)  # still ours while the descriptor is open
        os.close(fd)
        _remove_empty(folder, made)
        del _HELD[lock_file]


def _remove_empty(folder, made):
    """Remove `folder` and its parents up to `made` (the outermost one a run created), as long as they are empty."""
    d = os.path.abspath(folder)
    while made:
        try:
            os.rmdir(d)
        except OSError:
            return
        if d == made:
            return
        d = os.path.dirname(d)


@contextlib.contextmanager
def _output_folder(dst, overwrite):
    """Make `dst` ready for numbered PNGs: locked against other writers (lock_folder) and proven writable before
    any work. A non-empty `dst` is refused unless overwrite. The new files are written as temp files and renamed
    into place only at the end (`_publish`), so a run that fails or is interrupted (disk full, Ctrl-C) leaves
    nothing of its own: folders it made are removed, a folder that was there keeps its old files."""
    if os.path.exists(dst) and not os.path.isdir(dst):
        raise DataError(f"output {dst} exists and is not a folder")
    if os.path.isdir(dst) and [e for e in os.listdir(dst) if not _ours(e)] and not overwrite:  # nothing touched yet
        raise DataError(f"output folder {dst} is not empty (use --overwrite to write into it)")
    made, d = None, dst  # the outermost folder this run creates, if any
    while not os.path.lexists(d):
        made, d = d, os.path.dirname(d)
    try:
        lock_folder(dst)
        if [e for e in os.listdir(dst) if not _ours(e)] and not overwrite:  # filled while we were not looking
            raise DataError(f"output folder {dst} is not empty (use --overwrite to write into it)")
        for e in os.listdir(dst):  # temp files of a killed run (we hold the lock: no live writer has any)
            if _ours(e) and e != LOCK_NAME:
                os.remove(os.path.join(dst, e))
        tempfile.TemporaryFile(dir=dst).close()  # can we create files there?
        yield
    except BaseException as e:
        with contextlib.suppress(OSError):
            for name in os.listdir(dst):
                if name.endswith(f".tmp{os.getpid()}"):
                    os.remove(os.path.join(dst, name))
        unlock_folders()
        if made:
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(e, OSError):
            raise DataError(f"cannot write to the output folder {dst}: {e.strerror or e}") from None
        raise
    unlock_folders()


def _ours(name):
    """What a killed run of ours may leave in an output folder: the lock file, temp files of PNGs / sources.txt."""
    return name == LOCK_NAME or re.fullmatch(r"(\d+\.png|sources\.txt)\.tmp\d+", name) is not None


def _write_file(path, write):
    """`write(f)` into `path` + .tmp<PID> (renamed into place later by `_publish`); an OSError is one DataError
    naming the file."""
    try:
        with open(f"{path}.tmp{os.getpid()}", "wb") as f:
            write(f)
    except OSError as e:
        raise DataError(f"cannot write {path}: {e.strerror or e}") from None


def _write_pngs(images, dst, names):
    """uint8 N x 3 x S x S -> temp files for dst/names[i], on a few threads (PNG encoding releases the GIL)."""
    png = lambda i: lambda f: Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0))).save(f, format="PNG")
    _on_threads(lambda i: _write_file(os.path.join(dst, names[i]), png(i)), range(len(names)))


def _publish(dst, names):
    """Rename the temp files of `names` into place, after removing the NNNNN.png / sources.txt of an earlier run
    (--overwrite): renames on one file system, so this takes milliseconds, after all the slow work."""
    for e in os.listdir(dst):
        if re.fullmatch(r"\d+\.png|sources\.txt", e) and e not in names:
            os.remove(os.path.join(dst, e))
    for name in names:
        os.replace(os.path.join(dst, f"{name}.tmp{os.getpid()}"), os.path.join(dst, name))


def prepare(src, dst, size, *, cat_crop=True, overwrite=False, verbose=True):
    """Write a face-cropped, center-cropped, resized PNG copy of folder `src`: dst/00000.png, ... in sorted
    source order, plus dst/sources.txt mapping each PNG to its source file (tab-separated; tabs, newlines and
    backslashes in a source path are escaped as \t, \n, \\). Returns the number written."""
    size = check_size(size)
    if os.fspath(src).startswith("demo:"):
        raise DataError("prepare copies an image folder; for demo data use: python data.py demo DST --domain cats")
    src, dst, t0 = os.path.abspath(src), os.path.abspath(dst), time.time()
    paths = list_images(src)
    if os.path.realpath(src) == os.path.realpath(dst):
        raise DataError(f"output folder must differ from the source folder {src}")
    with _output_folder(dst, overwrite):
        images, kept, messages = _decode_folder(src, paths, size, cat_crop)
        names = [f"{i:0{max(5, len(str(len(paths) - 1)))}d}.png" for i in kept]  # a skipped file's number is unused
        _write_pngs(images, dst, names)
        sources = "".join(f"{name}\t{shown(os.path.relpath(paths[i], src))}\n" for name, i in zip(names, kept))
        _write_file(os.path.join(dst, "sources.txt"), lambda f: f.write(sources.encode()))
        _publish(dst, names + ["sources.txt"])  # sources.txt last: its presence says the copy is complete
    for msg in messages:
        warnings.warn(msg, DataWarning, stacklevel=2)
    if verbose:
        print(f"wrote {len(kept)} {size}x{size} PNGs to {dst} in {time.time() - t0:.1f} s", file=sys.stderr)
    return len(kept)


def info(spec, size, *, cat_crop=True, cache_dir=None):
    """Print what `load_dataset` makes of `spec`: count, size, cache file, per-channel pixel statistics."""
    ds = load_dataset(spec, size, cat_crop=cat_crop, cache_dir=cache_dir)
    sums = np.zeros((2, 3))
    for i in range(0, len(ds), 1024):  # chunked, so a memmapped set larger than RAM is fine
        chunk = np.asarray(ds.images[i:i + 1024], dtype=np.float64) / 255
        sums += [chunk.sum(axis=(0, 2, 3)), (chunk ** 2).sum(axis=(0, 2, 3))]
    mean, square = sums / (len(ds) * ds.size * ds.size)
    print(f"dataset  {ds.name}  ({ds.spec})\nimages   {len(ds)} at {ds.size}x{ds.size}, uint8 N x 3 x S x S = "
          f"{ds.images.nbytes / 2**20:.1f} MiB\ncache    {ds.cache_file or '-'}")
    print(f"mean RGB {' '.join(f'{m:.3f}' for m in mean)}   (pixels in 0..1)")
    print(f"std  RGB {' '.join(f'{v:.3f}' for v in np.sqrt(np.maximum(square - mean ** 2, 0)))}")
    print(f"files    {', '.join(os.path.basename(p) for p in ds.paths[:3])}, ..." if ds.paths else "files    -")


def main(argv=None):
    try:
        import demo  # the demo command's choices; a copy of data.py without demo.py still prepares folders
    except ImportError:
        demo = None
    fmt = type("Formatter", (argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter), {})
    p = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)
    command = lambda name, text: sub.add_parser(name, help=text, description=text, formatter_class=fmt)
    q = command("prepare", "write a cropped, resized PNG copy of an image folder (once, before training)")
    q.add_argument("src", help="image folder (searched recursively; Cat Dataset .cat landmarks are used)")
    q.add_argument("dst", help="output folder: DST/00000.png ... and DST/sources.txt")
    q.add_argument("--size", type=int, required=True, help="output side in pixels, e.g. 64 or 128")
    q.add_argument("--no-cat-crop", action="store_true", help="ignore .cat landmark files (no face crop)")
    q.add_argument("--overwrite", action="store_true", help="write into a non-empty DST (replacing its PNGs)")
    q = command("info", "count, size and pixel statistics of a folder or demo spec")
    q.add_argument("spec", help="image folder, or demo:cats / demo:dogs[:N]")
    q.add_argument("--size", type=int, default=64, help="image side in pixels")
    q.add_argument("--no-cat-crop", action="store_true", help="ignore .cat landmark files")
    q.add_argument("--cache-dir", default=None, help="cache folder (if not given: $GANOPT_CACHE or ~/.cache/ganopt)")
    q.add_argument("--no-cache", action="store_true", help="decode into memory, write no cache")
    q = command("demo", "write the procedural demo faces (demo.py) as PNGs")
    q.add_argument("dst", help="output folder: DST/00000.png ...")
    q.add_argument("--domain", choices=demo.DEMO_DOMAINS if demo else None, default="cats", help="which faces")
    q.add_argument("--n", type=int, default=64, help="number of images")
    q.add_argument("--size", type=int, default=64, help="image side in pixels")
    q.add_argument("--overwrite", action="store_true", help="write into a non-empty DST")
    args = p.parse_args(argv)
    if args.command != "info" and not args.dst.strip():  # (abspath("") would be the current folder)
        raise DataError("the output folder DST is empty: give a folder name")
    if args.command == "prepare":
        prepare(args.src, args.dst, args.size, cat_crop=not args.no_cat_crop, overwrite=args.overwrite)
    elif args.command == "info":
        info(args.spec, args.size, cat_crop=not args.no_cat_crop, cache_dir=False if args.no_cache else args.cache_dir)
    else:
        dst, size = os.path.abspath(args.dst), check_size(args.size)
        demo = _demo_module("data.py demo")
        if args.n < 1:
            raise DataError(f"--n must be a positive integer, got {args.n}")
        check_memory(args.n * 3 * size * size, f"--n {args.n:,} images at {size}x{size}")
        with _output_folder(dst, args.overwrite):  # checked before anything is drawn
            images = demo.make_demo(args.domain, args.n, size)
            names = [f"{i:0{max(5, len(str(args.n - 1)))}d}.png" for i in range(args.n)]
            _write_pngs(images, dst, names)
            _publish(dst, names)
        print(f"wrote {args.n} demo {args.domain} ({size}x{size}) to {dst}", file=sys.stderr)


if __name__ == "__main__":
    # one line on stderr, no source echo (as harness.run_main)
    warnings.showwarning = lambda message, *args, **kwargs: print(f"warning: {message}", file=sys.stderr, flush=True)
    try:
        main()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:  # the output folder is as it was (see _output_folder)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
