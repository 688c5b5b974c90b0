"""Shared plumbing for every script: errors and flags, device and seeding, checkpoints, metrics, snapshots, memory.

Everything a training script needs besides its algorithm lives here, once:
- `UserError` + `run_main`: user mistakes end in one line on stderr and exit status 2, never a traceback.
- `ArgumentParser` / `add_run_args`: the flags every script shares (`--data --out --batch-size --epochs
  --device --seed --resume ...`), with a parser whose errors are one line too.
- `get_device`, `seed_everything`, `rng_state` / `set_rng_state`.
- `save_checkpoint` (atomic: temp file + rename) / `load_checkpoint` (`weights_only=True`), `save_generator`
  / `load_generator` (a generator file, a full checkpoint, or a raw thesis state_dict).
- `RunLog`: the console line per epoch, `<out>/metrics.jsonl`, `<out>/summary.json`.
- `Snapshots`: six fixed latent vectors rendered to a grid PNG every K epochs, and one timeline PNG.
- `MemoryMeter`: peak training memory, by the device (CUDA allocator peak / process peak RSS) and as a
  device-independent count of parameter, gradient, optimizer-state and saved-activation bytes.
"""
import argparse
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch

import arch


# ----------------------------------------------------------------------------- errors and flags

class UserError(Exception):
    """An error the user caused (bad path, bad flag value, wrong checkpoint).

    Scripts raise it anywhere; `run_main` turns it into one line on stderr and exit status 2.
    """


def run_main(main):
    """Run `main()`; a UserError becomes one clear line and a non-zero exit, never a traceback."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (`prog: error: ...`, exit 2) and defaults shown in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonneg_int(text):
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def positive_float(text):
    value = float(text)
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def image_size(text):
    value = int(text)
    if value < 16 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two >= 16 (32, 64, 128, 256), got {text}")
    return value


def add_run_args(p, *, data, out, batch_size, epochs, lr, betas, iters_per_epoch, img_size=128, width=1.0):
    """The flags every training script shares, with that script's defaults."""
    p.add_argument("--data", default=data, help="image folder, or demo:cats / demo:dogs (built-in procedural data) (default: %(default)s)")
    p.add_argument("--out", default=out, help="run directory: checkpoints, pictures, metrics (default: %(default)s)")
    p.add_argument("--img-size", type=image_size, default=img_size,
                   help="image size (default: %(default)s)" if img_size else "image size (default: the teacher's)")
    p.add_argument("--width", type=positive_float, default=width, help="channel-width multiplier; 1 = thesis architecture (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help="(default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=epochs, help="(default: %(default)s)")
    p.add_argument("--iters-per-epoch", type=positive_int, default=iters_per_epoch, help="generator updates per epoch (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=lr, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--betas", type=float, nargs=2, default=betas, metavar=("B1", "B2"), help="Adam betas (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--snapshot-every", type=positive_int, default=10, help="render the fixed latent vectors every K epochs (default: %(default)s)")
    p.add_argument("--save-every", type=positive_int, default=10, help="write the checkpoint every K epochs, and at the end (default: %(default)s)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                   help="continue a run: from CKPT, or (flag alone) from <out>/ckpt.pt if it exists, else start fresh")
    p.add_argument("--flip", action="store_true", help="random horizontal flips of the real images")
    p.add_argument("--cache-dir", default=None, help="where decoded datasets are cached (default: $GANOPT_CACHE or ~/.cache/ganopt)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    return p


# ----------------------------------------------------------------------------- device and randomness

def get_device(spec="auto"):
    """'auto' -> cuda if available else cpu; 'cuda[:N]' must exist; anything else is a user error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available on this machine (use --device cpu)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise UserError(f"--device must be auto, cpu, cuda or cuda:N, got {spec!r}")
    return device


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # seeds every CUDA device too


def rng_state():
    """Every RNG a run draws from, as plain tensors/ints/lists so `torch.load(weights_only=True)` reads it."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": np_state[0], "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                  "cached_gaussian": float(np_state[4]), "state": torch.from_numpy(np_state[1].astype(np.int64))},
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
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


# ----------------------------------------------------------------------------- files

def atomic_write(path, write):
    """Write through `write(tmp_path)` to a temp file beside `path`, then rename: a crash never leaves half a file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    atomic_write(path, write)


def save_checkpoint(path, checkpoint):
    atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))


def load_checkpoint(path, device="cpu"):
    """torch.load with weights_only=True (a checkpoint cannot run code); any failure is one clear line."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # truncated, not a torch file, or holds objects weights_only refuses
        text = str(e).strip()
        if text.startswith("Weights only load failed"):
            reason = "not a PyTorch file, or it holds objects other than tensors and plain data (refused for safety)"
        else:
            reason = text.splitlines()[0] if text else type(e).__name__
        raise UserError(f"cannot read checkpoint {path}: {reason}") from None


GENERATOR_FORMAT = "ganopt-generator/1"
CHECKPOINT_FORMAT = "ganopt-checkpoint/1"


def save_generator(path, model, **extra):
    """A generator-only file: {'format', 'config', 'state_dict', ...} -- what createsamples.py and KD load."""
    save_checkpoint(path, {"format": GENERATOR_FORMAT, "config": dict(model.config),
                           "state_dict": model.state_dict(), **extra})


def load_model(path, kinds=("Generator", "GeneratorKD"), key="G", device="cpu"):
    """Build a model from a generator file, a full training checkpoint (its `key` entry) or a raw state_dict.

    The architecture comes from the stored config, else it is inferred from the state_dict's keys and shapes
    (a thesis-style file). Returns (model, config). The model's kind must be one of `kinds`.
    """
    return model_from(load_checkpoint(path, device), path, kinds, key, device)


def model_from(obj, path, kinds=("Generator", "GeneratorKD"), key="G", device="cpu"):
    """`load_model` for an object already loaded from `path` (to read two models from one checkpoint)."""
    if isinstance(obj, dict) and obj.get("format") == GENERATOR_FORMAT:
        config, state = obj["config"], obj["state_dict"]
    elif isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        if key not in obj:
            raise UserError(f"{path} is a training checkpoint without a {key!r} model")
        config, state = obj[key]["config"], obj[key]["state_dict"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        try:
            config = arch.infer_config(obj)
        except (ValueError, KeyError, IndexError) as e:
            raise UserError(f"cannot tell the architecture of {path}: {e}") from None
        state = obj
    else:
        raise UserError(f"{path} is not a generator file, a training checkpoint or a state_dict")
    if config.get("kind") not in kinds:
        raise UserError(f"{path} holds a {config.get('kind')}, expected {' or '.join(kinds)}")
    try:
        model = arch.build(config)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{path} does not match its architecture {config}: {str(e).splitlines()[0]}") from None
    return model.to(device), config


# ----------------------------------------------------------------------------- output directory

def prepare_out_dir(out, resume):
    """Make the run directory; refuse to run over an earlier run's results unless resuming it.

    Returns the checkpoint path to resume from, or None to start fresh.
    """
    ckpt = os.path.join(out, "ckpt.pt")
    if resume not in (None, "auto"):
        if not os.path.isfile(resume):
            raise UserError(f"--resume {resume}: no such checkpoint")
        os.makedirs(out, exist_ok=True)
        return resume
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} exists and is not a directory")
    if resume == "auto":
        os.makedirs(out, exist_ok=True)
        return ckpt if os.path.isfile(ckpt) else None
    if os.path.isfile(ckpt) or os.path.isfile(os.path.join(out, "metrics.jsonl")):
        raise UserError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    os.makedirs(out, exist_ok=True)
    return None


def open_run(args, script, device):
    """Check --out and --resume before anything slow: returns the checkpoint to resume (loaded) or None.

    Called first thing by every training script, so a wrong directory or checkpoint fails in one line before
    a dataset is decoded or a model built.
    """
    path = prepare_out_dir(args.out, args.resume)
    if path is None:
        return None
    ckpt = load_checkpoint(path, device)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a training checkpoint of this toolkit")
    if ckpt.get("script") != script:
        raise UserError(f"{path} was written by {ckpt.get('script')}, not {script}")
    ckpt["path"] = path
    return ckpt


# ----------------------------------------------------------------------------- metrics

class RunLog:
    """The console line per epoch, `<out>/metrics.jsonl` (one JSON object per epoch) and `summary.json`."""

    def __init__(self, out, total_epochs, start_epoch=0):
        self.path = os.path.join(out, "metrics.jsonl")
        self.summary_path = os.path.join(out, "summary.json")
        self.total_epochs = total_epochs
        self.start_epoch = start_epoch
        self.t0 = time.time()
        # A resumed run drops the lines written after its checkpoint, so every epoch appears once.
        if os.path.isfile(self.path):
            with open(self.path) as f:
                lines = [ln for ln in f if ln.strip() and json.loads(ln)["epoch"] <= start_epoch]
            with open(self.path, "w") as f:
                f.writelines(lines)

    def epoch(self, record, console_fields):
        """Append `record` to metrics.jsonl and print one line: the given fields, sec/epoch, ETA, memory."""
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        done = record["epoch"] - self.start_epoch
        eta = (time.time() - self.t0) / max(done, 1) * (self.total_epochs - record["epoch"])
        fields = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in console_fields.items())
        print(f"epoch {record['epoch']}/{self.total_epochs} | {fields} | {record['sec']:.2f} s/epoch"
              f" | eta {format_duration(eta)} | peak {record['peak_mem_mb']:.0f} MB", flush=True)

    def read(self):
        with open(self.path) as f:
            return [json.loads(ln) for ln in f if ln.strip()]

    def write_summary(self, summary):
        write_json(self.summary_path, summary)


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def median(values):
    values = sorted(values)
    n = len(values)
    return float("nan") if n == 0 else (values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2]))


# ----------------------------------------------------------------------------- pictures

def to_uint8(images):
    """[-1, 1] floats -> uint8 with correct rounding ((x + 1) * 127.5, rounded, clamped), as saved PNGs hold."""
    return ((images.detach().float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def save_grid(images, path, nrow):
    """Save a [-1, 1] batch as one PNG grid (2 px padding)."""
    from PIL import Image
    import torchvision.utils as vutils
    grid = vutils.make_grid(to_uint8(images).cpu(), nrow=nrow, padding=2, pad_value=255)
    atomic_write(path, lambda tmp: Image.fromarray(grid.permute(1, 2, 0).numpy()).save(tmp, format="PNG"))


class Snapshots:
    """Six fixed latent vectors (thesis 2.4) rendered every K epochs; the rows stack into one timeline PNG.

    The vectors are drawn once from their own seed, saved with the run (`fixed_z.pt`) and in the checkpoint,
    so every snapshot of a run -- and of a resumed run -- shows the same six faces.
    """

    def __init__(self, out, nz, device, seed=1234, count=6):
        self.dir = os.path.join(out, "snapshots")
        self.timeline_path = os.path.join(out, "timeline.png")
        os.makedirs(self.dir, exist_ok=True)
        z_path = os.path.join(out, "fixed_z.pt")
        if os.path.isfile(z_path):
            self.z = torch.load(z_path, weights_only=True)
        else:
            self.z = torch.randn(count, nz, 1, 1, generator=torch.Generator().manual_seed(seed))
            atomic_write(z_path, lambda tmp: torch.save(self.z, tmp))
        self.device = device

    @torch.no_grad()
    def render(self, G, epoch):
        # eval mode: the BatchNorm running statistics, as createsamples.py uses by default
        was_training = G.training
        G.eval()
        images = G(self.z.to(self.device))
        G.train(was_training)
        save_grid(images, os.path.join(self.dir, f"epoch_{epoch:06d}.png"), nrow=len(images))
        self.write_timeline()

    def write_timeline(self, max_rows=16):
        """Stack the snapshot rows (at most `max_rows`, evenly spread, always the last) into timeline.png."""
        from PIL import Image
        files = sorted(f for f in os.listdir(self.dir) if f.startswith("epoch_") and f.endswith(".png"))
        if not files:
            return
        if len(files) > max_rows:
            idx = sorted({round(i * (len(files) - 1) / (max_rows - 1)) for i in range(max_rows)})
            files = [files[i] for i in idx]
        rows = [Image.open(os.path.join(self.dir, f)).convert("RGB") for f in files]
        sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
        y = 0
        for r in rows:
            sheet.paste(r, (0, y))
            y += r.height
        atomic_write(self.timeline_path, lambda tmp: sheet.save(tmp, format="PNG"))


# ----------------------------------------------------------------------------- memory

def _storage_key(t):
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


class _Saved:
    """What the autograd graph holds instead of a saved tensor; its death tells the meter the bytes are free."""
    __slots__ = ("tensor", "meter", "key")

    def __init__(self, tensor, meter, key):
        self.tensor, self.meter, self.key = tensor, meter, key

    def __del__(self):
        self.meter._release(self.key)


class MemoryMeter:
    """Peak training memory, two ways.

    device: on CUDA `torch.cuda.max_memory_allocated` (the caching allocator's peak); on CPU the process' peak
        resident set size (VmHWM, reset at `start()` through /proc/self/clear_refs where Linux allows). RSS
        includes the Python interpreter, torch's own code and allocator slack, so it is too coarse to compare
        methods; hence also
    tensors: a device-independent count, in bytes, of what training must hold: parameters and buffers,
        gradients, optimizer state, and the activations autograd saved for backward (counted through
        `torch.autograd.graph.saved_tensors_hooks`, each storage once, parameters not again). Parameters,
        gradients and optimizer state are read at `sample()`; saved activations are tracked live, and the peak
        is the largest sum seen. Transient workspace (a convolution's scratch buffers, an optimizer step's
        temporaries) is not counted.

    Use: `with meter.hooks():` around each training step's forward/backward, `meter.sample()` after each
    backward and optimizer step.
    """

    def __init__(self, device, models, optimizers):
        self.device = torch.device(device)
        self.models, self.optimizers = list(models), list(optimizers)
        self.live = {}  # storage key -> [count, nbytes] of saved activations alive now
        self.live_bytes = 0
        self.static_bytes = 0  # parameters + gradients + optimizer state at the last sample()
        self.peak_tensor_bytes = 0
        self.peak_parts = {}
        self._param_keys = set()
        self.start()

    def start(self):
        """Reset both peaks (call after setup, before the measured training)."""
        self.peak_tensor_bytes = 0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM (peak RSS) to the current RSS
            except OSError:
                pass  # not Linux, or not allowed: the peak then counts from process start
        self.sample()

    def _parts(self):
        params = grads = 0
        seen = set()
        for m in self.models:
            for t in list(m.parameters()) + list(m.buffers()):
                key = _storage_key(t)
                if key not in seen:
                    seen.add(key)
                    params += key[1]
            for p in m.parameters():
                if p.grad is not None:
                    grads += p.grad.untyped_storage().nbytes()
        self._param_keys = seen
        opt = sum(v.untyped_storage().nbytes() for o in self.optimizers for s in o.state.values()
                  for v in s.values() if isinstance(v, torch.Tensor) and v.numel() > 1)
        return {"params": params, "grads": grads, "optimizer": opt}

    def sample(self):
        parts = self._parts()
        self.static_bytes = sum(parts.values())
        self._update_peak(parts)

    def _update_peak(self, parts=None):
        total = self.static_bytes + self.live_bytes
        if total > self.peak_tensor_bytes:
            self.peak_tensor_bytes = total
            self.peak_parts = dict(parts or self._last_parts, activations=self.live_bytes)
        if parts is not None:
            self._last_parts = parts

    def _pack(self, t):
        key = _storage_key(t)
        if key in self._param_keys or key[1] == 0:
            return t  # a parameter (e.g. a conv weight saved for backward) is already counted
        entry = self.live.get(key)
        if entry is None:
            self.live[key] = [1, key[1]]
            self.live_bytes += key[1]
            self._update_peak()
        else:
            entry[0] += 1
        return _Saved(t, self, key)

    @staticmethod
    def _unpack(saved):
        return saved.tensor if isinstance(saved, _Saved) else saved

    def _release(self, key):
        entry = self.live.get(key)
        if entry is not None:
            entry[0] -= 1
            if entry[0] == 0:
                del self.live[key]
                self.live_bytes -= entry[1]

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def device_peak_bytes(self):
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def report(self):
        """Plain dict for summary.json."""
        mb = 2 ** 20
        return {
            "peak_mem_mb": round(self.device_peak_bytes() / mb, 1),
            "peak_mem_kind": "cuda_max_memory_allocated" if self.device.type == "cuda" else "process_peak_rss",
            "peak_tensor_mb": round(self.peak_tensor_bytes / mb, 1),
            "peak_tensor_parts_mb": {k: round(v / mb, 1) for k, v in self.peak_parts.items()},
        }


def model_file_mb(model):
    """Size of the model's fp32 state_dict in MiB: what its generator file holds (give or take a few KB)."""
    return round(arch.param_bytes(model) / 2 ** 20, 1)


# ----------------------------------------------------------------------------- one training run

class Run:
    """Everything around a training loop: out dir, resume, checkpoints, metrics, snapshots, memory, summary.

    A script builds its models, optimizers and batch iterator, then:

        run = Run(args, "train_wgan", models={"G": G, "D": D}, optimizers={"opt_g": opt_g, "opt_d": opt_d},
                  batches=batches, generator_key="G")
        for epoch in run.epochs():
            ...                         # the algorithm, a plain loop
            run.end_epoch(record)       # {"d_loss": ..., "g_loss": ...}: logs, snapshots, checkpoints
        run.finish(extra_summary)

    `--resume` restores models, optimizers, batch order, every RNG, and the epoch/step counters, so a run
    interrupted and resumed produces bitwise the same weights as one that was not (on the same device).
    """

    def __init__(self, args, script, models, optimizers, batches, resume=None, generator_key="G", extra_checkpoint=None):
        self.args, self.script = args, script
        self.models, self.optimizers, self.batches = models, optimizers, batches
        self.generator_key = generator_key
        self.extra_checkpoint = extra_checkpoint or {}
        self.out = args.out
        self.device = next(next(iter(models.values())).parameters()).device
        self.ckpt_path = os.path.join(self.out, "ckpt.pt")
        self.epoch, self.step = 0, 0
        if resume is not None:  # the checkpoint `open_run` loaded
            self._restore(resume)
        G = models[generator_key]
        self.snapshots = Snapshots(self.out, G.config["nz"], self.device)
        self.log = RunLog(self.out, args.epochs, start_epoch=self.epoch)
        self.meter = MemoryMeter(self.device, models.values(), optimizers.values())
        for opt in optimizers.values():
            # sample memory just before and after each update: gradients and optimizer state both exist then
            opt.register_step_pre_hook(lambda *a: self.meter.sample())
            opt.register_step_post_hook(lambda *a: self.meter.sample())
        self.sec = []

    def _restore(self, ckpt):
        path = ckpt["path"]
        for key, model in self.models.items():
            if ckpt[key]["config"] != model.config:
                raise UserError(f"{path}: its {key} is {ckpt[key]['config']}, but the flags give {model.config}")
            model.load_state_dict(ckpt[key]["state_dict"])
        for key, opt in self.optimizers.items():
            opt.load_state_dict(ckpt[key])
        self.batches.load_state_dict(ckpt["batches"])
        set_rng_state(ckpt["rng"])
        self.epoch, self.step = ckpt["epoch"], ckpt["step"]
        self.restored_memory = ckpt.get("memory")
        ckpt.clear()  # the weights now live in the models: drop the loaded copies (they would inflate the peak)
        print(f"resumed {path} at epoch {self.epoch} (step {self.step})", flush=True)

    def save(self):
        ckpt = {"format": CHECKPOINT_FORMAT, "script": self.script, "args": vars(self.args),
                "epoch": self.epoch, "step": self.step, "rng": rng_state(), "batches": self.batches.state_dict(),
                "memory": self.meter.report(), **self.extra_checkpoint}
        for key, model in self.models.items():
            ckpt[key] = {"config": dict(model.config), "state_dict": model.state_dict()}
        for key, opt in self.optimizers.items():
            ckpt[key] = opt.state_dict()
        save_checkpoint(self.ckpt_path, ckpt)
        G = self.models[self.generator_key]
        save_generator(os.path.join(self.out, "generator.pt"), G, epoch=self.epoch, script=self.script)

    def epochs(self):
        """Epoch numbers still to run; times each one and holds the saved-tensor hooks while it runs."""
        if self.epoch == 0:
            self.snapshots.render(self.models[self.generator_key], 0)  # the untrained generator: row 0
        self.meter.start()
        for epoch in range(self.epoch + 1, self.args.epochs + 1):
            self.epoch = epoch
            self._t0 = time.time()
            with self.meter.hooks():
                yield epoch

    def end_epoch(self, record, console=None):
        """Log the epoch; render snapshots and write the checkpoint when due (the last epoch always)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        sec = time.time() - self._t0
        self.sec.append(sec)
        mem = self.meter.report()
        record = {"epoch": self.epoch, "step": self.step, **record, "sec": round(sec, 4),
                  "peak_mem_mb": mem["peak_mem_mb"], "peak_tensor_mb": mem["peak_tensor_mb"]}
        self.log.epoch(record, console or {k: v for k, v in record.items() if k not in ("epoch", "step", "sec", "peak_mem_mb", "peak_tensor_mb")})
        last = self.epoch == self.args.epochs
        if self.epoch % self.args.snapshot_every == 0 or last:
            self.snapshots.render(self.models[self.generator_key], self.epoch)
        if self.epoch % self.args.save_every == 0 or last:
            self.save()

    def finish(self, extra=None):
        """Write summary.json (also when the run was already complete and only resumed to re-summarise)."""
        G = self.models[self.generator_key]
        records = self.log.read()
        secs = [r["sec"] for r in records if r["epoch"] > 1] or [r["sec"] for r in records]
        summary = {"script": self.script, "args": vars(self.args), "epochs": self.epoch, "steps": self.step,
                   "device": str(self.device), "torch": torch.__version__,
                   "sec_per_epoch": round(median(secs), 4) if secs else None,
                   "generator_mb": model_file_mb(G), **self.meter.report()}
        if not self.sec and getattr(self, "restored_memory", None):
            summary.update(self.restored_memory)  # nothing trained in this process: keep the run's figures
        summary.update(extra or {})
        if records:
            summary["final"] = {k: v for k, v in records[-1].items() if k not in ("epoch", "step")}
        self.log.write_summary(summary)
        print(f"done: {self.out}/summary.json, {self.out}/generator.pt, pictures in {self.out}/snapshots "
              f"and {self.out}/timeline.png", flush=True)
        return summary
