"""Benchmark our WGAN-GP training steps (train_wgan.py) at each precision against the textbook fp32 loop, on the
thesis architecture.

The same maths in every variant (WGAN-GP, lambda 10, Adam(1e-4, (0, 0.9)), fresh z and eps each step):
    textbook    the loop of most public WGAN-GP repositories, fp32, torch.optim.Adam: per critic step
                D.zero_grad(), fake = G(z).detach() (the generator's graph is built, then dropped),
                D(real).backward(-1), D(fake).backward(+1), the penalty on D(interp) through
                autograd.grad(create_graph=True, retain_graph=True) and its own backward, `.item()` of every loss
                every step; in the generator step the critic's parameters still require a gradient
    ours P      train_wgan.critic_step / generator_step exactly as train_wgan.train calls them, harness.Adam (no
                first moment at beta1 = 0), autocast at precision P (fp32, bf16, fp16 with loss scaling): one
                critic forward on cat([real, fake]), G under no_grad in the critic step, critic parameters frozen
                in the generator step, one backward per step, no `.item()`, gradients freed after each step
    ours P +meter  the same with harness.MemoryMeter's hooks active around every step, as they are during the
                first 3 iterations of every run: what the meter costs (P: the first of --precision)
    ours P +step in backward  the same with --step-in-backward (harness.StepInBackward: each parameter's Adam
                update inside backward, its gradient freed at once): what that costs in time (P: the first of
                --precision but fp16, which it refuses; its memory: bench_memory.py)
    ours P compiled  (--compile) G and D through torch.compile. If the first steps fail (torch 2.x: "aot_autograd
                does not support double backward", which the penalty needs), G alone is compiled ("compiled G",
                the reason printed in one line); if that fails too, the row says "compile failed" and why

Identical maths, checked before timing: textbook and ours fp32 run one generator iteration (n_critic critic steps
+ 1 generator step) from the same weights and RNG seed, at --check-batch, in float64 and in float32; float64 must
agree to 1e-9 (PASS/FAIL). float32 ends ~1e-4 apart at the thesis size: Adam's first steps are about
lr * sign(gradient), so rounding flips the step of weights whose gradient is near 0; float64 shows it is rounding.

Timing: in one process the variants alternate (textbook, ours fp32, ours bf16, ..., textbook, ...) for --rounds
rounds; in each round a variant runs --steps critic and --steps generator steps, each block timed (CUDA
synchronised before every clock read); every figure is a median over the rounds.
    s/iter     = n_critic * (critic block / steps) + (generator block / steps)
    CPU s/iter   the same in process CPU time (all threads): on a shared machine it tracks the work done
    images/s   = (2 n_critic + 1) * batch / (s/iter)
    GFLOP/s    achieved: the FLOPs of the variant's own iteration (torch.utils.flop_counter: convolutions and
               their gradients; element-wise work is not counted), counted once per batch, / (s/iter)
    MFU        = achieved / peak, the peak measured at start for the variant's dtype on this device: the best
               of 3 products of two n x n matrices (n = 2048 on CPU, 8192 on CUDA); on CUDA fp32 with TF32 when
               cuDNN's convolutions use it (torch's default)
Memory, for textbook and each precision and batch, in a fresh subprocess: process peak RSS on CPU (VmHWM) or
torch.cuda.max_memory_allocated on CUDA, and harness.MemoryMeter's device-independent peak of parameters +
gradients + Adam state + saved activations over one critic and one generator step in steady state.
--thesis-epoch also times the thesis' epoch, 200 critic + 25 generator updates at the largest batch, per variant
(alternating), against the thesis' 59.5 s (Table 3.1, a GTX 1660 Ti; the thesis gives no batch size, 64 assumed).

Data: random tensors in [-1, 1] (the speed of a training step does not depend on the pixels).

    python bench.py --threads 1                                 # thesis architecture, batch 8 and 64: an hour on 2 CPU cores
    python bench.py --quick --threads 1                         # 64x64, width 0.25, batch 8: a few minutes
    python bench.py --device cuda --precision fp32,bf16,fp16 --batch-sizes 64 --thesis-epoch
    python bench.py --markdown --json bench.json                # README-ready table, and every number as JSON
"""
import argparse
import contextlib
import copy
import json
import os
import platform
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import arch
import harness
import train_wgan

NZ = 100
LR, BETAS = 1e-4, (0.0, 0.9)
LAMBDA_GP = 10.0
CHECK_TOLERANCE = 1e-9  # float64
PRECISIONS = ("fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
THESIS_EPOCH = dict(critic=200, generator=25, sec=59.5, batch=64)  # Table 3.1, model 1, GTX 1660 Ti; batch assumed
QUICK = dict(img_size=64, width=0.25, batch_sizes=[8])


# ----------------------------------------------------------------------------- the textbook loop

def textbook_gradient_penalty(D, real, fake, lambda_gp):
    alpha = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    interp = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    d_interp = D(interp)
    grads = torch.autograd.grad(outputs=d_interp, inputs=interp, grad_outputs=torch.ones_like(d_interp),
                                create_graph=True, retain_graph=True)[0]
    return lambda_gp * ((grads.view(grads.size(0), -1).norm(2, dim=1) - 1) ** 2).mean()


def textbook_critic_step(G, D, opt_d, real, nz, lambda_gp):
    one = torch.tensor(1.0, device=real.device)
    mone = -one
    D.zero_grad()
    z = torch.randn(real.size(0), nz, 1, 1, device=real.device)
    fake = G(z).detach()  # G's graph is built, then dropped
    d_real = D(real).mean()
    d_real.backward(mone)
    d_fake = D(fake).mean()
    d_fake.backward(one)
    gp = textbook_gradient_penalty(D, real, fake, lambda_gp)
    gp.backward()
    opt_d.step()
    d_loss = d_fake - d_real + gp
    wasserstein = d_real - d_fake
    return d_loss.item(), wasserstein.item(), gp.item() / lambda_gp


def textbook_generator_step(G, D, opt_g, batch_size, nz, device):
    G.zero_grad()
    z = torch.randn(batch_size, nz, 1, 1, device=device)
    g_loss = -D(G(z)).mean()  # D's parameters still require grad: their gradients are computed, then unused
    g_loss.backward()
    opt_g.step()
    return g_loss.item()


# ----------------------------------------------------------------------------- one variant's training state

class Variant:
    """G, D, their optimizers and loss scalers, stepped the textbook way or ours (at a precision, optionally with
    the memory meter's hooks or compiled)."""

    def __init__(self, name, G, D, device, precision="fp32", textbook=False, meter=False, compiled=False,
                 in_backward=False):
        self.name, self.precision, self.textbook, self.compiled, self.device = name, precision, textbook, compiled, device
        adam = torch.optim.Adam if textbook else harness.Adam
        self.opt_g = adam(harness.trainable(G), lr=LR, betas=BETAS)
        self.opt_d = adam(harness.trainable(D), lr=LR, betas=BETAS)
        G.train()
        D.train()
        self.G, self.D, self.eager_D = (torch.compile(G), torch.compile(D), D) if compiled else (G, D, D)
        self.env = harness.Env(device, precision=precision)
        self.in_backward = in_backward
        self.step_g, self.step_d = (harness.StepInBackward(o, self.env) if in_backward else o
                                    for o in (self.opt_g, self.opt_d))
        self.scaler_g, self.scaler_d = self.env.scaler(), self.env.scaler()
        self.args = argparse.Namespace(nz=NZ, lambda_gp=LAMBDA_GP, batch_size=None)
        self.meter = None
        if meter:  # watching for good, as during the first iterations of a run
            self.meter = harness.MemoryMeter(device, [G, D], [self.opt_g, self.opt_d], watch_iterations=10**9)
            self.meter.start()
        self.failed = self.note = None

    def hooks(self):
        return self.meter.hooks() if self.meter else contextlib.nullcontext()

    def critic(self, real):
        """One critic step; returns (d_loss, wasserstein, gp): floats (textbook) or a tensor (ours)."""
        if self.textbook:
            return textbook_critic_step(self.G, self.D, self.opt_d, real, NZ, LAMBDA_GP)
        with self.hooks():
            return train_wgan.critic_step(self.G, self.D, self.step_d, self.scaler_d, real, self.args, self.env, _same)

    def generator(self, batch_size):
        if self.textbook:
            return textbook_generator_step(self.G, self.D, self.opt_g, batch_size, NZ, self.device)
        self.args.batch_size = batch_size
        with self.hooks():
            return train_wgan.generator_step(self.G, self.D, self.step_g, self.scaler_g, self.args, self.env, _same)


def _same(x):  # no DiffAugment
    return x


def make_variants(args, G0, D0, device):
    """textbook, ours at each precision, the meter's cost at the first, compiled ones (--compile)."""
    copies = lambda: (copy.deepcopy(G0), copy.deepcopy(D0))  # noqa: E731
    variants = [Variant("textbook", *copies(), device, textbook=True)]
    variants += [Variant(f"ours {p}", *copies(), device, p) for p in args.precision]
    variants.append(Variant(f"ours {args.precision[0]} +meter", *copies(), device, args.precision[0], meter=True))
    exact = [p for p in args.precision if p != "fp16"]  # the step in backward refuses fp16
    if exact:
        variants.append(Variant(f"ours {exact[0]} +step in backward", *copies(), device, exact[0], in_backward=True))
    if args.compile:
        variants += [Variant(f"ours {p} compiled", *copies(), device, p, compiled=True) for p in args.precision]
    return variants


def build_models(args, device):
    torch.manual_seed(args.seed)
    G = arch.Generator(nz=NZ, img_size=args.img_size, width=args.width)
    D = arch.Discriminator(img_size=args.img_size, width=args.width)
    G.apply(arch.weights_init)
    D.apply(arch.weights_init)
    return G.to(device), D.to(device)


def real_batches(args, batch_size, device, count=2):
    """`count` random "real" batches in [-1, 1] (critic steps take them in turn)."""
    gen = torch.Generator().manual_seed(args.seed + batch_size)
    return [(torch.rand(batch_size, 3, args.img_size, args.img_size, generator=gen) * 2 - 1).to(device)
            for _ in range(count)]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _NoModuleTracker(contextlib.nullcontext):
    # FlopCounterMode's per-module tracker hooks break autograd.grad on a leaf input (the gradient penalty's
    # x_hat): pytorch/pytorch#131753. Totals need no module attribution, so count everything as "Global".
    parents = {"Global"}


def count_flops(fn):
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracker()
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(dtype, device, reps=3):
    """(FLOP/s, n): the best of `reps` products of two n x n matrices in `dtype` on `device`, n doubled from 256
    until one product takes 0.1 s or n reaches 2048 (CPU) / 8192 (CUDA): dtypes a CPU emulates stay small."""
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32  # as the convolutions run
    try:
        n, n_max = 256, 8192 if device.type == "cuda" else 2048
        per_block = 10 if device.type == "cuda" else 1  # a GPU product takes milliseconds: time several
        while True:
            a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
            best = min(time_block(lambda: a @ b, per_block, device)[0] for _ in range(2))  # the first: a warm-up
            if best > 0.1 or n >= n_max:
                break
            n *= 2
        best = min([best] + [time_block(lambda: a @ b, per_block, device)[0] for _ in range(reps - 1)])
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return 2 * n ** 3 / best, n


T0 = time.time()


def log(msg):
    """Progress, to stderr."""
    print(f"[{time.time() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def one_line(e):
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"


# ----------------------------------------------------------------------------- identical maths

def dead_biases(model):
    """Names of the conv biases that feed a BatchNorm/InstanceNorm: the norm subtracts them again, so their
    gradient is exactly 0 in exact arithmetic, and Adam (first step lr * g / |g|) turns rounding noise into
    +-lr steps. They differ between any two summation orders and cannot change any output."""
    names = []
    for name, block in model.named_children():
        if (isinstance(block, torch.nn.Sequential) and len(block) > 1 and block[0].bias is not None
                and isinstance(block[1], (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d))):
            names.append(f"{name}.0.bias")
    return names


@contextlib.contextmanager
def default_dtype(dtype):
    """The steps draw z, eps and the textbook's +-1 in the default dtype: make it the models' one. Our steps
    upcast autocast outputs with `.float()`, which would round a float64 model's outputs to float32: here it
    keeps float64 (for this check only)."""
    old, to_float = torch.get_default_dtype(), torch.Tensor.float
    torch.set_default_dtype(dtype)
    torch.Tensor.float = lambda self, *a, **k: self if self.dtype == torch.float64 else to_float(self, *a, **k)
    try:
        yield
    finally:
        torch.set_default_dtype(old)
        torch.Tensor.float = to_float


def check_identical_maths(args, G0, D0, batch_size, device, dtype):
    """One generator iteration of textbook and ours fp32, in `dtype`, from the same weights and RNG seed: how
    close they end."""
    with default_dtype(dtype):
        reals = [r.to(dtype) for r in real_batches(args, batch_size, device)]
        variants, losses = {}, {}
        for name, textbook in (("textbook", True), ("ours", False)):
            v = Variant(name, copy.deepcopy(G0).to(dtype), copy.deepcopy(D0).to(dtype), device, textbook=textbook)
            torch.manual_seed(args.seed + 1)
            critic = [[float(x) for x in v.critic(reals[i % len(reals)])] for i in range(args.n_critic)]
            g_loss = float(v.generator(batch_size))
            variants[name], losses[name] = v, {"critic": critic, "g_loss": g_loss}
            log(f"check: one {str(dtype)[6:]} iteration of {name} at batch {batch_size} done")
        t, o = variants["textbook"], variants["ours"]
        a = [x for step in losses["textbook"]["critic"] for x in step] + [losses["textbook"]["g_loss"]]
        b = [x for step in losses["ours"]["critic"] for x in step] + [losses["ours"]["g_loss"]]
        report = {"dtype": str(dtype)[6:], "batch": batch_size, "n_losses": len(a),
                  "loss_max_abs_diff": max(abs(x - y) for x, y in zip(a, b)),
                  "loss_max_rel_diff": max(abs(x - y) / max(abs(x), abs(y), 1e-3) for x, y in zip(a, b)),
                  "losses": losses}
        for key, m0, mt, mo in (("G", G0, t.G, o.G), ("D", D0, t.D, o.D)):
            dead = set(dead_biases(m0))
            pt, po, p0, dt, do = [], [], [], [], []
            for (n, x0), xt, xo in zip(m0.named_parameters(), mt.parameters(), mo.parameters()):
                if n in dead:
                    dt.append(xt.detach().flatten())
                    do.append(xo.detach().flatten())
                else:
                    pt.append(xt.detach().flatten())
                    po.append(xo.detach().flatten())
                    p0.append(x0.detach().flatten().to(device, dtype))
            pt, po, p0 = torch.cat(pt), torch.cat(po), torch.cat(p0)
            diff = (pt - po).abs()
            report[key] = {
                # the largest weight difference relative to the largest weight
                "max_abs_diff": diff.max().item(),
                "max_abs_diff_rel": (diff.max() / pt.abs().max()).item(),
                # how far apart the two runs ended, relative to how far one iteration moved the weights
                "diff_norm_over_update_norm": ((pt - po).norm() / (pt - p0).norm()).item(),
                "max_abs_update": (pt - p0).abs().max().item(),
                "dead_biases": len(dead),
                "dead_biases_max_abs_diff": (torch.cat(dt) - torch.cat(do)).abs().max().item() if dead else 0.0,
                "buffers_max_abs_diff": max([(x - y).abs().max().item() for x, y in zip(mt.buffers(), mo.buffers())
                                             if x.is_floating_point()] or [0.0]),
            }
        # what the weights compute, dead biases included: G(z) (training mode, as in training) and D(x)
        gen = torch.Generator().manual_seed(args.seed + 2)
        z = torch.randn(batch_size, NZ, 1, 1, generator=gen).to(device)
        x = (torch.rand(batch_size, 3, args.img_size, args.img_size, generator=gen) * 2 - 1).to(device)
        with torch.no_grad():  # copies of G: a training-mode forward moves the BatchNorm statistics
            gt, go = copy.deepcopy(t.G)(z), copy.deepcopy(o.G)(z)
            dt, do = t.D(x), o.D(x)
        report["G_output_max_abs_diff"] = (gt - go).abs().max().item()
        report["D_output_max_rel_diff"] = ((dt - do).abs().max() / dt.abs().max()).item()
    report["worst"] = max(report["loss_max_rel_diff"], report["G"]["max_abs_diff_rel"], report["D"]["max_abs_diff_rel"],
                          report["G_output_max_abs_diff"], report["D_output_max_rel_diff"])
    return report


def print_check(reports, tolerance):
    r64 = reports[0]
    print(f"identical maths: one generator iteration ({r64['n_losses'] // 3} critic + 1 generator step) of textbook "
          f"and ours fp32 from the same weights and RNG seed, batch {r64['batch']}: "
          f"{'PASS' if r64['worst'] < tolerance else 'FAIL'} (float64, every figure below {tolerance:g})")
    head = ["", "losses rel", "G weights rel", "D weights rel", "G |diff|/|update|", "D |diff|/|update|",
            "G(z) abs", "D(x) rel"]
    body = [[r["dtype"], f"{r['loss_max_rel_diff']:.1e}", f"{r['G']['max_abs_diff_rel']:.1e}",
             f"{r['D']['max_abs_diff_rel']:.1e}", f"{r['G']['diff_norm_over_update_norm']:.1e}",
             f"{r['D']['diff_norm_over_update_norm']:.1e}", f"{r['G_output_max_abs_diff']:.1e}",
             f"{r['D_output_max_rel_diff']:.1e}"] for r in reports]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    for line in [head] + body:
        print("  " + "  ".join(x.rjust(w) for x, w in zip(line, widths)))
    print(f"  (largest difference of the {r64['n_losses']} losses and of the weights, relative to the largest loss / "
          f"weight; the two runs' distance over one iteration's update; the outputs after the iteration on fixed "
          f"inputs. Not compared: the {r64['G']['dead_biases']} + {r64['D']['dead_biases']} conv biases that feed "
          f"a BatchNorm/InstanceNorm, which cancels them: their gradient is 0 up to rounding, which Adam turns into "
          f"+-lr steps; they change no output.)")


# ----------------------------------------------------------------------------- memory (run in a subprocess)

def measure_memory(args, key, batch_size):
    """Peak memory of one steady-state critic + generator step of one variant (textbook or a precision), alone in
    this process."""
    device = harness.get_device(args.device)
    G, D = build_models(args, device)
    v = Variant(key, G, D, device, textbook=key == "textbook", precision="fp32" if key == "textbook" else key)
    # steady state, cheaply: Adam state, and the gradients the textbook loop keeps between steps, from batch 1
    # (under fp16 the first steps overflow the initial loss scale and are skipped until the scale fits)
    for _ in range(20):
        v.critic(real_batches(args, 1, device, 1)[0])
        v.generator(1)
        if v.opt_g.state and v.opt_d.state:
            break
    real = real_batches(args, batch_size, device, 1)[0]
    meter = harness.MemoryMeter(device, [G, D], [v.opt_g, v.opt_d])  # after the warm-up: its hooks need start()
    sync(device)
    meter.start()
    with meter.hooks():
        v.critic(real)
        v.generator(batch_size)
    sync(device)
    return meter.report()


def memory_in_subprocess(args, key, batch_size):
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-of", key, "--batch-sizes", str(batch_size),
           "--img-size", str(args.img_size), "--width", str(args.width), "--device", args.device,
           "--seed", str(args.seed)] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        log(f"memory of {key} at batch {batch_size} failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
        return {}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- timing

def time_block(fn, n, device):
    """(wall seconds, process CPU seconds) per call of fn, over n calls."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n


def bench_batch(args, variants, batch_size, device, peaks):
    reals = real_batches(args, batch_size, device)
    turn = [0]

    def next_real():
        turn[0] += 1
        return reals[turn[0] % len(reals)]

    def warm_up(v):  # untimed; the first critic and generator steps are counted for FLOPs, compiled ones not
        if v.compiled:
            t0 = time.perf_counter()
            v.critic(next_real())
            v.generator(batch_size)
            log(f"batch {batch_size}: {v.name}: first steps (compiling) took {time.perf_counter() - t0:.0f} s")
            flops[v.name] = flops[f"ours {v.precision}"]
        else:
            fc = count_flops(lambda: v.critic(next_real()))
            fg = count_flops(lambda: v.generator(batch_size))
            flops[v.name] = {"critic": fc, "generator": fg, "iteration": args.n_critic * fc + fg}
        for _ in range(args.warmup - 1):
            v.critic(next_real())
            v.generator(batch_size)
        sync(device)

    flops = {}
    for v in variants:
        while not v.failed and v.name not in flops:
            try:
                warm_up(v)
            except Exception as e:  # torch.compile: the penalty's double backward, a missing compiler, ...
                if v.D is v.eager_D:
                    v.failed = one_line(e)
                    log(f"batch {batch_size}: {v.name}: compile failed: {v.failed}")
                else:  # compile G alone
                    v.note = f"D left eager: {one_line(e)}"
                    v.D, v.name = v.eager_D, v.name.replace("compiled", "compiled G")
                    log(f"batch {batch_size}: {v.name}: {v.note}")
        if not v.failed:
            log(f"batch {batch_size}: {v.name} warmed up ({flops[v.name]['iteration'] / 1e9:.2f} GFLOP per iteration)")
    live = [v for v in variants if not v.failed]
    samples = {v.name: {"critic": [], "generator": [], "iter": [], "cpu_iter": []} for v in live}
    for r in range(args.rounds):
        for v in live:  # interleaved: textbook, ours fp32, ours bf16, ..., textbook, ...
            tc, cc = time_block(lambda: v.critic(next_real()), args.steps, device)
            tg, cg = time_block(lambda: v.generator(batch_size), args.steps, device)
            s = samples[v.name]
            s["critic"].append(tc)
            s["generator"].append(tg)
            s["iter"].append(args.n_critic * tc + tg)
            s["cpu_iter"].append(args.n_critic * cc + cg)
            log(f"batch {batch_size} round {r + 1}/{args.rounds}: {v.name:18s} critic step {tc:.3f} s, "
                f"generator step {tg:.3f} s -> {s['iter'][-1]:.3f} s/iter (CPU {s['cpu_iter'][-1]:.3f} s)")
    rows, memory = [], {}
    text = samples["textbook"]["iter"]
    for v in variants:
        row = {"variant": v.name, "batch": batch_size, "precision": v.precision, "note": v.note}
        if v.failed:
            rows.append({**row, "failed": v.failed})
            continue
        s = samples[v.name]
        sec = harness.median(s["iter"])
        key = "textbook" if v.textbook else v.precision
        if not args.no_memory and not v.meter and not v.compiled and not v.in_backward:
            memory[key] = memory_in_subprocess(args, key, batch_size)
            log(f"batch {batch_size}: {v.name} memory {memory[key]}")
        mem = memory.get(key, {}) if not (v.compiled or v.in_backward) else {}
        peak = peaks[v.precision]
        rows.append({**row, "sec_per_iter": sec, "cpu_sec_per_iter": harness.median(s["cpu_iter"]),
                     "sec_per_critic_step": harness.median(s["critic"]),
                     "sec_per_generator_step": harness.median(s["generator"]),
                     "images_per_sec": (2 * args.n_critic + 1) * batch_size / sec,
                     "gflop_per_iter": flops[v.name]["iteration"] / 1e9,
                     "gflop_per_critic_step": flops[v.name]["critic"] / 1e9,
                     "gflop_per_generator_step": flops[v.name]["generator"] / 1e9,
                     "gflop_per_sec": flops[v.name]["iteration"] / sec / 1e9,
                     "peak_gflop_per_sec": peak / 1e9, "mfu": flops[v.name]["iteration"] / sec / peak,
                     "speedup": harness.median(text) / sec,
                     "speedup_per_round": [a / b for a, b in zip(text, s["iter"])],
                     "peak_mem_mb": mem.get("peak_mem_mb"), "peak_mem_kind": mem.get("peak_mem_kind"),
                     "peak_tensor_mb": mem.get("peak_tensor_mb"),
                     "samples_sec_per_iter": s["iter"], "samples_cpu_sec_per_iter": s["cpu_iter"]})
    return rows


def in_backward_cost(rows):
    """The step in backward against the same precision's step after backward: extra time per iteration."""
    out = []
    for r in rows:
        if r["variant"].endswith("+step in backward") and not r.get("failed"):
            name = r["variant"][:-len(" +step in backward")]
            base = next(x for x in rows if x["batch"] == r["batch"] and x["variant"] == name)
            per_round = [a / b - 1 for a, b in zip(r["samples_sec_per_iter"], base["samples_sec_per_iter"])]
            out.append({"batch": r["batch"], "variant": name, "overhead": r["sec_per_iter"] / base["sec_per_iter"] - 1,
                        "overhead_per_round": per_round})
    return out


def meter_cost(rows, watched=3, epoch_iters=25, run_epochs=100):
    """The memory meter's hooks: extra time per iteration while active, and spread over a run (active only for
    the first `watched` iterations after each start)."""
    out = []
    for r in rows:
        if r["variant"].endswith("+meter") and not r.get("failed"):
            base = next(x for x in rows if x["batch"] == r["batch"] and x["variant"] == r["variant"][:-len(" +meter")])
            ratios = [a / b - 1 for a, b in zip(r["samples_sec_per_iter"], base["samples_sec_per_iter"])]
            active = r["sec_per_iter"] / base["sec_per_iter"] - 1
            out.append({"batch": r["batch"], "variant": base["variant"], "active_overhead": active,
                        "active_overhead_per_round": ratios,
                        "active_sec_per_iter": r["sec_per_iter"] - base["sec_per_iter"],
                        "amortised_first_epoch": active * watched / epoch_iters,
                        "amortised_run": active * watched / (epoch_iters * run_epochs)})
    return out


def thesis_epoch(args, variants, device):
    """Seconds for the thesis' epoch (200 critic + 25 generator updates) per variant, alternating over rounds."""
    batch = max(args.batch_sizes)
    real = real_batches(args, batch, device, 1)[0]
    live = [v for v in variants if not v.failed and not v.meter and not v.in_backward]  # its cost: the rounds above
    per_gen = THESIS_EPOCH["critic"] // THESIS_EPOCH["generator"]

    def epoch(v):
        for _ in range(THESIS_EPOCH["generator"]):
            for _ in range(per_gen):
                v.critic(real)
            v.generator(batch)

    times = {v.name: [] for v in live}
    for r in range(args.epoch_rounds):
        for v in live:
            times[v.name].append(time_block(lambda: epoch(v), 1, device)[0])
            log(f"thesis epoch round {r + 1}/{args.epoch_rounds}: {v.name} {times[v.name][-1]:.2f} s")
    text = harness.median(times["textbook"])
    return [{"variant": name, "batch": batch, "sec_per_epoch": harness.median(t), "samples": t,
             "vs_textbook": text / harness.median(t), "vs_thesis": THESIS_EPOCH["sec"] / harness.median(t)}
            for name, t in times.items()]


# ----------------------------------------------------------------------------- output

def format_table(head, body, markdown):
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i > 1 else "---" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
    else:
        lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def speed_table(rows, device, markdown):
    head = ["variant", "batch", "s/iter", "CPU s/iter", "images/s", "GFLOP/iter", "GFLOP/s", "peak GFLOP/s", "MFU",
            "peak alloc MB" if device.type == "cuda" else "peak RSS MB", "peak tensor MB", "speed vs textbook"]

    def mb(x):
        return "-" if x is None or x != x else f"{x:,.0f}"

    def sec(x):
        return f"{x:.1f}" if x >= 1 else f"{x:.3g}"

    body = []
    for r in rows:
        if r.get("failed"):
            body.append([r["variant"], str(r["batch"]), "compile failed"] + ["-"] * (len(head) - 3))
            continue
        body.append([r["variant"], str(r["batch"]), sec(r["sec_per_iter"]), sec(r["cpu_sec_per_iter"]),
                     f"{r['images_per_sec']:.3g}", f"{r['gflop_per_iter']:.2f}", f"{r['gflop_per_sec']:.1f}",
                     f"{r['peak_gflop_per_sec']:.3g} {r.get('peak_dtype', r['precision'])}", f"{100 * r['mfu']:.1f}%",
                     mb(r["peak_mem_mb"]), mb(r["peak_tensor_mb"]), f"{r['speedup']:.2f}x"])
    return format_table(head, body, markdown)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def precision_list(text):
    names = list(dict.fromkeys(s.strip() for s in text.split(",") if s.strip()))
    if not names or any(n not in PRECISIONS for n in names):
        raise argparse.ArgumentTypeError(f"must be a comma-separated list of {', '.join(PRECISIONS)}, got {text!r}")
    return names


def build_parser():
    p = harness.ArgumentParser(prog="bench.py", description=__doc__)
    p.add_argument("--precision", type=precision_list, default=["fp32", "bf16"],
                   help="our loop at each of these autocast precisions (comma-separated: fp32,bf16,fp16)")
    p.add_argument("--batch-sizes", type=harness.positive_int, nargs="+", default=[8, 64], help="batch sizes to time")
    p.add_argument("--img-size", type=harness.image_size, default=128, help="image size (128: the thesis')")
    p.add_argument("--width", type=harness.positive_float, default=1.0, help="channel-width multiplier; 1 = thesis architecture")
    p.add_argument("--quick", action="store_true",
                   help=f"small sizes: --img-size {QUICK['img_size']} --width {QUICK['width']} --batch-sizes {QUICK['batch_sizes'][0]}")
    p.add_argument("--n-critic", type=harness.positive_int, default=5, help="critic steps per generator iteration")
    p.add_argument("--steps", type=harness.positive_int, default=None,
                   help="critic steps and generator steps timed per variant per round (None: 1 on CPU, 10 on CUDA)")
    p.add_argument("--rounds", type=harness.positive_int, default=3, help="interleaved rounds; figures are medians over them")
    p.add_argument("--warmup", type=harness.positive_int, default=1,
                   help="untimed critic + generator steps per variant and batch before timing; the first also counts FLOPs")
    p.add_argument("--compile", action="store_true", help="also time our loop with torch.compile'd G and D")
    p.add_argument("--thesis-epoch", action="store_true",
                   help="also time the thesis' epoch (200 critic + 25 generator updates at the largest batch) per variant")
    p.add_argument("--epoch-rounds", type=harness.positive_int, default=1, help="thesis epochs per variant (alternating)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=harness.positive_int, default=None, help="torch CPU threads (None: torch's choice)")
    p.add_argument("--check-batch", type=harness.positive_int, default=2,
                   help="batch size of the identical-maths check, run in float64 and float32")
    p.add_argument("--no-check", action="store_true", help="skip the identical-maths check")
    p.add_argument("--seed", type=int, default=0, help="random seed of weights and data")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for the README)")
    p.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    p.add_argument("--memory-of", choices=("textbook",) + PRECISIONS, help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:  # internal: one variant's peak memory, printed as one JSON line for the parent process
        print(json.dumps(measure_memory(args, args.memory_of, args.batch_sizes[0])))
        return
    device = harness.get_device(args.device)
    args.device = str(device)
    if args.steps is None:
        args.steps = 10 if device.type == "cuda" else 1
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    log(f"{args.img_size}x{args.img_size} width {args.width}, batch {args.batch_sizes}, {', '.join(args.precision)}, "
        f"{device} ({where}), torch {torch.__version__}")
    peaks, sizes = {}, {}
    for p in dict.fromkeys(["fp32", *args.precision]):
        peaks[p], sizes[p] = matmul_peak(DTYPES[p], device)
    log("matmul peak: " + ", ".join(f"{p} {v / 1e9:.1f} GFLOP/s (n = {sizes[p]})" for p, v in peaks.items()))

    G0, D0 = build_models(args, device)
    checks = []
    if not args.no_check:
        checks = [check_identical_maths(args, G0, D0, args.check_batch, device, dtype)
                  for dtype in (torch.float64, torch.float32)]
        print_check(checks, CHECK_TOLERANCE)
    variants = make_variants(args, G0, D0, device)
    del G0, D0
    rows = []
    for batch_size in args.batch_sizes:
        rows += bench_batch(args, variants, batch_size, device, peaks)
    for r in rows:
        r["peak_dtype"] = "tf32" if tf32 and r["precision"] == "fp32" else r["precision"]
    epochs = thesis_epoch(args, variants, device) if args.thesis_epoch else []
    costs, in_backward = meter_cost(rows), in_backward_cost(rows)

    print(f"\nWGAN-GP, {args.img_size}x{args.img_size}, width {args.width} (G {arch.count_params(variants[0].G):,} "
          f"params, D {arch.count_params(variants[0].D):,}), n_critic {args.n_critic}; {device} ({where}); "
          f"torch {torch.__version__}")
    print(f"medians of {args.rounds} interleaved rounds of {args.steps} critic + {args.steps} generator steps; "
          f"s/iter = {args.n_critic} critic steps + 1 generator step; MFU = GFLOP/s / measured matmul peak of "
          f"the variant's dtype ({', '.join(f'{p} {v / 1e9:.1f} at n = {sizes[p]}' for p, v in peaks.items())} GFLOP/s)")
    print(speed_table(rows, device, args.markdown))
    for r in rows:
        if r.get("failed"):
            print(f"{r['variant']}, batch {r['batch']}: compile failed: {r['failed']}")
            continue
        if r.get("note"):
            print(f"{r['variant']}, batch {r['batch']}: {r['note']}")
        if r["variant"] != "textbook":
            print(f"batch {r['batch']}: {r['variant']} vs textbook = {r['speedup']:.2f}x wall (per round: "
                  f"{', '.join(f'{x:.2f}' for x in r['speedup_per_round'])})")
    for c in costs:
        print(f"memory meter hooks ({c['variant']}, batch {c['batch']}): {100 * c['active_overhead']:+.1f}% per "
              f"iteration while active ({c['active_sec_per_iter']:+.3g} s; per round "
              f"{', '.join(f'{100 * x:+.1f}%' for x in c['active_overhead_per_round'])}); active only for the first 3 "
              f"iterations of a run: {100 * c['amortised_first_epoch']:+.2f}% over a 25-iteration epoch, "
              f"{100 * c['amortised_run']:+.4f}% over 100 epochs")
    for c in in_backward:
        print(f"step in backward ({c['variant']}, batch {c['batch']}): {100 * c['overhead']:+.1f}% per iteration (per "
              f"round {', '.join(f'{100 * x:+.1f}%' for x in c['overhead_per_round'])})")
    if epochs:
        print(f"\nthesis epoch: 200 critic + 25 generator updates at batch {epochs[0]['batch']}, medians of "
              f"{args.epoch_rounds} alternating round(s); thesis: {THESIS_EPOCH['sec']} s on a GTX 1660 Ti (Table 3.1; "
              f"its text gives no batch size, {THESIS_EPOCH['batch']} assumed)")
        print(format_table(["variant", "batch", "s/epoch", "vs textbook", "vs thesis 59.5 s"],
                           [[e["variant"], str(e["batch"]), f"{e['sec_per_epoch']:.2f}", f"{e['vs_textbook']:.2f}x",
                             f"{e['vs_thesis']:.2f}x"] for e in epochs], args.markdown))
    if args.json:
        harness.write_json(args.json, {"config": {k: v for k, v in vars(args).items() if k != "memory_of"},
                                       "device": str(device), "where": where, "torch": torch.__version__,
                                       "matmul_peak_gflop_per_sec": {p: v / 1e9 for p, v in peaks.items()}, "matmul_peak_n": sizes,
                                       "identical_maths": checks, "rows": rows, "meter_cost": costs,
                                       "step_in_backward_cost": in_backward,
                                       "thesis_epoch": epochs})


if __name__ == "__main__":
    harness.run_main(main)
