"""Generate N images from a trained generator (thesis 2.4: generator + checkpoint -> N images from random normal z).

The images are what FID is computed on (thesis: 500 per model, pytorch-fid against 500 real images), so:
- PNG, lossless, with correct rounding (`to_uint8`). The thesis code truncated (`int(x * 255)`) and saved
  JPEG: truncation darkens every pixel by half a level on average and JPEG adds block artefacts, both of
  which shift FID against PNG/JPEG real images by amounts unrelated to the generator.
- `--out` holds the samples and nothing else written by us: FID tools read every image in the folder.
- `--seed` fixes the set: image i comes from the i-th latent vector of one seeded CPU stream, so the same seed
  gives the same images for any --batch-size, on CPU or CUDA (up to the device's float rounding), and
  `--n 100` is the first 100 of `--n 500`.
- BatchNorm uses its running statistics (eval mode). `--train-mode` uses each batch's own statistics, as the
  thesis code effectively did (it never called .eval()); the images then depend on --batch-size, and the
  thesis drew batches of 64, so use `--train-mode --batch-size 64` to reproduce its procedure.
- Weights: a generator.pt written with an exponential moving average (EMA) of the generator's weights holds
  both sets; the EMA ones are used unless --raw. The script prints which it used.
- Precision: the generator runs under torch.autocast for bf16/fp16; latent vectors stay fp32 and images are
  rounded to uint8 from fp32, so only the network's arithmetic changes. auto = bf16 on a CUDA GPU that computes
  it, and on a CPU where a quick bf16 matrix product measures faster than fp32 (AMX / AVX512-BF16); fp32
  otherwise (e.g. AVX2-only CPUs, where bf16 is emulated and ~10x slower). fp16 runs on CUDA only.

The model file may be a generator file (`generator.pt`, written by every training script), a run directory
(its generator.pt), a full training checkpoint (`ckpt.pt`, its generator is used) or a raw thesis-style
state_dict (architecture inferred).

Examples:
    python createsamples.py --model runs/model1/generator.pt --n 500                # -> samples/generator
    python createsamples.py --model runs/model1 --n 500 --out samples/model1 --grid samples/model1.png
    python createsamples.py --model runs/model1 --n 500 --raw --out samples/model1_raw   # without EMA
    python createsamples.py --model thesis_G.pt --n 500 --train-mode --batch-size 64 --out samples/thesis_style
    python createsamples.py --model runs/kd/generator.pt --n 500 --out samples/kd --overwrite   # redo a set

Output: --out/00000.png, 00001.png, ... (exactly N). An existing non-empty --out is refused unless
--overwrite, which deletes its old NNNNN.png samples (so it ends with exactly N) and touches nothing else.
The images are first written into a hidden folder beside --out (.NAME.partial-XXXX) and only moved into
place once all N exist, so an interrupted or failed run (disk full) never leaves a folder that looks complete
and never touches an existing one.
"""
import argparse
import contextlib
import glob
import math
import os
import re
import shutil
import sys
import tempfile
import time
import warnings

import torch

import arch

SAMPLE_NAME = re.compile(r"^\d{5,}\.png$")  # what we write, and all that --overwrite deletes
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class UserError(Exception):
    """A mistake of the user's: `cli` prints it as one line and exits with status 2 (as harness.py's does)."""


# ----------------------------------------------------------------------------- generation

def latents(n, nz, seed):
    """The first n latent vectors of the stream for `seed`: n x nz x 1 x 1 float32 on the CPU.

    Vector i is the i-th `torch.randn(nz)` of a CPU `torch.Generator` seeded with `seed`. One draw per image
    (not one `randn(n, nz)`, whose values depend on n) makes image i depend on (seed, i) only: independent of
    the batch size, of the device (CPU and CUDA generators differ, so we never draw on the GPU), and of n.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.stack([torch.randn(nz, generator=g) for _ in range(n)]).view(n, nz, 1, 1)


def to_uint8(images):
    """[-1, 1] floats -> uint8 with correct rounding ((x + 1) * 127.5, rounded, clamped), in fp32."""
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def iter_batches(model, n, seed=0, batch_size=100, device=None, train_mode=False, *, precision="fp32"):
    """Yield the n samples in order, as uint8 CPU batches (B x C x H x W); at most `batch_size` on the device at once.

    `device`: where the model runs (default: where its parameters are; otherwise the model is moved there).
    `precision`: fp32, or bf16/fp16 under torch.autocast (the latents stay fp32, so image i still depends on
    (seed, i) only). The model's train/eval mode and (in train mode) its BatchNorm running statistics are
    restored afterwards.
    """
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"n and batch_size must be positive, got {n} and {batch_size}")
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {', '.join(DTYPES)}, got {precision!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    # In train mode every batch is full: the last one is topped up with the stream's next vectors (their images
    # are dropped), so image i always shares its BatchNorm statistics with the same batch_size vectors -- as in
    # the thesis code, which always generated full batches of 64.
    total = math.ceil(n / batch_size) * batch_size if train_mode else n
    z = latents(total, model.config["nz"], seed)
    was_training = model.training
    # a forward pass in train mode updates the running statistics: keep the caller's model as it was
    saved = [b.clone() for b in model.buffers()] if train_mode else []
    model.train(train_mode)
    try:
        for start in range(0, n, batch_size):
            with torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32"):
                images = model(z[start:start + batch_size].to(device))
            yield to_uint8(images[: n - start]).cpu()
    finally:
        model.train(was_training)
        for b, s in zip(model.buffers(), saved):
            b.copy_(s)


def generate(model, n, seed=0, batch_size=100, device=None, train_mode=False, *, precision="fp32"):
    """n samples as one uint8 tensor n x C x H x W on the CPU (0..255, what the PNGs hold). See `iter_batches`."""
    return torch.cat(list(iter_batches(model, n, seed, batch_size, device, train_mode, precision=precision)))


# ----------------------------------------------------------------------------- output folder

def check_out(out, overwrite=False):
    """Refuse (UserError) an --out that is a file, or a non-empty folder without `overwrite`."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} exists and is not a folder")
    if os.path.isdir(out):
        try:
            entries = os.listdir(out)
        except OSError as e:
            raise UserError(f"--out {out}: cannot list it: {e.strerror}") from None
        if entries and not overwrite:
            raise UserError(f"--out {out} is not empty ({len(entries)} entries): pass --overwrite to "
                            f"replace its NNNNN.png samples, or choose another folder")


def _save_png(image, path):
    from PIL import Image
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path, format="PNG")


def _grid(images, nrow, padding=2):
    """uint8 images (N x C x H x W) tiled row-major on white, `padding` px apart (torchvision's make_grid layout)."""
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = torch.full((c, rows * (h + padding) + padding, nrow * (w + padding) + padding), 255, dtype=torch.uint8)
    for i, image in enumerate(images):
        y, x = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
        grid[:, y:y + h, x:x + w] = image
    return grid


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _publish(tmp, out):
    """Move the finished samples from `tmp` to `out`; `out` ends with exactly these NNNNN.png files."""
    if os.path.isdir(out) and not os.path.islink(out) and not os.listdir(out):
        try:
            os.rmdir(out)  # an empty folder: replace it by the finished one in one rename, below
        except OSError:
            pass  # e.g. a mount point: move the files in instead
    if not os.path.lexists(out):
        os.rename(tmp, out)  # one step: the folder appears complete, or not at all
        return
    # --overwrite (or an empty folder we cannot replace): only our own kind of file goes, then the new ones come.
    # Everything is written by now, so this is N renames on one file system: milliseconds.
    for name in os.listdir(out):
        if SAMPLE_NAME.match(name):
            os.remove(os.path.join(out, name))
    for name in sorted(os.listdir(tmp)):
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
    os.rmdir(tmp)


class _Progress:
    """One line on stderr each time another 10% of the images is done, or 10 s after the previous line."""

    def __init__(self, n):
        self.n, self.t0 = n, time.time()
        self.last_time, self.last_tenth = self.t0, 0

    def update(self, done):
        now, tenth = time.time(), done * 10 // self.n
        if tenth > self.last_tenth or now - self.last_time >= 10:
            rate = done / max(now - self.t0, 1e-9)
            print(f"{done}/{self.n} images ({100 * done // self.n}%), {now - self.t0:.0f} s, {rate:.1f} images/s, "
                  f"{(self.n - done) / rate:.0f} s left", file=sys.stderr, flush=True)
            self.last_time, self.last_tenth = now, tenth


def write_samples(model, n, out, seed=0, batch_size=100, device=None, train_mode=False, overwrite=False,
                  grid=None, grid_n=64, *, precision="fp32", progress=False):
    """Write n PNGs 00000.png ... into `out` (rules in the module docstring) and optionally a preview grid.

    Returns the image size (H, W). Raises UserError for an --out/--grid it must not write to, and for a failed
    write (disk full, read-only): then the hidden temporary folder is gone and an existing `out` is untouched.
    `progress`: report on stderr every 10% / 10 s.
    """
    out = os.path.normpath(out)
    check_out(out, overwrite)
    check_grid(grid, out, overwrite)
    with _out_lock(out):
        check_out(out, overwrite)  # again under the lock: another run may have filled it in the meantime
        return _write_samples(model, n, out, seed, batch_size, device, train_mode, grid, grid_n, precision, progress)


def check_grid(grid, out, overwrite=False):
    """Refuse (UserError) a --grid that is --out, lies inside it, is a folder, or exists without `overwrite`."""
    if grid is None:
        return
    if os.path.realpath(grid) == os.path.realpath(out) or os.path.isdir(grid):
        raise UserError(f"--grid {grid} is {'--out' if os.path.realpath(grid) == os.path.realpath(out) else 'a folder'}: "
                        "give it a file name outside --out")
    if os.path.realpath(os.path.dirname(os.path.abspath(grid))) == os.path.realpath(out):
        raise UserError(f"--grid {grid} is inside --out: FID tools read every image there; put it elsewhere")
    if os.path.lexists(grid) and not overwrite:
        raise UserError(f"--grid {grid} exists: pass --overwrite to replace it")


@contextlib.contextmanager
def _out_lock(out):
    """Hold the write lock of `out` (a copy of data.lock_folder, so that this file needs only arch.py): flock on
    the hidden file .NAME.lock beside it, holding our PID (beside, so that `out` appears only when complete). A
    second writer is refused naming the holder; the kernel drops the lock of a killed process, whose file is then
    taken over. Folders made for the lock are removed again if the run leaves them empty."""
    import fcntl
    parent = os.path.dirname(os.path.abspath(out))
    path = os.path.join(parent, f".{os.path.basename(out)}.lock")
    made, d = None, parent
    while not os.path.lexists(d):
        made, d = d, os.path.dirname(d)
    fd = None
    try:
        try:
            os.makedirs(parent, exist_ok=True)
            while fd is None:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.read(fd, 100).decode(errors="replace").strip() or "?"
                    fd = os.close(fd)  # not ours: never remove it
                    raise UserError(f"--out {out} is being written by another process (PID {holder}): wait for it "
                                    "to finish, or choose another --out") from None
                if not (os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path))):
                    fd = os.close(fd)  # its holder removed the file while we waited: lock the one there now
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            raise UserError(f"cannot write beside --out {out}: {e.strerror or e}") from None
        yield
    finally:
        if fd is not None:
            if os.path.exists(path) and os.path.samestat(os.fstat(fd), os.stat(path)):
                os.remove(path)  # ours while we hold the lock
            os.close(fd)
        d = parent
        while made:  # folders made for the lock, if the run left them empty
            try:
                os.rmdir(d)
            except OSError:
                break
            if d == made:
                break
            d = os.path.dirname(d)


def _write_samples(model, n, out, seed, batch_size, device, train_mode, grid, grid_n, precision, progress):
    width = max(5, len(str(n - 1)))  # names sort in generation order, also past 99999
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        if grid is not None:
            os.makedirs(os.path.dirname(os.path.abspath(grid)), exist_ok=True)
        # beside --out, so the final rename stays on one file system; hidden, so no tool mistakes it for samples
        for old in glob.glob(os.path.join(parent, f".{glob.escape(os.path.basename(out))}.partial-*-*")):
            pid = os.path.basename(old).rsplit(".partial-", 1)[1].split("-")[0]
            if pid.isdigit() and not _alive(int(pid)):  # left by a killed run
                shutil.rmtree(old, ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-{os.getpid()}-", dir=parent)
    except OSError as e:
        raise UserError(f"cannot write beside --out {out}: {e.strerror}") from None
    grid_tmp = f"{grid}.tmp{os.getpid()}" if grid is not None else None
    target = out  # the file being written, as the user will know it: for the one-line error
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700); the result should be a normal folder
        first, i = [], 0  # first: the batches the grid needs
        meter = _Progress(n) if progress else None
        for batch in iter_batches(model, n, seed, batch_size, device, train_mode, precision=precision):
            if grid is not None and i < grid_n:
                first.append(batch)
            for image in batch:
                name = f"{i:0{width}d}.png"
                target = os.path.join(out, name)
                _save_png(image, os.path.join(tmp, name))
                i += 1
            if meter:
                meter.update(i)
        if grid is not None:
            target = grid
            shown = torch.cat(first)[:grid_n]
            _save_png(_grid(shown, nrow=math.ceil(math.sqrt(len(shown)))), grid_tmp)
        target = out
        _publish(tmp, out)
        if grid is not None:
            os.replace(grid_tmp, grid)
    except OSError as e:  # disk full, read-only, permissions: one line, and the partial files go
        raise UserError(f"cannot write {target}: {e.strerror or e}") from None
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if grid_tmp is not None and os.path.lexists(grid_tmp):
            os.remove(grid_tmp)
    return tuple(batch.shape[-2:])


# ----------------------------------------------------------------------------- command line
# get_device, positive_int, the one-line parser error and `cli` are a few lines copied from harness.py, so that
# this script needs nothing of ours but arch.py.

def get_device(spec="auto"):
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if device.type == "cuda" and not (torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()):
        raise UserError(f"--device {spec}: no such CUDA device on this machine (use --device cpu)")
    return device


def pick_precision(spec, device):
    """--precision as given, or for auto: bf16 where the device computes it natively, else fp32."""
    if spec == "auto":
        return arch.default_precision(device)  # measured on CPUs: bf16 only where it is faster than fp32
    if spec == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device (CPUs have no fast fp16): use bf16 or fp32")
    return spec


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def seed_value(text):
    value = int(text)
    if not 0 <= value < 2**32:  # the rule of every script of ours (numpy's RandomState range)
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**32 - 1 = {2**32 - 1}, got {text}")
    return value


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass  # defaults in --help, and the docstring laid out as written


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser():
    p = _Parser(prog="createsamples.py", description=__doc__, formatter_class=_Formatter)
    p.add_argument("--model", required=True, help="generator.pt, a run directory, ckpt.pt, or a raw thesis generator state_dict")
    p.add_argument("--n", type=positive_int, default=500, help="number of images (500 as the thesis)")
    p.add_argument("--out", default=None, help="output folder; None: samples/<model file or run directory name, without extension>")
    p.add_argument("--seed", type=seed_value, default=0, help="latent vectors' seed (0 to 2**32 - 1): same seed, same images")
    p.add_argument("--batch-size", type=positive_int, default=100,
                   help="images per forward pass; only memory and speed depend on it, unless --train-mode")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--precision", choices=("auto", *DTYPES), default="auto",
                   help="generator arithmetic. auto: bf16 on CUDA GPUs with native bf16 and on CPUs whose "
                        "a bf16 matrix product measures faster than fp32 (AMX / AVX512-BF16), else fp32. fp16: CUDA only")
    p.add_argument("--raw", action="store_true", help="use the raw weights, not the EMA weights the file may hold")
    p.add_argument("--grid", default=None, metavar="FILE", help="also write a preview grid PNG of the first --grid-n images (outside --out)")
    p.add_argument("--grid-n", type=positive_int, default=64, help="images in the grid")
    p.add_argument("--train-mode", action="store_true",
                   help="BatchNorm with batch statistics, as the thesis code did; images then depend on --batch-size")
    p.add_argument("--overwrite", action="store_true", help="replace the NNNNN.png files of a non-empty --out (and an existing --grid)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if not args.model.strip():
        raise UserError("--model is empty: give a generator.pt, a run directory or a ckpt.pt")
    device = get_device(args.device)
    precision = pick_precision(args.precision, device)
    # (abspath: `--model .` in a run directory is named after that directory, not "samples/.")
    out = args.out or os.path.join("samples", os.path.splitext(os.path.basename(os.path.abspath(args.model)))[0])
    check_out(out, args.overwrite)  # before loading a 180 MB model, not after generating
    check_grid(args.grid, out, args.overwrite)
    model, config = arch.load_model(args.model, device=device, ema=not args.raw)
    weights = {"ema": "EMA weights", "raw": "raw weights"}[model.weights_kind]
    if model.weights_kind == "raw" and not args.raw:
        weights += " (the file has no EMA weights)"
    print(f"{args.model}: {config['kind']} {config['img_size']}x{config['img_size']}, {weights}, {precision} on {device}",
          flush=True)
    h, w = write_samples(model, args.n, out, seed=args.seed, batch_size=args.batch_size, device=device,
                         train_mode=args.train_mode, overwrite=args.overwrite, grid=args.grid, grid_n=args.grid_n,
                         precision=precision, progress=True)
    print(f"wrote {args.n} images ({h}x{w}) from {args.model} to {out}", flush=True)


def cli(argv=None):
    """`main` for the command line: a user error or an unusable model file is one line and exit status 2."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"  # one line, no source echo
    try:
        main(argv)
    except (UserError, arch.ModelFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    cli()
