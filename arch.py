"""The thesis' networks: WGAN-GP teacher generator and critic, the 5x smaller KD student, the DC-GAN discriminator.

At the defaults (128x128 RGB, latent 100, width 1) the module names, repr and state_dict keys/shapes are
exactly those of the thesis code (appendix; github.com/MitrofanovEV/GAN_Optimization scripts/arch.py), so a
state_dict saved there loads here with `load_state_dict(..., strict=True)`:

    Generator       layer1..layer5, final, output   47,859,331 parameters (182.6 MiB fp32; thesis: 186 MB)
    GeneratorKD     layer1..layer4, final, output    9,869,123 parameters ( 37.7 MiB fp32; thesis: 38 MB)
    Discriminator   layer1..layer5, output          11,166,529 parameters (the WGAN-GP critic, no sigmoid)
    DCGANDiscriminator  the same + Sigmoid at output.1 (KD); forward() returns logits

Other image sizes (32, 64, 128, 256, ...) add or drop stride-2 blocks and `width` scales every channel count,
so small experiments (64x64, width 0.25) run on a CPU with the same code.

    >>> g = Generator(img_size=64, width=0.25); g(torch.randn(8, 100, 1, 1)).shape
    torch.Size([8, 3, 64, 64])
"""
import math

import torch
import torch.nn as nn


def _num_blocks(img_size):
    """Number of stride-2 doublings between the 4x4 seed and `img_size` (128 -> 5)."""
    n = int(round(math.log2(img_size))) - 2
    if img_size < 16 or 2 ** (n + 2) != img_size:
        raise ValueError(f"image size must be a power of two >= 16, got {img_size}")
    return n


def _channels(base, width):
    return max(1, int(round(base * width)))


def _up_block(c_in, c_out, kernel=4, stride=2, padding=1):
    # ConvTranspose2d + BatchNorm2d + ReLU: the thesis' generator block (Sequential, conv at index 0)
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _down_block(c_in, c_out):
    # Conv2d + InstanceNorm2d(affine) + LeakyReLU(0.2): the thesis' critic block. InstanceNorm, not BatchNorm:
    # the gradient penalty is defined per sample, and batch statistics would couple the samples.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 4, 2, 1),
        nn.InstanceNorm2d(c_out, affine=True),
        nn.LeakyReLU(0.2, inplace=True),
    )


class _Sequence(nn.Module):
    """A stack of named blocks run in order, some of which may be frozen (see `freeze_layers`)."""

    frozen = frozenset()  # names of the frozen blocks, set by freeze_layers
    adapt_bn = False  # let BatchNorm running statistics of frozen blocks keep adapting

    def layers(self):
        """(name, module) of every block in forward order, parameter-free ones included."""
        return list(self.named_children())

    def _block(self, name, module, x):
        return module(x)

    def forward(self, x):
        for name, module in self.named_children():
            if name in self.frozen and not x.requires_grad:
                # A frozen block whose input needs no gradient has nothing to send a gradient to, so none of
                # its activations need keeping (no_grad states it; autograd would record nothing anyway).
                # Frozen critic blocks fed an image that needs a gradient (the penalty, the generator step)
                # take the other branch.
                with torch.no_grad():
                    x = self._run(name, module, x)
            else:
                x = self._run(name, module, x)
        return x

    def _run(self, name, module, x):
        if getattr(module, "stored_dtype", None) is None:
            return self._block(name, module, x)
        # weights stored in low precision (see store_frozen): upcast this block's weights for its forward only,
        # so the arithmetic is fp32 (or autocast's) even where bf16 arithmetic is emulated and slow
        weights = {n: p.to(torch.float32) for n, p in module.named_parameters()}
        return torch.func.functional_call(module, weights, (x,))

    def train(self, mode=True):
        super().train(mode)
        if not self.adapt_bn:  # frozen BatchNorm keeps the running statistics it was trained with
            for name, module in self.layers():
                if name in self.frozen:
                    module.train(False)
        return self


class Generator(_Sequence):
    """Teacher generator ("model 1"/"model 2"): z (N, nz, 1, 1) -> image (N, nc, S, S) in [-1, 1].

    layer1 maps z to 4x4 with `16 * 128 * width` channels (2048 at the defaults); every next layer doubles the
    resolution and halves the channels down to 128 * width at S/2; `final` makes the image, `output` is Tanh.
    """

    def __init__(self, nz=100, img_size=128, width=1.0, nc=3):
        super().__init__()
        self.config = dict(kind="Generator", nz=nz, img_size=img_size, width=float(width), nc=nc)
        n = _num_blocks(img_size)  # layer1 + (n - 1) doubling blocks reach S/2, `final` doubles to S
        chans = [_channels(128 * 2 ** (n - 1 - i), width) for i in range(n)]
        self.layer1 = _up_block(nz, chans[0], 4, 1, 0)
        for i in range(1, n):
            setattr(self, f"layer{i + 1}", _up_block(chans[i - 1], chans[i]))
        self.final = nn.Sequential(nn.ConvTranspose2d(chans[-1], nc, 4, 2, 1))
        self.output = nn.Tanh()


class GeneratorKD(_Sequence):
    """Student generator for knowledge distillation: about 5x fewer parameters than `Generator`.

    layer1 maps z to 4x4 with 512 * width channels, layer2 jumps 4x (kernel 8, stride 4) to 16x16, further
    layers double, `final` makes the image. At 128x128: 4 -> 16 -> 32 -> 64 -> 128.
    """

    def __init__(self, nz=100, img_size=128, width=1.0, nc=3):
        super().__init__()
        self.config = dict(kind="GeneratorKD", nz=nz, img_size=img_size, width=float(width), nc=nc)
        n = _num_blocks(img_size)
        if n < 3:
            raise ValueError(f"GeneratorKD needs an image size of at least 32, got {img_size}")
        hidden = n - 1  # layer1 (4x4), layer2 (x4), then n - 3 doubling blocks; `final` doubles to S
        chans = [_channels(64 * 2 ** (hidden - 1 - i), width) for i in range(hidden)]
        self.layer1 = _up_block(nz, chans[0], 4, 1, 0)
        self.layer2 = _up_block(chans[0], chans[1], 8, 4, 2)
        for i in range(2, hidden):
            setattr(self, f"layer{i + 1}", _up_block(chans[i - 1], chans[i]))
        self.final = nn.Sequential(nn.ConvTranspose2d(chans[-1], nc, 4, 2, 1))
        self.output = nn.Tanh()


class Discriminator(_Sequence):
    """WGAN-GP critic: image -> unbounded score (N,). No sigmoid: the critic estimates a Wasserstein distance.

    Stride-2 blocks from S down to 4x4 with 64 * width channels doubling each block (64..1024 at 128x128),
    then `output` = Conv2d(C, 1, 4) to one number per image.
    """

    def __init__(self, img_size=128, width=1.0, nc=3):
        super().__init__()
        self.config = dict(kind=type(self).__name__, img_size=img_size, width=float(width), nc=nc)
        n = _num_blocks(img_size)
        chans = [nc] + [_channels(64 * 2 ** i, width) for i in range(n)]
        for i in range(n):
            setattr(self, f"layer{i + 1}", _down_block(chans[i], chans[i + 1]))
        self.output = nn.Sequential(nn.Conv2d(chans[-1], 1, 4, 1, 0))

    def forward(self, x):
        return super().forward(x).view(-1)


class DCGANDiscriminator(Discriminator):
    """DC-GAN discriminator used for distillation: the critic plus the thesis' Sigmoid at `output.1`.

    `forward` returns LOGITS (it stops before the Sigmoid): the loss is BCE-with-logits, which is numerically
    stable and allowed under autocast, while BCE on probabilities is neither. The Sigmoid is kept so the
    module's repr matches the thesis; `probability(x)` applies it.
    """

    def __init__(self, img_size=128, width=1.0, nc=3):
        super().__init__(img_size, width, nc)
        self.output.append(nn.Sigmoid())

    def _block(self, name, module, x):
        return module[0](x) if name == "output" else module(x)

    def probability(self, x):
        return self.output[1](self.forward(x))


MODELS = {cls.__name__: cls for cls in (Generator, GeneratorKD, Discriminator, DCGANDiscriminator)}


def build(config):
    """Rebuild a model from its `.config` dict (as stored in checkpoints)."""
    config = dict(config)
    kind = config.pop("kind")
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}")
    return MODELS[kind](**config)


def weights_init(module):
    """DCGAN initialisation (Radford et al. 2015): conv weights N(0, 0.02), norm weights N(1, 0.02), biases 0.

    Use as `model.apply(weights_init)`.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)) and module.weight is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def count_params(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def param_bytes(model):
    """Bytes of parameters and buffers: what a state_dict of the model holds (its file size, give or take)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def freezable_layers(model):
    """Names of the blocks that hold parameters, in forward order: what `--freeze-g/--freeze-d N` counts."""
    return [name for name, m in model.named_children() if any(True for _ in m.parameters())]


def frozen_count(model, n):
    """`n` >= 0 counts blocks from the input side; `n` < 0 means all but the last |n| (-2: all but the last
    block and the output layer -- the thesis' critic freezing at 128x128, the same structure at any size)."""
    total = len(freezable_layers(model))
    return total + n if n < 0 else n


def freeze_layers(model, n, adapt_bn=False, from_output=False):
    """Freeze the first `n` parameter blocks of `model` (transfer learning; `n` < 0: see `frozen_count`), or with
    `from_output` the last `n` (the image side of a generator); returns their names.

    Frozen means: `requires_grad=False` (build the optimizer afterwards from the parameters that still need
    a gradient, so frozen ones get no Adam state), run without an autograd graph when their input needs no
    gradient (see `_Sequence.forward`), and BatchNorm running statistics fixed (eval mode) unless `adapt_bn`.
    """
    names = freezable_layers(model)
    k = frozen_count(model, n)
    if not 0 <= k < len(names):
        raise ValueError(f"cannot freeze {n} layers of {type(model).__name__}: it has {len(names)} "
                         f"({', '.join(names)}) and at least one must train")
    frozen = names[len(names) - k:] if from_output and k else names[:k]
    for name in frozen:
        getattr(model, name).requires_grad_(False)
    model.frozen, model.adapt_bn = frozenset(frozen), adapt_bn
    model.train(model.training)
    return frozen


def store_frozen(model, dtype=torch.bfloat16, blocks=None):
    """Keep the weights of the frozen blocks (or of the first `blocks`) in `dtype`: half the bytes, no gradient,
    no optimizer state. They are upcast block by block while that block runs (see `_Sequence._run`); BatchNorm
    running statistics stay fp32. Returns the bytes saved."""
    saved = 0
    chosen = [(n, m) for n, m in model.layers() if n in model.frozen] if blocks is None else model.layers()[:blocks]
    for name, module in chosen:
        for p in module.parameters():
            saved += p.numel() * (p.element_size() - torch.finfo(dtype).bits // 8)
            p.data = p.data.to(dtype)
        module.stored_dtype = dtype
    return saved


def default_precision(device):
    """'bf16' where bf16 arithmetic is fast (CUDA with bf16 support; a CPU measured doing a bf16 matrix product
    faster than an fp32 one: AMX / AVX512-BF16), else 'fp32'. CPUs without native bf16 emulate it ~10-20x
    slower, so there a quick measurement (~10 ms) decides rather than the CPU's name."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if bf16_speedup() > 1.2 else "fp32"


def bf16_speedup(n=256, rounds=5):
    """fp32 time / bf16 time of an n x n matrix product on this CPU (> 1: bf16 is native and faster; emulated
    bf16 gives ~0.06). Best of `rounds` interleaved timings, so a busy machine does not flip the answer;
    measured once per process."""
    if _BF16_SPEEDUP:
        return _BF16_SPEEDUP[0]
    import time
    a32 = torch.randn(n, n)
    a16 = a32.to(torch.bfloat16)
    best = [float("inf"), float("inf")]
    for _ in range(rounds):
        for i, a in enumerate((a32, a16)):
            t0 = time.perf_counter()
            a @ a
            best[i] = min(best[i], time.perf_counter() - t0)
    _BF16_SPEEDUP.append(best[0] / max(best[1], 1e-9))
    return _BF16_SPEEDUP[0]


_BF16_SPEEDUP = []


def infer_config(state_dict):
    """Guess the architecture of a raw state_dict (e.g. saved by the thesis code) from its keys and shapes.

    Returns a config dict for `build`, or raises ValueError saying why it cannot.
    """
    keys = set(state_dict)
    layers = sorted(int(k.split(".")[0][5:]) for k in keys if k.startswith("layer") and k.endswith(".0.weight"))
    if not layers or layers != list(range(1, len(layers) + 1)):
        raise ValueError("no layer1..layerN blocks found: not a Generator/GeneratorKD/Discriminator state_dict")
    n = len(layers)
    w1 = state_dict["layer1.0.weight"]
    if "final.0.weight" in keys:  # a generator; ConvTranspose2d weight is (c_in, c_out, k, k)
        nz, nc = w1.shape[0], state_dict["final.0.weight"].shape[1]
        student = state_dict["layer2.0.weight"].shape[-1] == 8 if n >= 2 else False
        if student:
            kind, img_size, width = "GeneratorKD", 2 ** (n + 3), w1.shape[1] / (64 * 2 ** (n - 1))
        else:
            kind, img_size, width = "Generator", 2 ** (n + 2), w1.shape[1] / (128 * 2 ** (n - 1))
        return dict(kind=kind, nz=int(nz), img_size=int(img_size), width=float(width), nc=int(nc))
    if "output.0.weight" in keys:  # a critic; Conv2d weight is (c_out, c_in, k, k)
        return dict(kind="Discriminator", img_size=2 ** (n + 2), width=w1.shape[0] / 64, nc=int(w1.shape[1]))
    raise ValueError("state_dict has neither `final` (generator) nor `output` (critic) blocks")


# ---- model files: read a generator.pt / ckpt.pt / raw thesis state_dict, with errors a user can act on
import os  # noqa: E402 (kept in this section: only the file readers need it)

GENERATOR_FORMAT = "ganopt-generator/1"  # generator.pt: {format, config, state_dict, [ema_state_dict], ...}
CHECKPOINT_FORMAT = "ganopt-checkpoint/1"  # ckpt.pt: {format, G: {config, state_dict}, [G_ema: {...}], D, ...}


class ModelFileError(ValueError):
    """A model file that cannot be used; the message is one line naming the file and what is wrong with it."""


def read_file(path, device="cpu"):
    """torch.load(weights_only=True): a model file cannot run code. Every failure is a ModelFileError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise ModelFileError(f"{path} is a directory, not a model file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise ModelFileError(f"cannot read {path}: {e.strerror}") from None
    if not head:
        raise ModelFileError(f"{path} is empty (0 bytes)")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # torch says these with its internals (a text file gives "KeyError: 101")
        text = str(e)
    if "Unsupported global" in text:
        why = "holds objects other than tensors and plain data (refused for safety)"
    elif head.startswith((b"PK\x03\x04", b"\x80\x02\x8a\x0a")):  # the zip / legacy headers torch.save writes
        why = "is truncated or corrupt"
    else:
        why = "is not a PyTorch file (torch.save writes a zip archive)"
    raise ModelFileError(f"{path} {why}")


def model_from(obj, path, kinds=("Generator", "GeneratorKD"), key="G", device="cpu", ema=True):
    """(model, config) from what `read_file(path)` returned: a generator file, a training checkpoint (its `key`
    model) or a raw state_dict (architecture from `infer_config`). ema=True takes the EMA weights where the file
    has them; `model.weights_kind` says which were taken ("ema" or "raw")."""
    fmt = obj.get("format") if isinstance(obj, dict) else None
    try:
        if fmt == GENERATOR_FORMAT:
            config, state, ema_state = obj["config"], obj["state_dict"], obj.get("ema_state_dict")
        elif fmt == CHECKPOINT_FORMAT:
            if key not in obj:
                raise ModelFileError(f"{path} is a training checkpoint without a {key!r} model")
            config, state = obj[key]["config"], obj[key]["state_dict"]
            ema_state = obj[f"{key}_ema"]["state_dict"] if f"{key}_ema" in obj else None
        elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            config, state, ema_state = infer_config(obj), obj, None
        else:
            raise ModelFileError(f"{path} is not a generator file, a training checkpoint or a state_dict")
        kind = config.get("kind")
    except ModelFileError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
        raise ModelFileError(f"cannot tell the architecture of {path}: {e}") from None
    if kind not in kinds:
        raise ModelFileError(f"{path} holds a {kind}, expected {' or '.join(kinds)}")
    use_ema = ema and ema_state is not None
    try:
        model = build(config)
        model.load_state_dict(ema_state if use_ema else state, strict=True)
    except (RuntimeError, ValueError, TypeError, KeyError) as e:
        raise ModelFileError(f"{path} does not match its architecture {config}: {str(e).splitlines()[0]}") from None
    bad = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ModelFileError(f"{path} holds non-finite weights (NaN/Inf in {', '.join(bad[:3])}"
                             f"{', ...' if len(bad) > 3 else ''}): the run that wrote it diverged")
    model.weights_kind = "ema" if use_ema else "raw"
    return model.to(device), config


def load_model(path, kinds=("Generator", "GeneratorKD"), key="G", device="cpu", ema=True):
    """`model_from(read_file(path))`. A directory is a run directory: its generator.pt is read."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "generator.pt")):
            raise ModelFileError(f"{path} is a directory without a generator.pt (not a run directory?)")
        path = os.path.join(path, "generator.pt")
    return model_from(read_file(path, device), path, kinds, key, device, ema)


def generator_file(model, ema_model=None, **extra):
    """What a generator.pt holds (save it with torch.save, atomically): config, weights, EMA weights if given."""
    obj = {**extra, "format": GENERATOR_FORMAT, "config": dict(model.config), "state_dict": model.state_dict()}
    if ema_model is not None:
        ema_model = getattr(ema_model, "module", ema_model)  # a torch.optim.swa_utils.AveragedModel, or the copy
        if ema_model.config != model.config:
            raise ValueError(f"EMA model {ema_model.config} differs from the model {model.config}")
        obj["ema_state_dict"] = ema_model.state_dict()
    return obj
