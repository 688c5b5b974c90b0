"""The small training harness of train_wgan.py, train_transfer.py and train_kd.py: what a loop needs besides its
algorithm, as short functions and small classes that the loop calls visibly; none writes a file or installs a
handler unless its name says so. setup (device, seeds, precision, torchrun), open_run (--out and --resume checked
before anything slow), optimize (backward, gradients averaged over processes, Adam step), StepInBackward (the step
inside backward instead), restore and gather_ranks (a checkpoint's parts besides the loop's own), StopFlag
(SIGINT/SIGTERM), Clock, MemoryMeter (peak training memory), and the calls at the end of an epoch: check_finite,
log_epoch, snapshot, save, run_summary.
"""
import argparse
import contextlib
import copy
import json
import math
import os
import random
import re
import signal
import sys
import time
import warnings

import numpy as np
import torch
import torch.distributed as dist

import arch
import data


# ----------------------------------------------------------------------------- errors, warnings, flags

class UserError(Exception):
    """A mistake of the user's (path, flag, checkpoint): one line on stderr and exit status 2 (`run_main`)."""


def run_main(main):
    """Run `main()`: user errors become one line and exit 2, warnings one line each, never a traceback."""
    warnings.showwarning = lambda msg, cat, *a, **k: print(f"warning: {msg}", file=sys.stderr, flush=True)
    try:
        main()
        if dist.is_initialized():
            dist.barrier()  # every process done writing before any tears the group down (gloo aborts otherwise)
    except _user_errors() as e:
        fid = sys.modules.get("compute_fid")
        print(f"error: {'evaluation: ' if fid and isinstance(e, fid.UserError) else ''}{e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        data.unlock_folders()  # --out is free for the next writer (a finished run released it already)
        if dist.is_initialized():
            dist.destroy_process_group()


def _user_errors():
    """The exceptions that are one `error:` line: ours, and compute_fid's once imported (it imports nothing of
    ours, so its UserError is its own; only evaluating runs import it)."""
    fid = sys.modules.get("compute_fid")
    return (UserError, data.DataError, arch.ModelFileError) + ((fid.UserError,) if fid else ())


class ArgumentParser(argparse.ArgumentParser):
    """argparse with every default in --help and a one-line error (exit 2)."""

    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", self.Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _number(kind, test, what):
    def parse(text):
        value = kind(text)
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse's "invalid float value: 'abc'" for text that is no number
    return parse


positive_int = _number(int, lambda v: v > 0, "a positive integer")
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a positive finite number")
nonneg_float = _number(float, lambda v: v >= 0, "a finite number >= 0")
beta = _number(float, lambda v: 0 <= v < 1, "in [0, 1)")
unit_float = _number(float, lambda v: 0 <= v <= 1, "in [0, 1]")
image_size = _number(int, lambda v: 16 <= v <= 1024 and not v & (v - 1), "a power of two from 16 to 1024")
seed_value = _number(int, lambda v: 0 <= v < 2**32, "an integer from 0 to 2**32 - 1 = 4294967295")  # numpy's range


def add_run_args(p, data_default="demo:cats", out_default="runs/wgan", width_default=1.0):
    """The flags every training script shares (hyperparameters stay in each script)."""
    p.add_argument("--data", default=data_default, help="image folder, or demo:cats / demo:dogs (built-in procedural data)")
    p.add_argument("--out", default=out_default, help="run directory: checkpoints, pictures, metrics")
    p.add_argument("--width", type=positive_float, default=width_default, help="channel-width multiplier; 1 = thesis "
                   "architecture" + ("" if width_default else " (None: the teacher's)"))
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (under torchrun: LOCAL_RANK's GPU)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast dtype of the forward passes: auto = bf16 on CUDA with bf16 and on CPUs with native "
                        "bf16 (measured at start), else fp32; fp16 uses loss scaling")
    p.add_argument("--seed", type=seed_value, default=0, help="random seed, 0 to 2**32 - 1 (each process of a "
                   "multi-GPU run derives its own)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue a run: from CKPT, or (flag alone) from <out>/ckpt.pt if it exists, else start fresh")
    p.add_argument("--ema", type=nonneg_float, default=10000, metavar="IMAGES",
                   help="half-life, in generated images (generator updates x global batch), of the moving average of the generator's weights "
                        "(saved in generator.pt, used for samples); 0 = off (the thesis)")
    p.add_argument("--diffaug", default="none", metavar="POLICY",
                   help="DiffAugment (Zhao et al. 2020) of every image the critic/discriminator sees, real and generated: "
                        "a comma-separated list of color, translation, cutout (for small datasets; it slowed learning on "
                        "9,303 cat faces, see README); none = off")
    p.add_argument("--eval-every", type=nonneg_int, default=0, metavar="K",
                   help="every K epochs: FID/KID of --eval-n fixed latents against --eval-ref (needs pytorch-fid); 0 = off")
    p.add_argument("--eval-ref", default=None, metavar="STATS.npz", help="reference statistics (compute_fid.py --save-stats)")
    p.add_argument("--eval-n", type=positive_int, default=500, help="images generated per evaluation")
    p.add_argument("--eval-fast", action="store_true", help="evaluate with a bf16 Inception: faster, FID/KID off by "
                   "~1%% (for curves; final numbers with compute_fid.py)")
    p.add_argument("--eval-raw", action="store_true", help="with --ema: also evaluate the raw generator (twice the time)")
    p.add_argument("--eval-weights", default=None, metavar="PATH", help="FID Inception weights (compute_fid.py --weights)")
    p.add_argument("--sync-bn", action="store_true", help="multi-GPU: BatchNorm statistics of the generator over all processes")
    p.add_argument("--snapshot-every", type=positive_int, default=10, help="render the fixed latent vectors every K epochs")
    p.add_argument("--save-every", type=positive_int, default=10, help="write the checkpoint every K epochs, and at the end")
    p.add_argument("--flip", action="store_true", help="random horizontal flips of the real images")
    p.add_argument("--cache-dir", default=None, help="where decoded datasets are cached (None: $GANOPT_CACHE or ~/.cache/ganopt)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (None: torch's choice)")
    p.add_argument("--step-in-backward", action=argparse.BooleanOptionalAction, default=None,
                   help="run each parameter's Adam update inside backward as soon as its gradient is complete, then free "
                        "that gradient: no gradient buffers (less memory, the same updates); not with fp16. None: on in "
                        "one process at fp32/bf16, off under torchrun (one blocking all_reduce per parameter) and fp16")
    return p


# ----------------------------------------------------------------------------- device, processes, precision

class Env:
    """Where this process runs: device, rank / world size (torchrun), precision."""

    def __init__(self, device, rank=0, world_size=1, precision="fp32"):
        self.device, self.rank, self.world_size, self.precision = device, rank, world_size, precision
        self.master = rank == 0
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def scaler(self):
        """Loss scaling for fp16 (a no-op object otherwise), one per optimizer."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


def get_device(spec="auto"):
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return device


def setup(args):
    """Device, CPU threads, process group (under torchrun), precision; seeds every RNG (per process)."""
    # the loop keeps every iteration's losses of an epoch (its mean, a mid-epoch checkpoint): an absurd
    # --iters-per-epoch is one line now, not an allocator error once the run folder exists
    data.check_memory(16 * args.iters_per_epoch, f"--iters-per-epoch {args.iters_per_epoch:,} (its table of losses)")
    if args.threads:
        torch.set_num_threads(args.threads)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = get_device(args.device)
    if world_size > 1:  # torchrun: one process per GPU (LOCAL_RANK picks it), gloo between CPU processes
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        elif args.sync_bn:  # torch's SyncBatchNorm raises on CPU tensors (checked with torch 2.14)
            raise UserError("--sync-bn needs CUDA: torch's SyncBatchNorm does not run in CPU processes (gloo)")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    args.precision_flag = args.precision  # "auto" follows the checkpoint's choice on --resume (see open_run)
    precision = arch.default_precision(device) if args.precision == "auto" else args.precision
    if precision == "bf16" and device.type == "cpu" and arch.bf16_speedup() < 1:
        warnings.warn("--precision bf16: this CPU has no native bf16 arithmetic (it is emulated, ~10x slower)")
    if precision == "fp16" and device.type == "cpu":
        warnings.warn("--precision fp16 on a CPU is slow; it is meant for GPUs")
    args.precision = precision
    args.step_in_backward_flag = args.step_in_backward  # None follows the precision, also on --resume (open_run)
    args.step_in_backward = auto_step_in_backward(args.step_in_backward, world_size, precision)
    data.diffaug_policy(args.diffaug)  # a bad policy fails now, not after the data is decoded
    if args.eval_every and rank == 0:  # (only rank 0 evaluates)
        check_evaluation(args)
    seed_everything(args.seed, rank)
    return Env(device, rank, world_size, precision)


def auto_step_in_backward(flag, world_size, precision):
    """--step-in-backward as given, or by default where it is exact and measured as fast as the step after
    backward: one process (under torchrun each gradient's all_reduce would block inside backward), not fp16."""
    if flag:
        check_step_in_backward(precision)
    return flag if flag is not None else world_size == 1 and precision != "fp16"


def check_step_in_backward(precision):
    if precision == "fp16":
        raise UserError("--step-in-backward cannot run with --precision fp16: the loss scaler skips a step when any "
                        "gradient overflowed, known only after backward (use bf16 or fp32, or --no-step-in-backward)")


def check_evaluation(args):
    """--eval-every's inputs, before the first epoch rather than at the first evaluation: --eval-ref is a
    statistics file of a feature size the Inception network has, --eval-n gives a covariance, the Inception
    weights are at hand (the hub cache is filled now if it can be; offline, one line now)."""
    if not (args.eval_ref and os.path.isfile(args.eval_ref)):
        raise UserError(f"--eval-every needs --eval-ref STATS.npz (compute_fid.py --save-stats DATASET STATS.npz), got {args.eval_ref}")
    if args.eval_n < 2:
        raise UserError(f"--eval-n {args.eval_n}: FID needs at least 2 images")
    try:
        import compute_fid
    except ImportError as e:
        raise UserError(f"--eval-every needs compute_fid.py (and pytorch-fid) beside the script: {e}") from None
    try:
        dims = len(compute_fid.load_stats(args.eval_ref)["mu"])
        if dims not in compute_fid.DIMS:
            raise compute_fid.UserError(f"--eval-ref {args.eval_ref} holds {dims}-dim statistics; the FID Inception "
                                        f"network gives {', '.join(map(str, compute_fid.DIMS))}")
        if args.eval_weights:
            compute_fid.read_state_dict(args.eval_weights)
        else:
            compute_fid.fetch_hub_weights()
    except compute_fid.UserError as e:
        raise UserError(str(e).replace("--weights", "--eval-weights")) from None


def build(env, kind, **config):
    """`kind(**config)` (an arch model) on env.device, once training it is known to fit in memory: counted first on
    the meta device (no memory, no random draws) at 4 copies of its weights (weights, gradients, Adam's state, an
    EMA), so that an absurd --width or --img-size ends in one line, not in an allocator error or swapping."""
    with torch.device("meta"):
        nbytes = 4 * arch.param_bytes(kind(**config))
    what = f"a {kind.__name__} with {config}"
    if env.device.type == "cuda" and nbytes > torch.cuda.mem_get_info(env.device)[0]:
        raise UserError(f"{what} needs {nbytes / 2**30:,.1f} GiB to train, more than {env.device} has free")
    if env.device.type == "cpu":
        data.check_memory(nbytes, f"training {what}")
    return kind(**config).to(env.device)


def seed_everything(seed, rank=0):
    # every process draws its own latents and noise; rank 0 of any run draws what a 1-process run draws
    seed = seed + 1_000_003 * rank
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state():
    """Every RNG this process draws from, as tensors and plain data (`torch.load(weights_only=True)` reads it)."""
    key, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
             "numpy": {"key": key, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached),
                       "state": torch.from_numpy(keys.astype(np.int64))}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- optimisation

class Adam(torch.optim.Optimizer):
    """Adam (Kingma & Ba) that keeps no first moment when beta1 = 0 -- it then equals the gradient -- so the
    thesis' settings (betas (0, 0.9) and (0, 0.999)) need 4 bytes of state per weight instead of 8. The same
    update as torch.optim.Adam(amsgrad=False, weight_decay=0), to float rounding."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps))

    @torch.no_grad()
    def step(self, params=None):
        """Update every parameter that has a gradient; with `params`, only those (`StepInBackward`: one at a time)."""
        only = None if params is None else {id(p) for p in params}
        for group in self.param_groups:
            (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None or (only is not None and id(p) not in only):
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                    if beta1 > 0:
                        state["exp_avg"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"].item()
                g = p.grad
                state["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1 - beta2)
                m = state["exp_avg"].lerp_(g, 1 - beta1) if beta1 > 0 else g
                denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2 ** t)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1 ** t))


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


def optimize(loss, model, opt, scaler, env):
    """backward, gradients averaged over processes, one optimizer step (loss-scaled under fp16), gradients freed.
    With `opt` a `StepInBackward`, backward alone: it averages, steps and frees each parameter's gradient itself.

    Returns False when fp16 loss scaling skipped the step (the scaled gradients overflowed: by design while the
    scale settles, then the scale halves); a scale that keeps collapsing is a divergence and stops the run."""
    scaler.scale(loss).backward()
    if isinstance(opt, StepInBackward):
        return True
    if env.world_size > 1:
        average_gradients(model, env.world_size)
    scale = scaler.get_scale() if scaler.is_enabled() else None  # fp16 only: reading it waits for the GPU
    scaler.step(opt)
    scaler.update()
    opt.zero_grad(set_to_none=True)  # free the gradients now, not during the other network's steps
    if scale is None:
        return True
    if scaler.get_scale() < 2.0 ** -16:
        raise UserError(f"fp16 loss scale collapsed to {scaler.get_scale():.2g}: the gradients overflow at every "
                        f"step (diverged); use --precision bf16 or fp32, or a lower --lr")
    return scaler.get_scale() >= scale


class StepInBackward:
    """`opt`'s step fused into backward (`--step-in-backward`): each parameter is updated the moment backward has
    completed its gradient, which is freed at once, so gradients never exist for all parameters together. The
    update is `opt.step`'s own, so weights, state and `opt.state_dict()` are those of the step after backward.

    Pass it to `optimize` in place of `opt` (checkpoints keep `opt`). A parameter's hook fires once per backward,
    after the last contribution to its gradient: `autograd.grad(create_graph=True)` (the gradient penalty)
    accumulates into no `.grad`, so the loss's backward alone steps; parameters whose requires_grad is off (the
    critic during the generator step) get no gradient and no step. Under torchrun each gradient is averaged over
    the processes in its hook (every process completes the parameters in the same order: the same graph).
    fp16 is refused: GradScaler skips the whole step when any gradient overflowed, known only once all exist."""

    def __init__(self, opt, env):
        check_step_in_backward(env.precision)
        self.opt, self.world_size = opt, env.world_size
        self.handles = [p.register_post_accumulate_grad_hook(self._step) for g in opt.param_groups for p in g["params"]]

    def _step(self, p):
        if self.world_size > 1:
            dist.all_reduce(p.grad)
            p.grad.div_(self.world_size)
        self.opt.step(params=(p,))  # the optimizer's own update, and its step hooks (the memory meter samples)
        p.grad = None

    def remove(self):
        for handle in self.handles:
            handle.remove()


def logged(stats, stepped):
    """Losses to log: a step that fp16 loss scaling skipped (overflow) logs 0 where its values are not finite."""
    return stats if stepped else torch.nan_to_num(stats, nan=0.0, posinf=0.0, neginf=0.0)


def average_gradients(model, world_size):
    """All-reduce (mean) every trainable parameter's gradient across processes, before the optimizer step.

    Why not DistributedDataParallel: the gradient penalty calls autograd.grad(create_graph=True) inside the
    critic's forward/backward, which DDP's reducer does not support, and DDP silently skips parameters that get
    no gradient in a phase. Here every trainable parameter takes part (zeros where it has no gradient), after
    the one complete backward, so the result is exactly the gradient of the mean loss over the global batch.
    """
    grads = []
    for p in trainable(model):
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    works = [dist.all_reduce(g, async_op=True) for g in grads]
    for work, g in zip(works, grads):
        work.wait()
        g.div_(world_size)


def broadcast_models(models, env):
    """Start every process from rank 0's weights."""
    if env.world_size > 1:
        for model in models:
            for t in list(model.parameters()) + list(model.buffers()):
                dist.broadcast(t.data, 0)


@contextlib.contextmanager
def requires_grad(model, flag):
    """Context: set `requires_grad` of every parameter of `model` to `flag`, then restore each one's own (frozen
    layers stay frozen). The generator's and the student's steps need the critic's gradient w.r.t. the image only."""
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(flag)
    try:
        yield
    finally:
        for p, was in saved:
            p.requires_grad_(was)


class EMA:
    """Exponential moving average of the generator's weights, BatchNorm statistics copied (Karras et al. 2019;
    as in stylegan2-ada: a half-life in images, ramped up over the first images so early averages follow)."""

    def __init__(self, G, half_life_images, rampup=0.05):
        self.model = copy.deepcopy(G).eval().requires_grad_(False)
        self.half_life, self.rampup = half_life_images, rampup
        for e, p in zip(self.model.parameters(), G.parameters()):
            if not p.requires_grad:  # frozen (transfer learning): never changes, so the average shares it
                e.data = p.data

    @torch.no_grad()
    def update(self, G, images_seen, batch_images):
        half_life = min(self.half_life, images_seen * self.rampup)
        beta = 0.5 ** (batch_images / max(half_life, 1e-8))
        for e, p in zip(self.model.parameters(), G.parameters()):
            if p.requires_grad:
                e.lerp_(p, 1 - beta)
        for e, b in zip(self.model.buffers(), G.buffers()):
            e.copy_(b)


# ----------------------------------------------------------------------------- files

def atomic_write(path, write):
    """Write through `write(tmp)` to a temp file beside `path`, then rename: never half a file; any failure to
    write (disk full, read-only, too large) is one line naming the file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    except RuntimeError as e:  # torch.save's zip writer reports a full disk as "enforce fail ... unexpected pos"
        raise UserError(f"cannot write {path}: disk full or file too large ({str(e).splitlines()[0][:80]})") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(obj, path):
    """torch.save, atomically (see atomic_write)."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def remove_stale_temp_files(folder):
    """Temp files left by writers that were killed (`*.tmp<PID>` whose process is gone)."""
    for parent, _, names in os.walk(folder):
        for name in names:
            match = re.fullmatch(r".+\.tmp(\d+)", name)
            if match and not _alive(int(match.group(1))):
                os.remove(os.path.join(parent, name))


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def write_json(path, obj):
    atomic_write(path, lambda tmp: open(tmp, "w").write(json.dumps(obj, indent=2) + "\n"))


def check_writable(folder):
    """--out must be (or be creatable in) a writable folder: checked before any data or model is loaded."""
    if not folder.strip():
        raise UserError("--out is empty: give the run a folder")
    existing = folder
    while not os.path.exists(existing or "."):
        existing = os.path.dirname(existing)
    existing = existing or "."
    if not os.path.isdir(existing):
        raise UserError(f"--out {folder}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {folder}: {existing} is not writable")


def check_out_of_data(out, spec):
    """--out must not lie inside an image folder --data: the folder is read recursively, so the run's snapshots
    would become training images of its next start or resume."""
    if spec.startswith("demo:") or not os.path.isdir(spec):
        return
    folder = os.path.realpath(spec)
    if os.path.commonpath([folder, os.path.realpath(out)]) == folder:
        raise UserError(f"--out {out} lies inside --data {spec}, which is read with its subfolders: the run's "
                        "snapshots would become training images; choose an --out outside it")


CHECKPOINT_FORMAT = arch.CHECKPOINT_FORMAT


def lock_out(out, env):
    """One writer per run folder: data.lock_folder by rank 0, which writes (released by write_summary or run_main).
    Under torchrun every process learns whether rank 0 got it, so that none waits for a rank 0 that stopped."""
    refused = None
    if env.master:
        try:
            data.lock_folder(out)
        except data.DataError as e:
            refused = e
    if env.world_size > 1:
        flag = torch.tensor(float(refused is not None), device=env.device)
        dist.broadcast(flag, 0)
        if flag.item() and refused is None:
            raise UserError(f"{out}: rank 0 could not lock it (see its error)")
    if refused is not None:
        raise refused


def open_run(args, script, env):
    """Check --out and --resume before anything slow: the loaded checkpoint to resume, or None to start fresh."""
    out, ckpt_path = args.out, os.path.join(args.out, "ckpt.pt")
    check_out_of_data(out, args.data)
    check_writable(out)
    lock_out(out, env)
    if env.master:
        remove_stale_temp_files(out)
    has_run = os.path.isfile(ckpt_path) or os.path.isfile(os.path.join(out, "metrics.jsonl"))
    if args.resume is None:
        if has_run:
            raise UserError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
        return None
    path = args.resume if args.resume != "auto" else (ckpt_path if os.path.isfile(ckpt_path) else None)
    if path is None:
        if os.path.isfile(os.path.join(out, "generator.pt")):  # written after a ckpt.pt only: that one was removed
            raise UserError(f"{out} holds a run's generator.pt but no ckpt.pt to continue from: --resume would train "
                            "afresh over it; choose another --out, or remove the folder to retrain")
        return None
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    if not os.path.isfile(path):
        raise UserError(f"--resume {args.resume}: no such checkpoint")
    if has_run and not os.path.samefile(os.path.dirname(os.path.abspath(path)), out):
        raise UserError(f"--resume {path} belongs to another run, and {out} holds a run of its own: "
                        f"resume into an empty --out, or into {os.path.dirname(path) or '.'}")
    ckpt = arch.read_file(path, "cpu")
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a training checkpoint of this toolkit")
    if ckpt.get("script") != script:
        raise UserError(f"{path} was written by {ckpt.get('script')}, not {script}")
    follow_checkpoint_precision(args, env, ckpt["args"])
    notes = check_resume_flags(args, ckpt["args"], path)
    check_resume_epochs(ckpt, args, path, into=None if has_run else out)
    for note in notes if env.master else ():  # once nothing refuses the resume
        print(note, flush=True)
    ckpt["path"] = path
    return ckpt


def follow_checkpoint_precision(args, env, saved):
    """--precision auto resumes at the precision the run had (--step-in-backward's default follows it)."""
    if args.precision_flag == "auto" and saved.get("precision", env.precision) != env.precision:
        env.__init__(env.device, env.rank, env.world_size, saved["precision"])
        args.precision = env.precision
        args.step_in_backward = auto_step_in_backward(args.step_in_backward_flag, env.world_size, env.precision)


def check_resume_epochs(ckpt, args, path, into=None):
    """The checkpoint has epochs left to train with --epochs and --iters-per-epoch; `into`: a new --out, where a
    finished checkpoint would only copy itself."""
    if ckpt["epoch"] > args.epochs:
        raise UserError(f"{path} has trained {ckpt['epoch']} epochs already, more than --epochs {args.epochs}: "
                        f"pass --epochs {ckpt['epoch']} or more")
    if ckpt["iteration"] and ckpt["args"]["iters_per_epoch"] != args.iters_per_epoch:
        raise UserError(f"{path} was stopped in the middle of an epoch of {ckpt['args']['iters_per_epoch']} iterations: "
                        f"resume with --iters-per-epoch {ckpt['args']['iters_per_epoch']} (change it after that epoch)")
    if into and ckpt["epoch"] == args.epochs and not ckpt["iteration"]:
        raise UserError(f"{path} has trained all {args.epochs} epochs already: nothing to train into {into} "
                        f"(pass more --epochs to continue it there)")


# flags a resumed run cannot follow, and why: the checkpoint's models, optimizer state and random streams are
# built on them (any other flag that differs from the checkpoint's is applied from there on, with a note)
_SHAPE, _TRAINED, _START = "the models' shape", "which weights train (the optimizer's state)", \
    "the starting weights, which come from the checkpoint"
FIXED_ON_RESUME = {"width": _SHAPE, "img_size": _SHAPE, "nz": _SHAPE, "freeze_g": _TRAINED, "freeze_d": _TRAINED,
                   "freeze_g_from": _TRAINED, "init": _START, "init_d": _START, "init_g": _START,
                   "seed": "the random streams, which continue from the checkpoint"}
_NOT_NOTED = ("out", "resume", "precision_flag", "step_in_backward_flag", "epochs")  # (--epochs counts in all: more of them is how to extend)


def _shown(value):
    """A flag's value as typed: lists space-separated, True/False/None as on/off/none."""
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return {True: "on", False: "off", None: "none"}[value] if isinstance(value, bool) or value is None else str(value)


def check_resume_flags(args, saved, path):
    """Each flag that differs from the checkpoint's `saved` flags: refused in one line (FIXED_ON_RESUME, or Adam's
    beta1 from 0, whose first moment was never kept), or applied from now on: the notes that say so, one line each."""
    flag = lambda key: "--" + key.replace("_", "-")
    changed = [k for k, v in vars(args).items() if k in saved and k not in _NOT_NOTED and _shown(v) != _shown(saved[k])]
    for key in changed:
        if key in FIXED_ON_RESUME or (key == "betas" and saved[key][0] == 0 and args.betas[0] > 0):
            why = FIXED_ON_RESUME.get(key, "Adam's first moment, never kept at beta1 = 0")
            raise UserError(f"{flag(key)} {_shown(getattr(args, key))} differs from {path}'s {_shown(saved[key])}: a "
                            f"resumed run cannot change {why}; resume with {flag(key)} {_shown(saved[key])}, or start "
                            f"a new run in another --out")
    extra = lambda key: " (the fp16 loss scale starts afresh)" if key == "precision" and args.precision == "fp16" else ""
    return [f"note: {flag(key)} {_shown(getattr(args, key))} (checkpoint: {_shown(saved[key])}) applied{extra(key)}"
            for key in changed]


# ----------------------------------------------------------------------------- pictures

def save_grid(images, path, nrow):
    from PIL import Image
    import torchvision.utils as vutils
    images = ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)  # correct rounding
    grid = vutils.make_grid(images.cpu(), nrow=nrow, padding=2, pad_value=255)
    atomic_write(path, lambda tmp: Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG"))


def write_timeline(folder, path, max_rows=16):
    """Stack the snapshot rows (at most `max_rows`, evenly spread, always the last) into one PNG."""
    from PIL import Image
    files = sorted(f for f in os.listdir(folder) if f.startswith("epoch_") and f.endswith(".png"))
    if len(files) > max_rows:
        files = [files[i] for i in sorted({round(i * (len(files) - 1) / (max_rows - 1)) for i in range(max_rows)})]
    rows = [Image.open(os.path.join(folder, f)).convert("RGB") for f in files]
    sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    for i, r in enumerate(rows):
        sheet.paste(r, (0, sum(x.height for x in rows[:i])))
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


# ----------------------------------------------------------------------------- memory

class MemoryMeter:
    """Peak training memory, two ways.

    device: on CUDA `torch.cuda.max_memory_allocated`; on CPU the process' peak resident set size (VmHWM, reset
        at `start()`), which includes the interpreter and allocator slack, too coarse to compare methods; hence
    tensors: a device-independent count of what training holds: parameters and buffers, optimizer state (read
        around every optimizer step), gradients (read whenever the sum can grow: as backward completes each one,
        and at every saved activation) and the activations autograd saved for backward (counted live through
        saved_tensors_hooks, each storage once). Transient workspace is not counted.
    The hooks cost time, and the peak repeats every iteration once the optimizer state exists, so they watch only
    the first `watch_iterations` iterations after each start; `hooks()` is a no-op after that.
    """

    def __init__(self, device, models, optimizers, watch_iterations=3):
        self.device, self.models, self.optimizers = torch.device(device), list(models), list(optimizers)
        self.watch_iterations, self.left, self.live, self.live_bytes = watch_iterations, 0, {}, 0
        self.peak_bytes, self.peak_parts, self._param_keys = 0, {}, set()
        self.static = {"params": 0, "optimizer": 0}
        self.window_device_peak = None
        self.params = list({id(p): p for m in self.models for p in m.parameters()}.values())
        for opt in self.optimizers:  # gradients and optimizer state both exist just before and after a step
            opt.register_step_pre_hook(lambda *a: self.sample())
            opt.register_step_post_hook(lambda *a: self.sample())

    def start(self):
        self.left, self.window_device_peak = self.watch_iterations, None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
            except OSError:
                pass
        self.sample(force=True)

    def sample(self, force=False):
        if not (force or self.left > 0):
            return
        seen, parts = set(), {"params": 0, "optimizer": 0}
        for m in self.models:
            for t in list(m.parameters()) + list(m.buffers()):
                key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
                if key not in seen:
                    seen.add(key)
                    parts["params"] += key[1]
        parts["optimizer"] = sum(v.untyped_storage().nbytes() for o in self.optimizers for s in o.state.values()
                                 for v in s.values() if isinstance(v, torch.Tensor) and v.numel() > 1)
        self._param_keys, self.static = seen, parts
        self._update_peak()

    def _update_peak(self, *_):
        grads = sum(p.grad.untyped_storage().nbytes() for p in self.params if p.grad is not None)
        total = sum(self.static.values()) + grads + self.live_bytes
        if total > self.peak_bytes:
            self.peak_bytes = total
            self.peak_parts = {"params": self.static["params"], "grads": grads,
                               "optimizer": self.static["optimizer"], "activations": self.live_bytes}

    def _pack(self, t):
        key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        if key in self._param_keys or key[1] == 0:
            return t  # a parameter saved for backward is counted already
        entry = self.live.setdefault(key, [0, key[1]])
        if entry[0] == 0:
            self.live_bytes += key[1]
            self._update_peak()
        entry[0] += 1
        return _Saved(t, self, key)

    def _release(self, key):
        entry = self.live.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                del self.live[key]
                self.live_bytes -= entry[1]

    @contextlib.contextmanager
    def hooks(self):
        """Context around one training iteration: counts saved activations while still watching."""
        if self.left <= 0:
            yield
            return
        # gradients grow during backward while activations are freed: look as each one completes
        handles = [p.register_post_accumulate_grad_hook(self._update_peak) for p in self.params if p.requires_grad]
        try:
            with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda s: s.tensor if isinstance(s, _Saved) else s):
                yield
        finally:
            for handle in handles:
                handle.remove()
        self.left -= 1  # after the iteration: its optimizer steps were sampled too
        if self.left == 0:  # the device peak of training alone: evaluations come later and are not counted
            self.window_device_peak = self.device_peak_bytes()

    def device_peak_bytes(self):
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        try:
            with open("/proc/self/status") as f:
                return next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmHWM:"))
        except (OSError, StopIteration):
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def report(self):
        mb = 2 ** 20
        device_peak = self.window_device_peak or self.device_peak_bytes()
        return {"peak_mem_mb": round(device_peak / mb, 1),
                "peak_mem_kind": "cuda_max_memory_allocated" if self.device.type == "cuda" else "process_peak_rss",
                "peak_tensor_mb": round(self.peak_bytes / mb, 1),
                "peak_tensor_parts_mb": {k: round(v / mb, 1) for k, v in self.peak_parts.items()}}


class _Saved:
    """What autograd holds instead of a saved tensor; its death tells the meter the bytes are free."""
    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor, meter, key):
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self):
        self.meter._release(self.key)


# ----------------------------------------------------------------------------- resume

def model_state(model):
    """A model's entry in a checkpoint: its architecture and its weights."""
    return {"config": dict(model.config), "state_dict": model.state_dict()}


def gather_ranks(batches, env):
    """Every process' RNG states and batch order, for the checkpoint (every process calls it, rank 0 saves it)."""
    ranks = [{"rng": rng_state(), "batches": batches.state_dict()}] * env.world_size
    if env.world_size > 1:
        dist.all_gather_object(ranks, ranks[0])
    return ranks


def restore(ckpt, trained, ema, batches, env, seed):
    """Where the loop starts: with `open_run`'s checkpoint, load it into `trained` ({"G": G, "D": D, "opt_g": ...,
    "scaler_d": ...}, each from its key), the EMA, the batch order and every RNG and return its position; with
    None, the position of a fresh run. The flags' learning rates and betas win over the checkpoint's (a resume may
    lower --lr; see check_resume_flags); a loss scale is loaded only into an fp16 run from an fp16 run (else it
    starts afresh). A resumed run ends bitwise equal to an uninterrupted one on the same device."""
    position = dict(epoch=0, iteration=0, step=0, images=0, train_sec=0.0, losses=None, memory=None)
    if ckpt is None:
        return position
    for key, obj in trained.items():
        if isinstance(obj, torch.nn.Module):
            if ckpt[key]["config"] != obj.config:
                raise UserError(f"{ckpt['path']}: its {key} is {ckpt[key]['config']}, but the flags give {obj.config}")
            obj.load_state_dict(ckpt[key]["state_dict"])
        elif isinstance(obj, torch.optim.Optimizer):
            flags = [(g["lr"], g["betas"]) for g in obj.param_groups]
            obj.load_state_dict(ckpt[key])
            for g, (lr, betas) in zip(obj.param_groups, flags):
                g["lr"], g["betas"] = lr, betas
        elif obj.is_enabled() and ckpt.get(key):  # a loss scaler: a disabled one (bf16, fp32) saved an empty state
            obj.load_state_dict(ckpt[key])
    if ema:
        ema.model.load_state_dict(ckpt["G_ema"]["state_dict"] if "G_ema" in ckpt else trained["G"].state_dict())
    ranks = ckpt["ranks"]
    mine = ranks[env.rank] if len(ranks) == env.world_size else None
    batches.load_state_dict((mine or ranks[0])["batches"])
    if mine:
        set_rng_state(mine["rng"])
    else:  # another number of processes wrote it: same epoch and step, new draws (the order differs)
        seed_everything(seed + ckpt["step"], env.rank)
        print(f"note: {ckpt['path']} was written by {len(ranks)} process(es), this run has "
              f"{env.world_size}: the batch order and latents from here differ", flush=True)
    print(f"resumed {ckpt['path']} at epoch {ckpt['epoch']} + {ckpt['iteration']} iterations (step {ckpt['step']})", flush=True)
    position = {k: ckpt.get(k, v) for k, v in position.items()}
    ckpt.clear()  # the weights live in the models now: drop the loaded copies
    return position


# ----------------------------------------------------------------------------- the loop's schedule

class StopFlag:
    """Set by SIGINT / SIGTERM once `catch()` installed it: the loop then finishes its step, checkpoints and exits
    with 128 + the signal's number. A second signal exits at once, without a checkpoint."""

    def __init__(self):
        self.signum = None

    def catch(self, signums=(signal.SIGINT, signal.SIGTERM)):
        for signum in signums:
            signal.signal(signum, self._set)
        return self

    def _set(self, signum, frame):
        name = signal.Signals(signum).name
        if self.signum is not None:
            print(f"\n{name} again: exiting without a checkpoint", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum
        print(f"\n{name}: finishing the step, then checkpointing (again to exit at once)", file=sys.stderr, flush=True)

    def requested(self, env):
        """Whether any process got a signal: every process stops at the same iteration."""
        if env.world_size == 1:
            return self.signum is not None
        flag = torch.tensor(float(self.signum is not None), device=env.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag)

    def exit(self, epoch, iteration, step, out):
        print(f"stopped at epoch {epoch}, iteration {iteration} (step {step}); checkpoint {out}/ckpt.pt: "
              f"continue with the same command plus --resume", file=sys.stderr, flush=True)
        raise SystemExit(128 + (self.signum or signal.SIGTERM))


class Clock:
    """Seconds of training per epoch, from `start()` to `lap()` (evaluations, pictures and checkpoints between
    epochs left out), their total over the run (`train_sec`, carried across --resume) and the time left."""

    def __init__(self, device, train_sec=0.0):
        self.device, self.train_sec, self.secs = device, train_sec, []
        self.start()

    def start(self):
        self.t0 = time.time()

    def lap(self):
        if self.device.type == "cuda":  # the work queued on the GPU belongs to this epoch
            torch.cuda.synchronize(self.device)
        self.secs.append(time.time() - self.t0)
        self.train_sec += self.secs[-1]
        return self.secs[-1]

    def eta(self, epochs_left):
        """Seconds per epoch so far (this one with its evaluation) times the epochs left."""
        return (time.time() - self.t0 + sum(self.secs[:-1])) / len(self.secs) * epochs_left


def mean_over_processes(losses, env):
    """The loss table averaged over processes, in place (every process calls it)."""
    if env.world_size > 1:
        dist.all_reduce(losses)
        losses /= env.world_size
    return losses


def check_finite(losses, epoch, step, out):
    """A non-finite loss stops the run with one line naming its first step (the last checkpoint is kept)."""
    bad = ~torch.isfinite(losses).all(dim=1)
    if bad.any():
        it = int(bad.nonzero()[0])
        first_step = step - len(losses) + it + 1
        ckpt = os.path.join(out, "ckpt.pt")
        kept = f"the last good checkpoint {ckpt} is kept" if os.path.isfile(ckpt) else "no checkpoint was written yet"
        raise UserError(f"non-finite loss at epoch {epoch}, step {first_step} (losses {losses[it].tolist()}): "
                        f"training stopped; {kept} (lower --lr, or try --precision fp32)")


def log_epoch(record, out, epochs, eta):
    """The epoch's line in metrics.jsonl (a resumed run drops lines written after its checkpoint) and on stdout;
    quality.png redrawn when the record has a FID."""
    path = os.path.join(out, "metrics.jsonl")
    lines = [ln for ln, r in read_metrics(path) if r["epoch"] < record["epoch"]]
    atomic_write(path, lambda tmp: open(tmp, "w").writelines(lines + [json.dumps(record) + "\n"]))
    fields = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k not in
                      ("epoch", "step", "sec", "train_sec", "images", "peak_mem_mb", "peak_tensor_mb", "kid_std"))
    print(f"epoch {record['epoch']}/{epochs} | step {record['step']} | {fields} | {record['sec']:.2f} s/epoch"
          f" | eta {format_duration(eta)} | peak {record['peak_mem_mb']:.0f} MB", flush=True)
    if "fid" in record:
        try:
            import report  # torch-free figures; only runs that evaluate need it
            report.quality_figure({os.path.basename(os.path.abspath(out)): report.read_metrics(path)},
                                  os.path.join(out, "quality.png"))
        except Exception as e:  # a figure must never stop training
            warnings.warn(f"quality.png not written: {e}")


def read_metrics(path):
    """(line, record) of each epoch in a run's metrics.jsonl ([] without one). A line that is not an epoch's
    record (the file was cut short or edited by hand) is left out with one warning: a resumed run goes on, and
    its next log_epoch writes the file without it."""
    if not os.path.isfile(path):
        return []
    with open(path, errors="replace") as f:
        lines = [ln if ln.endswith("\n") else ln + "\n" for ln in f if ln.strip()]
    kept = []
    for ln in lines:
        try:
            record = json.loads(ln)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            kept.append((ln, record))
    if len(kept) < len(lines):
        warnings.warn(f"{path}: {len(lines) - len(kept)} unreadable line(s) left out")
    return kept


def drop_dead_run(out, done):
    """What a killed run left after the checkpoint this run starts from (`done`, from restore): its snapshots
    (all on a fresh start, with its metrics.jsonl and quality.png), so that the timeline shows only this run's
    epochs (the dead run may have gone further than this one will)."""
    fresh, folder = done["step"] == 0, os.path.join(out, "snapshots")
    for name in ("metrics.jsonl", "quality.png") if fresh else ():
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    later = [f for f in (os.listdir(folder) if os.path.isdir(folder) else ())
             if re.fullmatch(r"epoch_(\d+)\.png", f) and (fresh or int(f[6:-4]) > done["epoch"])]
    for f in later:
        os.remove(os.path.join(folder, f))
    if later and not fresh and any(f.startswith("epoch_") for f in os.listdir(folder)):
        write_timeline(folder, os.path.join(out, "timeline.png"))


def snapshot(G, z, out, epoch):
    """G's images of the fixed latents `z`, in eval mode, as snapshots/epoch_NNNNNN.png; timeline.png restacked."""
    was_training = G.training
    with torch.no_grad():
        images = G.eval()(z)
    G.train(was_training)
    folder = os.path.join(out, "snapshots")
    save_grid(images, os.path.join(folder, f"epoch_{epoch:06d}.png"), nrow=len(images))
    write_timeline(folder, os.path.join(out, "timeline.png"))


def run_summary(args, script, env, step, G, ema, clock, meter, resumed_memory=None):
    """What summary.json holds besides the script's own fields: speed and memory (the worst process'), sizes.
    Every process calls it."""
    report = meter.report()
    sec = median(clock.secs[1:] or clock.secs)
    if env.world_size > 1:
        worst = torch.tensor([sec if clock.secs else 0.0, report["peak_mem_mb"], report["peak_tensor_mb"]], device=env.device)
        dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        sec, report["peak_mem_mb"], report["peak_tensor_mb"] = worst.tolist()
    summary = {"script": script, "args": vars(args), "epochs": args.epochs, "steps": step,
               "device": str(env.device), "world_size": env.world_size, "precision": env.precision,
               "global_batch": args.batch_size * env.world_size, "torch": torch.__version__,
               "sec_per_epoch": round(sec, 4) if clock.secs else None, "train_sec": round(clock.train_sec, 2),
               "generator_mb": round(arch.param_bytes(G) / 2**20, 1), "ema": bool(ema), **report}
    if not clock.secs and resumed_memory:
        summary.update(resumed_memory)  # nothing trained in this process: keep the run's figures
    return summary


def write_summary(out, summary):
    """summary.json, with the last line of metrics.jsonl as its "final" entry; the run folder's lock released."""
    # (none where a finished run is resumed into its own folder after metrics.jsonl was lost)
    records = [r for _, r in read_metrics(os.path.join(out, "metrics.jsonl"))]
    if records:
        summary["final"] = {k: v for k, v in records[-1].items() if k not in ("epoch", "step")}
    write_json(os.path.join(out, "summary.json"), summary)
    data.unlock_folders()  # the run folder is complete
    print(f"done: {out}/summary.json, {out}/generator.pt, pictures in {out}/timeline.png", flush=True)


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def median(values):
    values = sorted(values)
    n = len(values)
    return float("nan") if n == 0 else (values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2]))
