"""FID and KID between two sets of images (thesis: 500 generated vs 500 real, and student vs teacher samples).

Standalone: needs only torch, numpy, scipy, pillow and pytorch-fid (which brings torchvision); copy it anywhere.

Same numbers as pytorch-fid (`python -m pytorch_fid A B`): its image reading (sorted `*.png|jpg|...` of the
folder, PIL -> RGB -> [0, 1]), its batching, its FID Inception network (the blocks and forward of its public
`InceptionV3`: resize to 299 and scaling to [-1, 1] inside), its pool3 features and its
`calculate_frechet_distance`. On top of that:
- KID (Binkowski et al. 2018), the unbiased MMD^2 with the cubic polynomial kernel, as in their code,
  torch-fidelity and clean-fid; printed unscaled (x1, not x1000). FID is strongly biased at 500 images (it
  shrinks as N grows), KID is not, so KID is the one to compare across sample sizes. Subsets: `--kid-subsets`
  random pairs of `--kid-subset-size` images per side; by default min(1000, smaller set // 2) (at least 2):
  torch-fidelity's and clean-fid's 1000 from 2000 images up, and below that half the set, so that the subsets
  differ and the ± (std over subsets) means something: subsets as large as the set (clean-fid caps at it) are
  all the same set, std 0. KID of a set with itself is slightly below 0: the unbiased estimator's nature.
- 16-bit greyscale PNGs (PIL modes I;16, I;16B, I): scaled to 8 bits (v / 257). pytorch-fid's
  convert('RGB') clips them at 255, so it sees them as (nearly) all white.
- Folders with images of different sizes (pytorch-fid stacks a batch and crashes): batches never mix sizes.
  A folder of one size gives exactly pytorch-fid's batches, hence its features bit for bit.
- `.npz` statistics: ours hold `mu` and `sigma` (pytorch-fid's keys: each tool reads the other's files) plus
  the raw pool3 `features` and the image count `n`, so KID works from a cached file too. A pytorch-fid `.npz`
  (mu/sigma only) still gives FID; KID is then reported as unavailable.
- Offline weights: `--weights FILE` loads pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (or any file
  with its keys) from anywhere; nothing is downloaded. Without it the torch hub cache file is used, as
  pytorch-fid does, and downloaded there if missing.
- `--max-images N --seed S`: a fixed random subset of N files of a folder (the thesis used 500 per dataset).
- Safe outputs: `--save-stats`/`--json` never replace an existing file without `--overwrite`, are checked to be
  writable before the slow part, and are written atomically (no half file on a full disk). Unreadable or
  oversized images (PIL's decompression-bomb limit) end in one line naming the file.
- Speed: the same network as pytorch-fid in NHWC layout (`--channels-last`, the default): ~1.5x faster on a CPU,
  features equal to pytorch-fid's to ~1e-6 relative (FID to ~1e-8); `--no-channels-last` gives its exact bits.
  Cached statistics halve a folder-vs-folder run.
- Sample noise: `--bootstrap R` adds the std of FID over R resamples of A; `--max-images N` also takes a fixed
  subset of the feature rows of an .npz (FID@500 of the thesis' protocol from cached 2,000-image statistics).
- In Python (e.g. FID during training, images in memory): `model = load_inception(weights)`,
  `ref = load_stats("stats/cats.npz")`, `score(image_features(uint8_images, model), ref)`; `Evaluator` does
  that for a generator's images of fixed latents (the training scripts' --eval-every).

Examples:
    python compute_fid.py samples/model1 data/cats                          # folder vs folder: FID + KID
    python compute_fid.py --save-stats data/cats stats/cats.npz             # cache the real side once ...
    python compute_fid.py samples/model1 stats/cats.npz                     # ... then only the samples are run
    python compute_fid.py samples/model1 data/cats --save-stats stats/cats.npz   # compare and cache B
    python compute_fid.py samples/model1 data/cats --max-images 500 --seed 0     # 500 random files per folder
    python compute_fid.py samples/kd samples/teacher --json out/kd_vs_teacher.json --overwrite
    python compute_fid.py samples/model1 stats/cats.npz --weights ~/pt_inception-2015-12-05-6726825d.pth
"""
import argparse
import contextlib
import io
import json
import os
import pathlib
import re
import stat
import sys
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pytorch_fid import inception as pfi
from pytorch_fid.fid_score import IMAGE_EXTENSIONS, calculate_frechet_distance
from scipy.linalg import LinAlgWarning

WEIGHTS_URL = pfi.FID_WEIGHTS_URL
WEIGHTS_NAME = os.path.basename(WEIGHTS_URL)  # pt_inception-2015-12-05-6726825d.pth
DIMS = tuple(pfi.InceptionV3.BLOCK_INDEX_BY_DIM)  # 64, 192, 768, 2048 (2048 = pool3, the FID standard)
MODES_16BIT = ("I", "I;16", "I;16L", "I;16B", "I;16N")  # 16-bit greyscale as PIL opens it (as data.py's to_rgb)


class UserError(Exception):
    """A problem the user can fix (path, flag, file): `main` prints it as one line `error: ...` and exits 2.

    A copy of the project's harness.UserError, so that this file imports nothing of the project.
    """


def _one_line(e, limit=160):
    """The first line of an exception's message, shortened: error messages stay one line.

    For an error re-raised from a DataLoader worker ("Caught OSError in DataLoader worker ...", then the
    worker's traceback) the useful line is the last one.
    """
    lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
    text = (re.sub(r"^[\w.]+: ", "", lines[-1]) if lines[0].startswith("Caught ") else lines[0]) if lines else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- the FID Inception network

def hub_weights_path():
    """Where pytorch-fid (via torch.hub) keeps its weights: $TORCH_HOME/hub/checkpoints/<name>."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", WEIGHTS_NAME)


def fid_inception_v3_arch():
    """pytorch-fid's `fid_inception_v3()` network before it loads the weights it downloads: torchvision's
    Inception v3, 1008 classes, no aux head, with pytorch-fid's FID blocks (weights uninitialised)."""
    import torchvision  # pytorch-fid's own dependency; only this helper needs it directly

    net = torchvision.models.inception_v3(weights=None, num_classes=1008, aux_logits=False, init_weights=False)
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


def fetch_hub_weights():
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


def load_inception(weights=None, device="cpu", dims=2048, channels_last=False):
    """pytorch-fid's `InceptionV3` feature extractor (eval mode, on `device`) returning `dims`-dim features.

    `weights`: a local state-dict file; None -> the torch hub cache file, downloaded if missing. The file used
    is recorded as `model.weights_path`.
    `channels_last`: NHWC memory layout, ~1.5x faster on a CPU (oneDNN's NHWC kernels, pooling above all), but
    other kernels sum in another order, so features differ from pytorch-fid's by float rounding (~1e-6
    relative; FID of 500 cats vs 500 dogs: 215.084212 vs 215.084216). The command line's default.
    """
    if dims not in DIMS:
        raise UserError(f"--dims must be one of {', '.join(map(str, DIMS))}, got {dims}")
    path = fetch_hub_weights() if weights is None else os.fspath(weights)
    net = fid_inception_v3_arch()
    try:
        net.load_state_dict(read_state_dict(path))  # strictly, as pytorch-fid: other keys or shapes fail here
    except RuntimeError as e:  # "Error(s) in loading state_dict for Inception3:" + a line per kind of problem
        detail = _one_line(str(e).split("\n", 1)[-1])
        raise UserError(f"{path} does not hold the FID Inception weights (pytorch-fid's {WEIGHTS_NAME}): "
                        f"{detail}") from None
    model = FIDInceptionV3(net, pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]).eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.weights_path = os.path.abspath(path)
    model.channels_last = channels_last
    return model


class FIDInceptionV3(torch.nn.Module):
    """pytorch-fid's `InceptionV3` feature extractor around a loaded `fid_inception_v3_arch()` network: the same
    blocks under the same names, the same forward, up to the block whose features it returns (0: 64-dim, 1: 192,
    2: 768, 3: 2048). Its public class would fetch its weights itself (download or hub cache); this takes them."""

    def __init__(self, net, block):
        super().__init__()
        blocks = [[net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, torch.nn.MaxPool2d(kernel_size=3, stride=2)],
                  [net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, torch.nn.MaxPool2d(kernel_size=3, stride=2)],
                  [net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
                   net.Mixed_6e],
                  [net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, torch.nn.AdaptiveAvgPool2d(output_size=(1, 1))]]
        self.blocks = torch.nn.ModuleList(torch.nn.Sequential(*b) for b in blocks[:block + 1])
        self.requires_grad_(False)

    def forward(self, x):
        """Images in [0, 1], (B, 3, H, W) -> [features (B, C, h, w) of the last block], as pytorch-fid returns them."""
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # [0, 1] -> [-1, 1], the range the network was trained on
        for block in self.blocks:
            x = block(x)
        return [x]


# ----------------------------------------------------------------------------- images -> features

def list_images(folder):
    """The image files of `folder` as pytorch-fid lists them: sorted, lower-case IMAGE_EXTENSIONS, not recursive.
    Only regular files (or symlinks to them): dangling links, link loops, FIFOs (reading one would block forever)
    and devices are left out with one `note:` line."""
    path = pathlib.Path(folder)
    files, skipped = [], []
    for file in sorted(file for ext in IMAGE_EXTENSIONS for file in path.glob(f"*.{ext}")):
        try:
            regular = stat.S_ISREG(os.stat(file).st_mode)  # follows symlinks
        except OSError as e:
            regular, why = False, "dangling link" if os.path.islink(file) and not os.path.exists(file) else e.strerror
        else:
            why = "not a regular file"
        (files if regular else skipped).append(file if regular else f"{file.name!a} ({why})")
    if skipped:
        print(f"note: {folder}: left out {len(skipped)} entries that are not regular files: {', '.join(skipped[:5])}"
              f"{f' and {len(skipped) - 5} more' if len(skipped) > 5 else ''}", file=sys.stderr)
    return files


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
    Reading only the headers also catches unreadable files before the slow part starts, and files claiming
    more pixels than PIL's decompression-bomb limit (89 Mpx warns, 179 Mpx fails: here both fail).
    """
    groups = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        for i, f in enumerate(files):
            try:
                with Image.open(f) as im:
                    size = im.size
            except (OSError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
                raise UserError(f"{f}: cannot read this image ({_one_line(e, 120)})") from None
            groups.setdefault(size, []).append(i)
    return [g[j:j + batch_size] for g in groups.values() for j in range(0, len(g), batch_size)]


def read_rgb(path):
    """One image file as pytorch-fid reads it (PIL convert('RGB')), except that 16-bit greyscale is scaled to
    8 bits first (convert() would clip it at 255: white)."""
    with Image.open(path) as img:
        if img.mode in MODES_16BIT:
            a = np.asarray(img, dtype=np.float64) / 257.0
            img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        return img.convert("RGB")


def to_tensor(img):
    """An 8-bit RGB PIL image -> float32 (3, H, W) in [0, 1], the same operations as torchvision's ToTensor."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)


class ImageFiles(torch.utils.data.Dataset):
    def __init__(self, files):
        self.files = files

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        try:
            return to_tensor(read_rgb(self.files[i]))
        except Exception as e:  # broken data behind a good header (truncated download ...): name the file
            raise ValueError(f"{self.files[i]}: cannot decode this image ({_one_line(e, 100)})") from None


def default_workers(device):
    """Decoding workers: on CPU Inception takes ~0.1 s per image and decoding ~1 ms, so a couple of workers
    suffice (more only take cores from the network); a GPU eats images far faster, so use more, like pytorch-fid."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return min(8 if torch.device(device).type == "cuda" else 2, cpus)


class Progress:
    """`<label>120/500 images (24%), 12 s` on stderr each time another 10% of the images is done or 10 s have
    passed since the last line, whichever comes first; one line each, no tqdm (logs stay readable)."""

    def __init__(self, total, label="", every_s=10.0):
        self.total, self.label, self.every_s = total, label, every_s
        self.start = self.last = time.monotonic()
        self.next_count = 0

    def update(self, done):
        now = time.monotonic()
        if done < self.next_count and now - self.last < self.every_s:
            return
        self.last = now
        self.next_count = (done * 10 // self.total + 1) * self.total / 10  # the next whole 10%
        print(f"{self.label}{done}/{self.total} images ({100 * done // self.total}%), {now - self.start:.0f} s",
              file=sys.stderr, flush=True)


def _features(model, batch):
    """One batch in [0, 1] -> (B, dims) float32 numpy, as pytorch-fid's get_activations computes it."""
    if getattr(model, "channels_last", False):
        batch = batch.contiguous(memory_format=torch.channels_last)
    pred = model(batch)[0]
    if pred.shape[2:] != (1, 1):  # dims < 2048: pytorch-fid averages the feature map
        pred = F.adaptive_avg_pool2d(pred, output_size=(1, 1))
    return pred.flatten(1).float().cpu().numpy()  # float32 as the network made them: pytorch-fid's float64 copy is exact


def get_activations(files_or_folder, model, batch_size=50, device="cpu", num_workers=None, progress=None):
    """Pool3 (or `dims`) features of the image files: float32 array, one row per file, in file order.

    Same reading as pytorch-fid (see `read_rgb`); the model resizes and normalises. `progress`: None for
    silence, else a label for the progress lines on stderr (see `Progress`).
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
        ImageFiles(files), batch_sampler=batches, pin_memory=device.type == "cuda",
        num_workers=default_workers(device) if num_workers is None else num_workers)
    meter = None if progress is None else Progress(len(files), progress)
    feats, done = None, 0
    model.eval()
    with torch.inference_mode():
        try:
            for index, batch in zip(batches, loader):
                pred = _features(model, batch.to(device, non_blocking=True))
                if feats is None:
                    feats = np.empty((len(files), pred.shape[1]), dtype=np.float32)
                feats[index] = pred
                done += len(index)
                if meter:
                    meter.update(done)
        except ValueError as e:  # ImageFiles' error, from this process or re-raised from a DataLoader worker
            raise UserError(_one_line(e, 240)) from None
    return feats


def image_features(images, model, batch_size=50, device="cpu"):
    """Features of images in memory: a uint8 tensor (N, 3, H, W) -> float32 array (N, dims).

    The same numbers as `get_activations` on PNG files holding exactly these pixels (x / 255 in float32, then
    the model), to float rounding: exactly when the batches are the same.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 \
            or images.shape[1] != 3 or len(images) == 0:
        raise UserError("image_features needs a uint8 tensor of shape (N, 3, H, W), got "
                        f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}")
    model.eval()
    with torch.inference_mode():
        parts = [_features(model, images[i:i + batch_size].to(device).contiguous().float().div(255))
                 for i in range(0, len(images), batch_size)]
    return np.concatenate(parts)


def statistics(acts):
    """(mu, sigma) exactly as pytorch-fid: float64 mean and np.cov(rowvar=False)."""
    acts = np.asarray(acts, dtype=np.float64)
    if len(acts) < 2:
        raise UserError(f"FID needs at least 2 images per side, got {len(acts)}")
    if not np.isfinite(acts).all():
        raise UserError("the Inception features hold NaN or Inf values (broken network weights?)")
    return np.mean(acts, axis=0), np.cov(acts, rowvar=False)


# ----------------------------------------------------------------------------- the two metrics

def frechet_distance(mu1, sigma1, mu2, sigma2):
    """FID from two (mu, sigma): pytorch-fid's own calculate_frechet_distance, so the numbers are identical.

    Its console noise becomes one line on stderr: SciPy's "LinAlgWarning: Matrix is singular" (with a source
    echo) and pytorch-fid's printed "fid calculation produces singular product" turn into one `note:`.
    """
    if np.shape(mu1) != np.shape(mu2) or np.shape(sigma1) != np.shape(sigma2):
        raise UserError(f"statistics of different dimensions ({np.shape(mu1)} vs {np.shape(mu2)})")
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(io.StringIO()) as printed:
        warnings.simplefilter("always")
        try:
            value = float(calculate_frechet_distance(mu1, sigma1, mu2, sigma2))
        except ValueError as e:  # "Imaginary component 1e+03": the square root failed, no number to give
            raise UserError(f"FID: the matrix square root failed ({_one_line(e, 60)}); the covariances are too "
                            "degenerate (too few or identical images?)") from None
    if not np.isfinite(value):
        raise UserError(f"FID is {value}: the statistics hold values too large for the computation")
    offset = "singular product" in printed.getvalue()
    if offset or any(issubclass(w.category, LinAlgWarning) for w in caught):
        print(f"note: a covariance is singular (usually fewer images than the {np.shape(mu1)[0]} feature "
              "dimensions), so the matrix square root is approximate"
              + ("; pytorch-fid then adds 1e-6 to the diagonals" if offset else "")
              + ": this is pytorch-fid's value all the same", file=sys.stderr)
    for w in caught:  # anything else, one line each, no source echo; SciPy's deprecation of `disp` is dropped
        if not issubclass(w.category, (LinAlgWarning, DeprecationWarning)):
            print(f"warning: {_one_line(w.message)}", file=sys.stderr)
    return value


def _mmd2_unbiased(k_xx, k_yy, k_xy):
    """Unbiased MMD^2 of two samples of equal size m from their kernel matrices (Binkowski et al. 2018, eq. 3)."""
    m = k_xx.shape[0]
    same = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return same - 2.0 * k_xy.sum() / (m * m)


def default_kid_subset_size(n1, n2):
    """min(1000, smaller set // 2), at least 2: 1000 as torch-fidelity and clean-fid from 2000 images up, and
    below that subsets that differ from each other, so the std over subsets is not 0 (module docstring)."""
    return max(2, min(1000, min(n1, n2) // 2))


def kid(feats1, feats2, subsets=100, subset_size=None, degree=3, gamma=None, coef0=1.0, seed=0, precompute=None):
    """Kernel Inception Distance: (mean, std) of the unbiased MMD^2 over `subsets` random subset pairs.

    Kernel k(x, y) = (gamma x.y + coef0)^degree with gamma = 1/dims; each subset draws `subset_size` rows
    (None: `default_kid_subset_size`; capped at the smaller set) without replacement from each side, from
    RandomState(seed), in the order of torch-fidelity. float64 throughout. When the full kernel matrices are
    small (`precompute=None`: auto) they are computed once and the subsets only index them: same numbers,
    ~100x less work at 500 images.
    """
    x = np.asarray(feats1, dtype=np.float64)
    y = np.asarray(feats2, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise UserError(f"KID needs two feature arrays of equal width, got {x.shape} and {y.shape}")
    nx, ny = len(x), len(y)
    m = min(nx, ny, default_kid_subset_size(nx, ny) if subset_size is None else subset_size)
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


def score(features, ref, kid_subsets=100, kid_subset_size=None, seed=0):
    """FID and KID of features (e.g. `image_features(...)`) against reference statistics (a `load_stats` dict).

    Returns dict(fid, kid_mean, kid_std); KID needs ref["features"] (our .npz files hold them), else None.
    The same numbers as `compute(A, ref.npz)` for a folder A holding these images.
    """
    mu, sigma = statistics(features)
    result = dict(fid=frechet_distance(mu, sigma, ref["mu"], ref["sigma"]), kid_mean=None, kid_std=None)
    if ref.get("features") is not None:
        result["kid_mean"], result["kid_std"] = kid(features, ref["features"], kid_subsets, kid_subset_size,
                                                    seed=seed)
    return result


class Evaluator:
    """FID/KID during training: a generator's images of `n` fixed latents (seed 2024) against reference statistics
    (`--save-stats`). The network loads at the first call (never inside training's memory window), in NHWC:
    features equal to pytorch-fid's to ~1e-6 relative, ~1.5x faster on a CPU. `fast`: bf16 autocast, ~2.5x
    faster on a CPU with native bf16, FID off by ~1% (for curves; final numbers with the command line)."""

    def __init__(self, ref, nz, n=500, device="cpu", weights=None, fast=False, batch_size=50):
        self.ref, self.device, self.weights, self.fast, self.batch = load_stats(ref), device, weights, fast, batch_size
        self.z = torch.randn(n, nz, 1, 1, generator=torch.Generator().manual_seed(2024))
        self.inception = None

    @torch.no_grad()
    def __call__(self, G):
        if self.inception is None:
            self.inception = load_inception(self.weights, self.device, dims=len(self.ref["mu"]), channels_last=True)
        was_training = G.training
        G.eval()  # [-1, 1] -> uint8 with correct rounding, as saved PNGs hold
        images = torch.cat([((G(z.to(self.device)).float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()
                            for z in self.z.split(self.batch)])
        G.train(was_training)
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.fast):
            features = image_features(images, self.inception, self.batch, self.device)
        scores = score(features.astype("float32"), self.ref)
        return {"fid": round(scores["fid"], 4), "kid": scores["kid_mean"], "kid_std": scores["kid_std"]}


# ----------------------------------------------------------------------------- files

def check_output(path, overwrite=False):
    """Before any slow work: `path` must not exist (unless `overwrite`) and its folder must be writable.

    The folder is created if missing.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{path} is a folder; give a file name")
    if os.path.lexists(path) and not overwrite:
        raise UserError(f"{path} exists; pass --overwrite to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    above = folder
    while not os.path.exists(above):
        above = os.path.dirname(above)
    if not os.path.isdir(above):
        raise UserError(f"cannot write {path}: {above} is a file, not a folder")
    if not os.access(above, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: no write permission in {above} (or a read-only file system)")


def atomic_write(path, write):
    """`write(tmp)` into a temp file beside `path`, then rename it over `path`: a crash or a full disk never
    leaves half a file, nor destroys the old one. An OSError (ENOSPC, EFBIG, EROFS, EACCES) becomes one line."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or _one_line(e)}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    if stats["n"] is not None and not (stats["n"] >= 2 and (stats["features"] is None or stats["n"] == len(stats["features"]))):
        raise UserError(f"{path}: its image count n = {stats['n']} is not a count of at least 2 images"
                        + (f" matching its {len(stats['features'])} feature rows" if stats["features"] is not None else ""))
    for key in ("mu", "sigma", "features"):
        if stats[key] is not None and not np.isfinite(stats[key]).all():
            raise UserError(f"{path}: its {key} holds NaN or Inf values (the images or the network it came from were broken)")
    return stats


def save_stats(path, stats, overwrite=False):
    """Write mu, sigma (pytorch-fid's keys), features and n; uncompressed (fast to load), atomically."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise UserError(f"--save-stats {path}: the file name must end in .npz (that is how inputs are recognised)")
    check_output(path, overwrite)

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to the temp name
            np.savez(f, mu=stats["mu"], sigma=stats["sigma"], features=stats["features"], n=stats["n"])
    atomic_write(path, write)


def write_json(path, obj, overwrite=False):
    check_output(path, overwrite)

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    atomic_write(path, write)


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


def subsample_stats(stats, path, max_images=None, seed=0):
    """`--max-images` for a statistics file: the same fixed random subset of its feature rows that `subsample`
    takes of files (an .npz saved from N files, subset to M, equals the folder's M-file subset of those N)."""
    if max_images is None or (stats["n"] is not None and stats["n"] <= max_images):
        return stats
    if stats["features"] is None:
        raise UserError(f"--max-images {max_images}: {path} holds only mu/sigma, no features to take a subset of")
    feats = stats["features"][subsample(range(len(stats["features"])), max_images, seed)]
    mu, sigma = statistics(feats)
    return dict(mu=mu, sigma=sigma, features=feats, n=len(feats))


def bootstrap_fid(a, b, rounds, seed=0):
    """Std of FID over `rounds` resamples (with replacement) of A's feature rows, B fixed: the part of FID's
    noise that comes from which images were generated. Two models whose FIDs differ by less than about twice
    the combined std (sqrt(std_1^2 + std_2^2)) are a tie.

    Each resample's FID uses Tr((S_a S_b)^1/2) = sum sqrt(eig(S_b^1/2 S_a S_b^1/2)), a symmetric eigenproblem
    (S_b^1/2 computed once): the same value as the matrix square root for covariances, ~10x faster."""
    if a["features"] is None:
        raise UserError("--bootstrap needs the features of A (an image folder, or an .npz saved by this tool)")
    w, v = np.linalg.eigh(b["sigma"])
    root_b = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(rounds):
        mu, sigma = statistics(a["features"][rng.randint(0, len(a["features"]), len(a["features"]))])
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_b @ sigma @ root_b), 0, None)).sum()
        values.append(float(((mu - b["mu"]) ** 2).sum() + np.trace(sigma) + np.trace(b["sigma"]) - 2 * cross))
    return float(np.std(values, ddof=1))


def folder_stats(files, model, batch_size=50, device="cpu", num_workers=None, label="", quiet=False):
    """dict(mu, sigma, features, n) of a list of image files; progress lines on stderr unless `quiet`."""
    if not quiet:
        print(f"{label}{len(files)} images: Inception features ...", file=sys.stderr, flush=True)
    feats = get_activations(files, model, batch_size, device, num_workers, progress=None if quiet else label)
    mu, sigma = statistics(feats)
    return dict(mu=mu, sigma=sigma, features=feats, n=len(feats))


# ----------------------------------------------------------------------------- the whole comparison

def compute(path_a, path_b, *, model=None, weights=None, channels_last=False, device="cpu", batch_size=50,
            dims=2048, num_workers=None, max_images=None, seed=0, with_kid=True, kid_subsets=100,
            kid_subset_size=None, save_stats_b=None, overwrite=False, quiet=False, bootstrap=0):
    """FID (and KID) between two inputs, each an image folder or a statistics .npz; returns the result dict.

    `model`: a loaded `load_inception(...)` (else it is loaded from `weights`, with `channels_last`, when a folder
    needs it).
    `save_stats_b`: also write B's statistics there (refused if it exists, unless `overwrite`). Both inputs and
    the output are checked before anything slow runs.
    """
    inputs = [_resolve(path_a, max_images, seed), _resolve(path_b, max_images, seed)]
    for kind, what in inputs:  # read both sides' image headers now: a broken file in B must not wait for A's pass
        if kind == "folder":
            size_batches(what, batch_size)
    if save_stats_b is not None:
        if inputs[1][0] != "folder":
            raise UserError(f"--save-stats: {path_b} is already a statistics file")
        check_output(save_stats_b, overwrite)
    if model is None and any(kind == "folder" for kind, _ in inputs):
        model = load_inception(weights, device, dims, channels_last)
    sides = []
    for label, (kind, what) in zip(("a: ", "b: "), inputs):
        if kind == "npz":
            stats = subsample_stats(load_stats(what), what, max_images, seed)
            if model is not None and stats["mu"].shape[0] != dims:
                raise UserError(f"{what} holds {stats['mu'].shape[0]}-dim statistics, but --dims is {dims}")
        elif sides and inputs[0] == (kind, what):  # the same files twice: no need to run them again
            stats = sides[0]
        else:
            stats = folder_stats(what, model, batch_size, device, num_workers, label, quiet)
        sides.append(stats)
    a, b = sides
    if a["mu"].shape != b["mu"].shape:
        raise UserError(f"{path_a} and {path_b} hold statistics of different dimensions "
                        f"({a['mu'].shape[0]} vs {b['mu'].shape[0]})")
    if save_stats_b is not None:
        save_stats(save_stats_b, b, overwrite)
    result = dict(fid=frechet_distance(a["mu"], a["sigma"], b["mu"], b["sigma"]), kid_mean=None, kid_std=None,
                  n_a=a["n"], n_b=b["n"], a=os.fspath(path_a), b=os.fspath(path_b), dims=int(a["mu"].shape[0]),
                  weights=getattr(model, "weights_path", None), channels_last=getattr(model, "channels_last", None),
                  max_images=max_images, seed=seed, kid_subsets=kid_subsets, kid_subset_size=None, kid_note=None,
                  fid_bootstrap_std=bootstrap_fid(a, b, bootstrap, seed) if bootstrap else None, bootstrap=bootstrap)
    if not with_kid:
        result["kid_note"] = "not computed (--no-kid)"
    elif a["features"] is None or b["features"] is None:
        which = path_a if a["features"] is None else path_b
        result["kid_note"] = (f"unavailable: {which} holds only mu/sigma (pytorch-fid style), no features; "
                              "re-create it with compute_fid.py --save-stats")
    else:
        n = min(a["n"], b["n"])
        result["kid_subset_size"] = min(n, default_kid_subset_size(a["n"], b["n"]) if kid_subset_size is None
                                        else kid_subset_size)
        result["kid_mean"], result["kid_std"] = kid(a["features"], b["features"], kid_subsets, kid_subset_size,
                                                    seed=seed)
    return result


def report(result):
    """The console lines: `FID: 12.345` and `KID: 0.0123 ± 0.0011 (...)`."""
    lines = [f"FID: {result['fid']:.3f}" + (f" ± {result['fid_bootstrap_std']:.3f} (std over {result['bootstrap']} "
                                            "bootstrap resamples of A)" if result.get("fid_bootstrap_std") else "")]
    if result["kid_mean"] is None:
        lines.append(f"KID: {result['kid_note']}")
    else:
        m = result["kid_subset_size"]
        whole = m == result["n_a"] == result["n_b"]
        lines.append(f"KID: {result['kid_mean']:.4f} ± {result['kid_std']:.4f}  (unscaled MMD^2, x1; mean ± std "
                     f"over {result['kid_subsets']} subsets of {m} images per side"
                     + ("; subsets = the whole sets, so std is 0)" if whole else ")"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line

class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; the description and examples keep their line breaks."""


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, not the usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(low):
    def parse(text):
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {text}")
        return value
    parse.__name__ = "int"  # argparse's message: "invalid int value: 'x'"
    return parse


def _seed(text):
    """A seed from 0 to 2**32 - 1: the range numpy's RandomState takes (the same rule in every script)."""
    value = int(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**32 - 1 = {2**32 - 1}, got {text}")
    return value


def get_device(spec="auto"):
    """'auto' -> cuda if available else cpu; 'cuda[:N]' must exist; anything else is a user error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {spec}: no such CUDA device here ({torch.cuda.device_count()} found)")
    return device


def build_parser():
    p = _ArgumentParser(
        prog="compute_fid.py", formatter_class=_HelpFormatter,
        usage="%(prog)s A B [options]\n       %(prog)s --save-stats DATASET_DIR OUT.npz [options]",
        description=__doc__.split("\n\n")[0] + "\n\nEach of A, B: an image folder or a statistics .npz.",
        epilog=__doc__[__doc__.index("Examples:"):])
    p.add_argument("paths", nargs="+", metavar="PATH", help="A B (two inputs), or with --save-stats one input")
    p.add_argument("--batch-size", type=_int_at_least(1), default=50, help="images per Inception batch, as pytorch-fid")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--dims", type=int, default=2048, choices=DIMS,
                   help="Inception feature size; 2048 = pool3, the standard")
    p.add_argument("--num-workers", type=_int_at_least(0), default=None,
                   help="image-decoding processes (None: 2 on CPU, up to 8 on CUDA)")
    p.add_argument("--max-images", type=_int_at_least(1), default=None, metavar="N",
                   help="use a fixed random subset of N files of each folder, or of the feature rows of each .npz "
                        "that holds them (None: all)")
    p.add_argument("--bootstrap", type=_int_at_least(0), default=0, metavar="R",
                   help="also the std of FID over R resamples of A's images with replacement (its sample noise)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the --max-images subset and of the KID subsets, from 0 to 2**32 - 1")
    p.add_argument("--kid", action=argparse.BooleanOptionalAction, default=True, help="also compute KID")
    p.add_argument("--kid-subsets", type=_int_at_least(1), default=100, help="KID subsets (random subset pairs)")
    p.add_argument("--kid-subset-size", type=_int_at_least(2), default=None,
                   help="images per side per KID subset, capped at the smaller set (None: min(1000, smaller set // 2), "
                        "at least 2: 1000 as torch-fidelity from 2000 images up, and subsets that vary below)")
    p.add_argument("--weights", default=None, metavar="PATH",
                   help=f"local FID Inception state dict ({WEIGHTS_NAME}) (None: the torch hub cache "
                        f"{hub_weights_path()}, downloaded if missing)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="NHWC layout: ~1.5x faster on a CPU; features differ from pytorch-fid's by float rounding "
                        "(~1e-6 relative, FID ~1e-8 relative); --no-channels-last gives pytorch-fid's bits")
    p.add_argument("--save-stats", default=None, metavar="OUT.npz",
                   help="with A B: also save B's statistics; as `--save-stats DATASET_DIR OUT.npz`: only save")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the result as JSON")
    p.add_argument("--overwrite", action="store_true", help="replace existing --save-stats / --json files")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def run(args):
    device = get_device(args.device)
    common_kw = dict(batch_size=args.batch_size, device=device, num_workers=args.num_workers)
    if args.json:
        check_output(args.json, args.overwrite)
        if args.save_stats and os.path.abspath(args.json) == os.path.abspath(args.save_stats):
            raise UserError(f"--json and --save-stats are the same file {args.json}: give two names")
    for out in (args.json, args.save_stats) if len(args.paths) == 2 else ():
        if out and os.path.abspath(out) in map(os.path.abspath, args.paths):
            raise UserError(f"{out} is an input and an output: give the output another name")

    if args.save_stats is not None and len(args.paths) == 1:
        # `--save-stats DATASET OUT.npz` (pytorch-fid's order) or `DATASET --save-stats OUT.npz`.
        src, out = ((args.paths[0], args.save_stats) if args.save_stats.endswith(".npz")
                    else (args.save_stats, args.paths[0]))
        kind, files = _resolve(src, args.max_images, args.seed)
        if kind != "folder":
            raise UserError(f"--save-stats: {src} is already a statistics file; give an image folder")
        if not out.endswith(".npz"):
            raise UserError(f"--save-stats: the output {out} must end in .npz")
        check_output(out, args.overwrite)
        size_batches(files, args.batch_size)  # unreadable files: now, not after the model is loaded
        model = load_inception(args.weights, device, args.dims, args.channels_last)
        save_stats(out, folder_stats(files, model, quiet=args.quiet, **common_kw), args.overwrite)
        print(f"saved statistics of {len(files)} images of {src} to {out}")
        return
    if len(args.paths) != 2:
        raise UserError(f"give two inputs A B (or --save-stats DATASET_DIR OUT.npz), got {len(args.paths)}")

    result = compute(*args.paths, weights=args.weights, channels_last=args.channels_last, dims=args.dims,
                     max_images=args.max_images, seed=args.seed, with_kid=args.kid, kid_subsets=args.kid_subsets,
                     kid_subset_size=args.kid_subset_size, save_stats_b=args.save_stats, overwrite=args.overwrite,
                     quiet=args.quiet, bootstrap=args.bootstrap, **common_kw)
    print(f"a: {result['a']} ({result['n_a'] if result['n_a'] is not None else '?'} images)")
    print(f"b: {result['b']} ({result['n_b'] if result['n_b'] is not None else '?'} images)")
    print(report(result))
    if args.save_stats:
        print(f"saved statistics of {result['b']} to {args.save_stats}")
    if args.json:
        write_json(args.json, result, args.overwrite)


def main(argv=None):
    """The command line. A UserError ends as one line `error: ...` on stderr and exit status 2, no traceback
    (the project's harness.run_main, repeated here so that this file stands alone)."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"  # one line, no source echo
    try:
        run(build_parser().parse_args(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
