"""FID and KID between two sets of images (thesis: 500 generated vs 500 real, and student vs teacher samples).

Same numbers as pytorch-fid (`python -m pytorch_fid A B`): its image reading (sorted `*.png|jpg|...` of the
folder, PIL -> RGB -> ToTensor in [0, 1]), its batching, its FID Inception network (resize to 299 and scaling
to [-1, 1] inside the model), its pool3 features and its `calculate_frechet_distance`. On top of that:
- KID (Binkowski et al. 2018), the unbiased MMD^2 with the cubic polynomial kernel, as in their code,
  torch-fidelity and clean-fid. FID is strongly biased at 500 images (it shrinks as N grows), KID is not, so
  KID is the one to compare across sample sizes; it is printed unscaled (x1, not x1000).
- Folders with images of different sizes (pytorch-fid stacks a batch and crashes): batches never mix sizes.
  A folder of one size gives exactly pytorch-fid's batches, hence its features bit for bit.
- `.npz` statistics: ours hold `mu` and `sigma` (pytorch-fid's keys: each tool reads the other's files) plus
  the raw pool3 `features` and the image count `n`, so KID works from a cached file too. A pytorch-fid `.npz`
  (mu/sigma only) still gives FID; KID is then reported as unavailable.
- Offline weights: `--weights FILE` loads pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (or any file
  with its keys) from anywhere; nothing is downloaded. Without it the torch hub cache file is used, as
  pytorch-fid does, and downloaded there if missing.
- `--max-images N --seed S`: a fixed random subset of N files of a folder (the thesis used 500 per dataset).

Examples:
    python compute_fid.py samples/model1 data/cats                          # folder vs folder: FID + KID
    python compute_fid.py --save-stats data/cats stats/cats.npz             # cache the real side once ...
    python compute_fid.py samples/model1 stats/cats.npz                     # ... then only the samples are run
    python compute_fid.py samples/model1 data/cats --save-stats stats/cats.npz   # compare and cache B
    python compute_fid.py samples/model1 data/cats --max-images 500 --seed 0     # 500 random files per folder
    python compute_fid.py samples/kd samples/teacher --json out/kd_vs_teacher.json
    python compute_fid.py samples/model1 stats/cats.npz --weights ~/pt_inception-2015-12-05-6726825d.pth
"""
import argparse
import os
import pathlib
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision.transforms as TF
from PIL import Image
from pytorch_fid import inception as pfi
from pytorch_fid.fid_score import IMAGE_EXTENSIONS, ImagePathDataset, calculate_frechet_distance

import common
from common import UserError

WEIGHTS_URL = pfi.FID_WEIGHTS_URL
WEIGHTS_NAME = os.path.basename(WEIGHTS_URL)  # pt_inception-2015-12-05-6726825d.pth
DIMS = tuple(pfi.InceptionV3.BLOCK_INDEX_BY_DIM)  # 64, 192, 768, 2048 (2048 = pool3, the FID standard)


def _one_line(e, limit=160):
    """The first line of an exception's message, shortened: error messages stay one line.

    For an error re-raised from a DataLoader worker ("Caught OSError in DataLoader worker ...", then the
    worker's traceback) the useful line is the last one.
    """
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    text = (lines[-1] if lines[0].startswith("Caught ") else lines[0]) if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- the FID Inception network

def hub_weights_path():
    """Where pytorch-fid (via torch.hub) keeps its weights: $TORCH_HOME/hub/checkpoints/<name>."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_NAME)


def fid_inception_v3_arch():
    """pytorch-fid's FID Inception module tree with uninitialised weights: `fid_inception_v3()` minus its download.

    torchvision's Inception v3 with 1008 classes and no aux head, with the blocks the TF FID graph computes
    differently (avg-pool without padding, max-pool in the last block) swapped for pytorch-fid's FID* blocks.
    """
    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


class FIDInceptionV3(pfi.InceptionV3):
    """pytorch-fid's `InceptionV3` feature extractor around a net we built and loaded ourselves.

    `InceptionV3.__init__` always gets its net from `fid_inception_v3()`, which downloads the weights, so we
    repeat its block assembly here (same blocks, same order) and inherit its `forward()` unchanged: bilinear
    resize to 299x299, x -> 2x - 1, then the blocks up to the one for `dims`.
    """

    def __init__(self, net, dims=2048):
        nn.Module.__init__(self)
        index = pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]
        self.resize_input = True
        self.normalize_input = True
        self.output_blocks = [index]
        self.last_needed_block = index
        blocks = [
            [net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
             net.Mixed_6e],
            [net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))],
        ]
        self.blocks = nn.ModuleList(nn.Sequential(*b) for b in blocks[: index + 1])
        self.requires_grad_(False)


def read_state_dict(path):
    """torch.load a state dict (weights only: no code runs); anything else is a one-line UserError."""
    if not os.path.isfile(path):
        raise UserError(f"--weights {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling, zip and format errors all mean "not a weights file"
        raise UserError(f"{path}: not a PyTorch weights file ({_one_line(e)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors (expected pytorch-fid's {WEIGHTS_NAME})")
    return state


def _check_keys(state, net, path):
    expected = net.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    problems = [f"{len(v)} {what} (e.g. {v[0]})" for v, what in
                [(missing, "missing keys"), (unexpected, "unexpected keys"), (wrong, "wrong shapes")] if v]
    if problems:
        raise UserError(f"{path} does not hold the FID Inception weights (pytorch-fid's {WEIGHTS_NAME}): "
                        + ", ".join(problems))


def _hub_weights():
    """The hub cache file, downloaded first if missing (as pytorch-fid does); a failed download is a UserError."""
    path = hub_weights_path()
    if os.path.isfile(path):
        return path
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        # Writes to a temp file and renames, so a failed download leaves no half file behind.
        torch.hub.download_url_to_file(WEIGHTS_URL, path, progress=sys.stderr.isatty())
    except Exception as e:  # no network, proxy, permissions, disk full ...
        raise UserError(f"cannot download the FID Inception weights ({_one_line(e, 80)}): put {WEIGHTS_URL} "
                        f"at {path}, or pass --weights PATH") from None
    return path


def load_inception(weights=None, device="cpu", dims=2048):
    """pytorch-fid's FID feature extractor (eval mode, on `device`) returning `dims`-dim features.

    `weights`: a local state-dict file; None -> the torch hub cache file, downloaded if missing. The file used
    is recorded as `model.weights_path`.
    """
    if dims not in DIMS:
        raise UserError(f"--dims must be one of {', '.join(map(str, DIMS))}, got {dims}")
    path = _hub_weights() if weights is None else os.fspath(weights)
    state = read_state_dict(path)
    with torch.device("meta"):  # no memory, no random init (~0.5 s): every tensor comes from the file
        net = fid_inception_v3_arch()
    _check_keys(state, net, path)
    net.load_state_dict(state, assign=True)
    model = FIDInceptionV3(net, dims).eval().to(device)
    model.weights_path = os.path.abspath(path)
    return model


# ----------------------------------------------------------------------------- images -> features

def list_images(folder):
    """The image files of `folder` as pytorch-fid lists them: sorted, lower-case IMAGE_EXTENSIONS, not recursive."""
    path = pathlib.Path(folder)
    return sorted([file for ext in IMAGE_EXTENSIONS for file in path.glob(f"*.{ext}")])


def subsample(files, max_images=None, seed=0):
    """A fixed random subset of `max_images` files: RandomState(seed).choice without replacement, kept in file order.

    Kept in order so that the subset gives the same features (and batches) as a folder holding just those files.
    """
    if max_images is None or len(files) <= max_images:
        return list(files)
    chosen = np.random.RandomState(seed).choice(len(files), max_images, replace=False)
    return [files[i] for i in sorted(chosen)]


def size_batches(files, batch_size):
    """Batches of indices into `files`: runs of `batch_size` in file order, as pytorch-fid makes them, per image size.

    pytorch-fid stacks each batch, so a folder with mixed sizes crashes it; here a batch never mixes sizes
    (each size keeps its files' order). For a folder of one size these are exactly pytorch-fid's batches.
    Reading only the headers also catches unreadable files before the slow part starts.
    """
    groups = {}
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                size = im.size
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            raise UserError(f"{f}: cannot read this image ({_one_line(e, 80)})") from None
        groups.setdefault(size, []).append(i)
    return [g[j:j + batch_size] for g in groups.values() for j in range(0, len(g), batch_size)]


def default_workers(device):
    """Decoding workers: on CPU Inception takes ~0.1 s per image and decoding ~1 ms, so a couple of workers
    suffice (more only take cores from the network); a GPU eats images far faster, so use more, like pytorch-fid."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return min(8 if torch.device(device).type == "cuda" else 2, cpus)


def get_activations(files_or_folder, model, batch_size=50, device="cpu", num_workers=None):
    """Pool3 (or `dims`) features of the images: float32 array, one row per file, in file order.

    Same reading as pytorch-fid (its ImagePathDataset with ToTensor); the model resizes and normalises.
    """
    if isinstance(files_or_folder, (str, os.PathLike)):
        files = list_images(files_or_folder)
    else:
        files = list(files_or_folder)
    if not files:
        raise UserError(f"{files_or_folder}: no images")
    device = torch.device(device)
    batches = size_batches(files, batch_size)
    loader = torch.utils.data.DataLoader(
        ImagePathDataset(files, transforms=TF.ToTensor()), batch_sampler=batches,
        num_workers=default_workers(device) if num_workers is None else num_workers,
        pin_memory=device.type == "cuda")
    feats = None
    model.eval()
    with torch.inference_mode():
        try:
            for index, batch in zip(batches, loader):
                pred = model(batch.to(device, non_blocking=True))[0]
                if pred.shape[2:] != (1, 1):  # dims < 2048: pytorch-fid averages the feature map
                    pred = F.adaptive_avg_pool2d(pred, output_size=(1, 1))
                pred = pred.flatten(1).cpu().numpy()
                if feats is None:
                    feats = np.empty((len(files), pred.shape[1]), dtype=np.float32)
                feats[index] = pred  # float32 as the network made them: pytorch-fid's float64 copy is exact
        except OSError as e:  # a file whose header read fine but whose data is broken (truncated download...)
            raise UserError(f"cannot decode an image ({_one_line(e, 100)})") from None
    return feats


def statistics(acts):
    """(mu, sigma) exactly as pytorch-fid: float64 mean and np.cov(rowvar=False)."""
    acts = np.asarray(acts, dtype=np.float64)
    if len(acts) < 2:
        raise UserError(f"FID needs at least 2 images per side, got {len(acts)}")
    return np.mean(acts, axis=0), np.cov(acts, rowvar=False)


# ----------------------------------------------------------------------------- the two metrics

def frechet_distance(mu1, sigma1, mu2, sigma2):
    """FID from two (mu, sigma): pytorch-fid's own calculate_frechet_distance, so the numbers are identical."""
    if np.shape(mu1) != np.shape(mu2) or np.shape(sigma1) != np.shape(sigma2):
        raise UserError(f"statistics of different dimensions ({np.shape(mu1)} vs {np.shape(mu2)})")
    return float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))


def _mmd2_unbiased(k_xx, k_yy, k_xy):
    """Unbiased MMD^2 of two samples of equal size m from their kernel matrices (Binkowski et al. 2018, eq. 3)."""
    m = k_xx.shape[0]
    same = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return same - 2.0 * k_xy.sum() / (m * m)


def kid(feats1, feats2, subsets=100, subset_size=1000, degree=3, gamma=None, coef0=1.0, seed=0, precompute=None):
    """Kernel Inception Distance: (mean, std) of the unbiased MMD^2 over `subsets` random subset pairs.

    Kernel k(x, y) = (gamma x.y + coef0)^degree with gamma = 1/dims; each subset draws `subset_size` rows
    (capped at the smaller set) without replacement from each side, from RandomState(seed), in the order of
    torch-fidelity. float64 throughout. When the full kernel matrices are small (`precompute=None`: auto) they
    are computed once and the subsets only index them: same numbers, ~100x less work at 500 images.
    """
    x = np.asarray(feats1, dtype=np.float64)
    y = np.asarray(feats2, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise UserError(f"KID needs two feature arrays of equal width, got {x.shape} and {y.shape}")
    nx, ny = len(x), len(y)
    m = min(nx, ny, subset_size)
    if m < 2:
        raise UserError(f"KID needs subsets of at least 2 images per side, got {m} "
                        f"({nx} and {ny} images, subset size {subset_size})")
    gamma = 1.0 / x.shape[1] if gamma is None else gamma

    def kernel(a, b):
        return (a @ b.T * gamma + coef0) ** degree

    full_entries = nx * nx + ny * ny + nx * ny
    if precompute is None:
        precompute = full_entries <= 25_000_000 and full_entries < subsets * 3 * m * m  # <= 200 MB and cheaper
    if precompute:
        k_xx_full, k_yy_full, k_xy_full = kernel(x, x), kernel(y, y), kernel(x, y)
    rng = np.random.RandomState(seed)
    mmds = np.empty(subsets)
    for s in range(subsets):
        i = rng.choice(nx, m, replace=False)
        j = rng.choice(ny, m, replace=False)
        if precompute:
            k_xx, k_yy, k_xy = k_xx_full[np.ix_(i, i)], k_yy_full[np.ix_(j, j)], k_xy_full[np.ix_(i, j)]
        else:
            k_xx, k_yy, k_xy = kernel(x[i], x[i]), kernel(y[j], y[j]), kernel(x[i], y[j])
        mmds[s] = _mmd2_unbiased(k_xx, k_yy, k_xy)
    return float(mmds.mean()), float(mmds.std())


# ----------------------------------------------------------------------------- statistics of one input

def _resolve(path, max_images=None, seed=0):
    """Check one input before any slow work: ('npz', path) or ('folder', files)."""
    path = os.fspath(path)
    if path.endswith(".npz"):
        if not os.path.isfile(path):
            raise UserError(f"{path}: no such statistics file")
        return "npz", path
    if not os.path.exists(path):
        raise UserError(f"{path}: no such folder or file")
    if not os.path.isdir(path):
        raise UserError(f"{path}: neither an image folder nor a .npz statistics file")
    files = list_images(path)
    if not files:
        raise UserError(f"{path}: no images (looked for *.{{{','.join(sorted(IMAGE_EXTENSIONS))}}}, "
                        "not in subfolders, lower-case extensions, as pytorch-fid)")
    return "folder", subsample(files, max_images, seed)


def load_stats(path):
    """A statistics .npz (ours or pytorch-fid's): dict(mu, sigma, features or None, n or None)."""
    try:
        with np.load(path) as f:
            keys = set(f.files)
            if not {"mu", "sigma"} <= keys:
                raise UserError(f"{path}: not a statistics file (it has no 'mu' and 'sigma' arrays)")
            stats = dict(mu=f["mu"], sigma=f["sigma"], features=f["features"] if "features" in keys else None,
                         n=int(f["n"]) if "n" in keys else None)
    except UserError:
        raise
    except Exception as e:  # not a zip, truncated, pickled objects ...
        raise UserError(f"{path}: cannot read it as a .npz statistics file ({_one_line(e, 80)})") from None
    d = stats["mu"].shape[0] if stats["mu"].ndim == 1 else -1
    if d < 1 or stats["sigma"].shape != (d, d):
        raise UserError(f"{path}: mu {stats['mu'].shape} and sigma {stats['sigma'].shape} do not fit together")
    if stats["features"] is not None and (stats["features"].ndim != 2 or stats["features"].shape[1] != d):
        raise UserError(f"{path}: features {stats['features'].shape} do not match mu {stats['mu'].shape}")
    if stats["n"] is None and stats["features"] is not None:
        stats["n"] = len(stats["features"])
    return stats


def save_stats(path, stats):
    """Write mu, sigma (pytorch-fid's keys), features and n; uncompressed (fast to load), atomically."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise UserError(f"--save-stats {path}: the file name must end in .npz (that is how inputs are recognised)")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temp name
            np.savez(f, mu=stats["mu"], sigma=stats["sigma"], features=stats["features"], n=stats["n"])
    common.atomic_write(path, write)


def folder_stats(files, model, batch_size=50, device="cpu", num_workers=None, label=""):
    """dict(mu, sigma, features, n) of a list of image files; one progress line on stderr."""
    t0 = time.time()
    print(f"{label}{len(files)} images: Inception features ...", file=sys.stderr, flush=True)
    feats = get_activations(files, model, batch_size, device, num_workers)
    mu, sigma = statistics(feats)
    print(f"{label}done in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    return dict(mu=mu, sigma=sigma, features=feats, n=len(feats))


# ----------------------------------------------------------------------------- the whole comparison

def compute(path_a, path_b, *, model=None, weights=None, device="cpu", batch_size=50, dims=2048,
            num_workers=None, max_images=None, seed=0, with_kid=True, kid_subsets=100, kid_subset_size=1000,
            save_stats_b=None):
    """FID (and KID) between two inputs, each an image folder or a statistics .npz; returns the result dict.

    `model`: a loaded `load_inception(...)` (else it is loaded from `weights` when a folder needs it).
    `save_stats_b`: also write B's statistics there. Both inputs are checked before anything slow runs.
    """
    inputs = [_resolve(path_a, max_images, seed), _resolve(path_b, max_images, seed)]
    for kind, what in inputs:  # read both sides' image headers now: a broken file in B must not wait for A's pass
        if kind == "folder":
            size_batches(what, batch_size)
    if save_stats_b is not None and inputs[1][0] != "folder":
        raise UserError(f"--save-stats: {path_b} is already a statistics file")
    if model is None and any(kind == "folder" for kind, _ in inputs):
        model = load_inception(weights, device, dims)
    sides = []
    for label, (kind, what) in zip(("a: ", "b: "), inputs):
        if kind == "npz":
            stats = load_stats(what)
            if model is not None and stats["mu"].shape[0] != dims:
                raise UserError(f"{what} holds {stats['mu'].shape[0]}-dim statistics, but --dims is {dims}")
        elif sides and inputs[0] == (kind, what):  # the same files twice: no need to run them again
            stats = sides[0]
        else:
            stats = folder_stats(what, model, batch_size, device, num_workers, label)
        sides.append(stats)
    a, b = sides
    if a["mu"].shape != b["mu"].shape:
        raise UserError(f"{path_a} and {path_b} hold statistics of different dimensions "
                        f"({a['mu'].shape[0]} vs {b['mu'].shape[0]})")
    if save_stats_b is not None:
        save_stats(save_stats_b, b)
    result = dict(fid=frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"]), kid_mean=None, kid_std=None,
                  n_a=a["n"], n_b=b["n"], a=os.fspath(path_a), b=os.fspath(path_b), dims=int(a["mu"].shape[0]),
                  weights=getattr(model, "weights_path", None), max_images=max_images, seed=seed,
                  kid_subsets=kid_subsets, kid_subset_size=None, kid_note=None)
    if not with_kid:
        result["kid_note"] = "not computed (--no-kid)"
    elif a["features"] is None or b["features"] is None:
        which = path_a if a["features"] is None else path_b
        result["kid_note"] = (f"unavailable: {which} holds only mu/sigma (pytorch-fid style), no features; "
                              "re-create it with compute_fid.py --save-stats")
    else:
        result["kid_subset_size"] = min(a["n"], b["n"], kid_subset_size)
        result["kid_mean"], result["kid_std"] = kid(a["features"], b["features"], kid_subsets, kid_subset_size,
                                                    seed=seed)
    return result


def report(result):
    """The console lines: `FID: 12.345` and `KID: 0.0123 ± 0.0011 (...)`."""
    lines = [f"FID: {result['fid']:.3f}"]
    if result["kid_mean"] is None:
        lines.append(f"KID: {result['kid_note']}")
    else:
        m = result["kid_subset_size"]
        full = m == result["n_a"] == result["n_b"]
        lines.append(f"KID: {result['kid_mean']:.4f} ± {result['kid_std']:.4f}  (unscaled MMD^2, x1; mean ± std "
                     f"over {result['kid_subsets']} subsets of {m} images per side"
                     + ("; the subsets are the whole sets, so std is 0: use --kid-subset-size below "
                        f"{m} for a spread)" if full else ")"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

def build_parser():
    p = common.ArgumentParser(
        prog="compute_fid.py",
        usage="%(prog)s A B [options]\n       %(prog)s --save-stats DATASET_DIR OUT.npz [options]",
        description=__doc__.split("\n\n")[0] + "\n\nEach of A, B: an image folder or a statistics .npz.",
        epilog=__doc__[__doc__.index("Examples:"):])
    p.add_argument("paths", nargs="+", metavar="PATH", help="A B (two inputs), or with --save-stats one input")
    p.add_argument("--batch-size", type=common.positive_int, default=50,
                   help="images per Inception batch (default 50, as pytorch-fid)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--dims", type=int, default=2048, choices=DIMS,
                   help="Inception feature size; 2048 = pool3, the standard (default 2048)")
    p.add_argument("--num-workers", type=common.nonneg_int, default=None,
                   help="image-decoding processes (default: 2 on CPU, up to 8 on CUDA)")
    p.add_argument("--max-images", type=common.positive_int, default=None, metavar="N",
                   help="use a fixed random subset of N files of each folder (default: all; "
                        ".npz inputs are used whole)")
    p.add_argument("--seed", type=common.nonneg_int, default=0,
                   help="seed of the --max-images subset and of the KID subsets (default 0)")
    p.add_argument("--kid", action=argparse.BooleanOptionalAction, default=True, help="also compute KID (default on)")
    p.add_argument("--kid-subsets", type=common.positive_int, default=100, help="KID subsets (default 100)")
    p.add_argument("--kid-subset-size", type=common.positive_int, default=1000,
                   help="images per side per KID subset, capped at the smaller set (default 1000)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help=f"local FID Inception state dict ({WEIGHTS_NAME}); default: the torch hub cache "
                        f"({hub_weights_path()}), downloaded if missing")
    p.add_argument("--save-stats", default=None, metavar="OUT.npz",
                   help="with A B: also save B's statistics; as `--save-stats DATASET_DIR OUT.npz`: only save")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the result as JSON")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = common.get_device(args.device)
    common_kw = dict(batch_size=args.batch_size, device=device, num_workers=args.num_workers)

    if args.save_stats is not None and len(args.paths) == 1:
        # `--save-stats DATASET OUT.npz` (pytorch-fid's order) or `DATASET --save-stats OUT.npz`.
        src, out = ((args.paths[0], args.save_stats) if args.save_stats.endswith(".npz")
                    else (args.save_stats, args.paths[0]))
        kind, files = _resolve(src, args.max_images, args.seed)
        if kind != "folder":
            raise UserError(f"--save-stats: {src} is already a statistics file; give an image folder")
        if not out.endswith(".npz"):
            raise UserError(f"--save-stats: the output {out} must end in .npz")
        model = load_inception(args.weights, device, args.dims)
        save_stats(out, folder_stats(files, model, **common_kw))
        print(f"saved statistics of {len(files)} images of {src} to {out}")
        return
    if len(args.paths) != 2:
        raise UserError(f"give two inputs A B (or --save-stats DATASET_DIR OUT.npz), got {len(args.paths)}")

    result = compute(*args.paths, weights=args.weights, dims=args.dims, max_images=args.max_images,
                     seed=args.seed, with_kid=args.kid, kid_subsets=args.kid_subsets,
                     kid_subset_size=args.kid_subset_size, save_stats_b=args.save_stats, **common_kw)
    print(f"a: {result['a']} ({result['n_a'] if result['n_a'] is not None else '?'} images)")
    print(f"b: {result['b']} ({result['n_b'] if result['n_b'] is not None else '?'} images)")
    print(report(result))
    if args.save_stats:
        print(f"saved statistics of {result['b']} to {args.save_stats}")
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        common.write_json(args.json, result)


if __name__ == "__main__":
    common.run_main(main)
