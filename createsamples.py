"""Generate N images from a trained generator (thesis 2.4: generator + checkpoint -> N images from random normal z).

The images are what FID is computed on (thesis: 500 per model, pytorch-fid against 500 real images), so:
- PNG, lossless, with correct rounding (`common.to_uint8`). The thesis code truncated (`int(x * 255)`) and
  saved JPEG: truncation darkens every pixel by half a level on average and JPEG adds block artefacts, both of
  which shift FID against PNG/JPEG real images by amounts unrelated to the generator.
- `--out` holds the samples and nothing else written by us: FID tools read every image in the folder.
- `--seed` fixes the set: image i comes from the i-th latent vector of one seeded CPU stream, so the same seed
  gives the same images for any --batch-size, on CPU or CUDA (up to the device's float rounding), and
  `--n 100` is the first 100 of `--n 500`.
- BatchNorm uses its running statistics (eval mode). `--train-mode` uses each batch's own statistics, as the
  thesis code effectively did (it never called .eval()); the images then depend on --batch-size, and the
  thesis drew batches of 64, so use `--train-mode --batch-size 64` to reproduce its procedure.

The model file may be a generator file (`generator.pt`, written by every training script), a full training
checkpoint (`ckpt.pt`, its generator is used) or a raw thesis-style state_dict (architecture inferred).

Examples:
    python createsamples.py --model runs/model1/generator.pt --n 500                # -> samples/generator
    python createsamples.py --model runs/model1/ckpt.pt --n 500 --out samples/model1 --grid samples/model1.png
    python createsamples.py --model thesis_G.pt --n 500 --train-mode --batch-size 64 --out samples/thesis_style
    python createsamples.py --model runs/kd/generator.pt --n 500 --out samples/kd --overwrite   # redo a set

Output: --out/00000.png, 00001.png, ... (exactly N). An existing non-empty --out is refused unless
--overwrite, which deletes its old NNNNN.png samples (so it ends with exactly N) and touches nothing else.
The images are first written into a hidden folder beside --out (.NAME.partial-XXXX) and only moved into
place once all N exist, so an interrupted run never leaves a folder that looks complete.
"""
import math
import os
import re
import shutil
import tempfile

import torch

import common

SAMPLE_NAME = re.compile(r"^\d{5,}\.png$")  # what we write, and all that --overwrite deletes


# ----------------------------------------------------------------------------- generation

def latents(n, nz, seed):
    """The first n latent vectors of the stream for `seed`: n x nz x 1 x 1 float32 on the CPU.

    Vector i is the i-th `torch.randn(nz)` of a CPU `torch.Generator` seeded with `seed`. One draw per image
    (not one `randn(n, nz)`, whose values depend on n) makes image i depend on (seed, i) only: independent of
    the batch size, of the device (CPU and CUDA generators differ, so we never draw on the GPU), and of n.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.stack([torch.randn(nz, generator=g) for _ in range(n)]).view(n, nz, 1, 1)


@torch.no_grad()
def iter_batches(model, n, seed=0, batch_size=100, device=None, train_mode=False):
    """Yield the n samples in order, as uint8 CPU batches (B x C x H x W); at most `batch_size` on the device at once.

    `device`: where the model runs (default: where its parameters are; otherwise the model is moved there).
    The model's train/eval mode and (in train mode) its BatchNorm running statistics are restored afterwards.
    """
    if n <= 0 or batch_size <= 0:
        raise ValueError(f"n and batch_size must be positive, got {n} and {batch_size}")
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
            images = model(z[start:start + batch_size].to(device))
            yield common.to_uint8(images[: n - start]).cpu()
    finally:
        model.train(was_training)
        for b, s in zip(model.buffers(), saved):
            b.copy_(s)


def generate(model, n, seed=0, batch_size=100, device=None, train_mode=False):
    """n samples as one uint8 tensor n x C x H x W on the CPU (0..255, what the PNGs hold). See `iter_batches`."""
    return torch.cat(list(iter_batches(model, n, seed, batch_size, device, train_mode)))


# ----------------------------------------------------------------------------- output folder

def check_out(out, overwrite=False):
    """Refuse (UserError) an --out that is a file, or a non-empty folder without `overwrite`."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise common.UserError(f"--out {out} exists and is not a folder")
    if os.path.isdir(out):
        try:
            entries = os.listdir(out)
        except OSError as e:
            raise common.UserError(f"--out {out}: cannot list it: {e.strerror}") from None
        if entries and not overwrite:
            raise common.UserError(f"--out {out} is not empty ({len(entries)} entries): pass --overwrite to "
                                   f"replace its NNNNN.png samples, or choose another folder")


def _save_png(image, path):
    from PIL import Image
    array = image.permute(1, 2, 0).numpy()
    Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array).save(path, format="PNG")


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


def write_samples(model, n, out, seed=0, batch_size=100, device=None, train_mode=False, overwrite=False,
                  grid=None, grid_n=64):
    """Write n PNGs 00000.png ... into `out` (rules in the module docstring) and optionally a preview grid.

    Returns the image size (H, W). Raises common.UserError for an --out/--grid it must not write to.
    """
    out = os.path.normpath(out)
    check_out(out, overwrite)
    if grid is not None:
        if os.path.realpath(os.path.dirname(os.path.abspath(grid))) == os.path.realpath(out):
            raise common.UserError(f"--grid {grid} is inside --out: FID tools read every image there; put it elsewhere")
        if os.path.lexists(grid) and not overwrite:
            raise common.UserError(f"--grid {grid} exists: pass --overwrite to replace it")
    width = max(5, len(str(n - 1)))  # names sort in generation order, also past 99999
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        if grid is not None:
            os.makedirs(os.path.dirname(os.path.abspath(grid)), exist_ok=True)
        # beside --out, so the final rename stays on one file system; hidden, so no tool mistakes it for samples
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.partial-", dir=parent)
    except OSError as e:
        raise common.UserError(f"cannot write beside --out {out}: {e.strerror}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700); the result should be a normal folder
        first, i = [], 0  # first: the batches the grid needs
        for batch in iter_batches(model, n, seed, batch_size, device, train_mode):
            if grid is not None and i < grid_n:
                first.append(batch)
            for image in batch:
                _save_png(image, os.path.join(tmp, f"{i:0{width}d}.png"))
                i += 1
        if grid is not None:
            shown = torch.cat(first)[:grid_n]
            # save_grid takes [-1, 1] floats; u / 127.5 - 1 maps back to exactly the same uint8 values
            common.save_grid(shown.float() / 127.5 - 1, grid, nrow=math.ceil(math.sqrt(len(shown))))
        _publish(tmp, out)
    except OSError as e:  # disk full, permissions: one line, and the partial folder goes
        raise common.UserError(f"cannot write samples to {out}: {e.strerror or e}") from None
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return tuple(batch.shape[-2:])


# ----------------------------------------------------------------------------- command line

def build_parser():
    p = common.ArgumentParser(prog="createsamples.py", description=__doc__)
    p.add_argument("--model", required=True, help="generator.pt, ckpt.pt, or a raw thesis generator state_dict")
    p.add_argument("--n", type=common.positive_int, default=500, help="number of images (default: %(default)s, as the thesis)")
    p.add_argument("--out", default=None, help="output folder (default: samples/<model file name without extension>)")
    p.add_argument("--seed", type=int, default=0, help="latent vectors' seed: same seed, same images (default: %(default)s)")
    p.add_argument("--batch-size", type=common.positive_int, default=100,
                   help="images per forward pass; only memory and speed depend on it, unless --train-mode (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    p.add_argument("--grid", default=None, metavar="FILE", help="also write a preview grid PNG of the first --grid-n images (outside --out)")
    p.add_argument("--grid-n", type=common.positive_int, default=64, help="images in the grid (default: %(default)s)")
    p.add_argument("--train-mode", action="store_true",
                   help="BatchNorm with batch statistics, as the thesis code did; images then depend on --batch-size")
    p.add_argument("--overwrite", action="store_true", help="replace the NNNNN.png files of a non-empty --out (and an existing --grid)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = common.get_device(args.device)
    if not os.path.isfile(args.model):
        raise common.UserError(f"--model {args.model}: no such file")
    out = args.out or os.path.join("samples", os.path.splitext(os.path.basename(args.model))[0])
    check_out(out, args.overwrite)  # before loading a 180 MB model, not after generating
    model, _ = common.load_model(args.model, device=device)
    h, w = write_samples(model, args.n, out, seed=args.seed, batch_size=args.batch_size, device=device,
                         train_mode=args.train_mode, overwrite=args.overwrite, grid=args.grid, grid_n=args.grid_n)
    print(f"wrote {args.n} images ({h}x{w}) from {args.model} to {out}", flush=True)


if __name__ == "__main__":
    common.run_main(main)
