"""Benchmark our WGAN-GP training steps (train_wgan.py) against the textbook loop, on the thesis architecture.

Two variants of the same maths (WGAN-GP, lambda 10, n_critic 5, Adam(1e-4, (0, 0.9)), fresh z and eps each step):
    textbook  the loop of most public WGAN-GP repositories: per critic step D.zero_grad(), fake = G(z).detach()
              (the generator's graph is built, then dropped), D(real).backward(-1), D(fake).backward(+1), the
              penalty on D(interp) through autograd.grad(create_graph=True, retain_graph=True) and its own
              backward, `.item()` of every loss every step; in the generator step the critic's parameters still
              require a gradient (their gradients are computed and thrown away)
    ours      train_wgan.critic_step / generator_step exactly as train_wgan.train calls them: one critic forward on
              cat([real, fake]), G under no_grad in the critic step, critic parameters frozen in the generator
              step, one backward per step, no `.item()`, gradients freed right after each optimizer step

Identical maths, checked before timing: both variants run one generator iteration (n_critic critic steps + 1
generator step) from the same initial weights and RNG seed, at --check-batch, in float64 and in float32; the bench
prints how far apart the losses, weights and outputs end. float64 must agree to 1e-9 (PASS/FAIL). float32 ends
~1e-4 apart at the thesis size: Adam's first steps are about lr * sign(gradient), so rounding differences flip the
step of weights whose gradient is near 0; that float64 agrees to ~1e-12 shows it is rounding, not maths.

Timing: in one process, the variants alternate (textbook, ours, textbook, ours, ...) for --rounds rounds; in
each round a variant runs --steps critic steps and --steps generator steps, each block timed (CUDA synchronised
before every clock read). One full generator iteration of the thesis model at batch 64 takes minutes on a small
CPU, so a round times steps, not whole iterations, and
    s/iter   = n_critic * (critic block / steps) + (generator block / steps), median over the rounds
    CPU s/iter   the same in process CPU time (all threads): on a machine shared with other jobs it tracks the
               work done, while wall time also counts the waits for a free core
    images/s = (2 n_critic + 1) * batch / (s/iter): each critic step consumes `batch` real and `batch` generated
               images, the generator step generates `batch` more
    GFLOP/s  = FLOPs of one textbook iteration / (s/iter), for both variants (the same useful work, so the
               GFLOP/s ratio is the speed ratio); FLOPs are counted once per batch size with
               torch.utils.flop_counter (convolutions and their gradients; element-wise work is not counted)
Memory, for each variant and batch in a fresh subprocess (so the other variant's models are not in it): the
process peak RSS on CPU (VmHWM) or torch.cuda.max_memory_allocated on CUDA, and common.MemoryMeter's
device-independent peak of parameters + gradients + Adam state + saved activations, over one critic and one
generator step in steady state (Adam state and the gradients the textbook loop keeps between steps already
exist: made by one step at batch 1 before the meter starts).

Data: random tensors in [-1, 1] (no dataset needed: the speed of a training step does not depend on the pixels).

    python bench.py                       # thesis architecture, 128x128, batch 8 and 64: 10-20 min on 2 CPU cores
    python bench.py --threads 1           # on a CPU shared with other jobs: one thread is faster and steadier
    python bench.py --img-size 32 --width 0.25 --rounds 2      # a smoke run (about a minute)
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
import common
import train_wgan

NZ = 100
LR, BETAS = 1e-4, (0.0, 0.9)
LAMBDA_GP = 10.0
VARIANTS = ("textbook", "ours")
CHECK_TOLERANCE = 1e-9  # float64


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
    """G, D and their Adam optimizers, stepped the textbook way or ours."""

    def __init__(self, name, G, D):
        self.name, self.G, self.D = name, G, D
        self.opt_g = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=LR, betas=BETAS)
        self.opt_d = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=LR, betas=BETAS)
        self.device = next(G.parameters()).device
        G.train()
        D.train()

    def critic(self, real):
        """One critic step; returns (d_loss, wasserstein, gp) as floats (ours: tensors, read only when asked)."""
        if self.name == "textbook":
            return textbook_critic_step(self.G, self.D, self.opt_d, real, NZ, LAMBDA_GP)
        return train_wgan.critic_step(self.G, self.D, self.opt_d, real, NZ, LAMBDA_GP)

    def generator(self, batch_size):
        if self.name == "textbook":
            return textbook_generator_step(self.G, self.D, self.opt_g, batch_size, NZ, self.device)
        return train_wgan.generator_step(self.G, self.D, self.opt_g, batch_size, NZ, self.device)


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


T0 = time.time()


def log(msg):
    """Progress, to stderr."""
    print(f"[{time.time() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


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
    """The steps draw z, eps and the textbook's +-1 in the default dtype: make it the models' one."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def check_identical_maths(args, G0, D0, batch_size, device, dtype):
    """One generator iteration of each variant, in `dtype`, from the same weights and RNG seed: how close they end."""
    with default_dtype(dtype):
        reals = [r.to(dtype) for r in real_batches(args, batch_size, device)]
        variants, losses = {}, {}
        for name in VARIANTS:
            v = Variant(name, copy.deepcopy(G0).to(dtype), copy.deepcopy(D0).to(dtype))
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
    print(f"identical maths: one generator iteration ({r64['n_losses'] // 3} critic + 1 generator step) of each "
          f"variant from the same weights and RNG seed, batch {r64['batch']}: "
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
    if len(reports) > 1:
        print("  float32 ends further apart: Adam's first steps move every weight by about lr * sign(gradient), so a "
              "weight whose gradient is near 0 can step either way under a different summation order, and the "
              "later steps see that. float64 shows it is rounding, not maths.")


# ----------------------------------------------------------------------------- memory (run in a subprocess)

def measure_memory(args, name, batch_size):
    """Peak memory of one steady-state critic + generator step of one variant, alone in this process."""
    device = common.get_device(args.device)
    G, D = build_models(args, device)
    v = Variant(name, G, D)
    meter = common.MemoryMeter(device, [G, D], [v.opt_g, v.opt_d])
    for opt in (v.opt_g, v.opt_d):  # as common.Run does: gradients and Adam state both exist around a step
        opt.register_step_pre_hook(lambda *a: meter.sample())
        opt.register_step_post_hook(lambda *a: meter.sample())
    # steady state, cheaply: Adam state, and the gradients the textbook loop keeps between steps, from batch 1
    v.critic(real_batches(args, 1, device, 1)[0])
    v.generator(1)
    real = real_batches(args, batch_size, device, 1)[0]
    sync(device)
    meter.start()
    with meter.hooks():
        v.critic(real)
        v.generator(batch_size)
    sync(device)
    return meter.report()


def memory_in_subprocess(args, name, batch_size):
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-of", name, "--batch-sizes", str(batch_size),
           "--img-size", str(args.img_size), "--width", str(args.width), "--device", args.device,
           "--seed", str(args.seed)] + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        log(f"memory of {name} at batch {batch_size} failed:\n{proc.stderr.strip()}")
        return {"peak_mem_mb": float("nan"), "peak_tensor_mb": float("nan")}
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


def bench_batch(args, variants, batch_size, device):
    reals = real_batches(args, batch_size, device)
    turn = [0]

    def next_real():
        turn[0] += 1
        return reals[turn[0] % len(reals)]

    flops = {}
    for name, v in variants.items():
        # warm-up (untimed); its first critic and generator steps are counted for FLOPs
        fc = count_flops(lambda: v.critic(next_real()))
        fg = count_flops(lambda: v.generator(batch_size))
        flops[name] = {"critic": fc, "generator": fg, "iteration": args.n_critic * fc + fg}
        for _ in range(args.warmup - 1):
            v.critic(next_real())
            v.generator(batch_size)
        sync(device)
        log(f"batch {batch_size}: {name} warmed up ({flops[name]['iteration'] / 1e9:.1f} GFLOP per iteration)")
    samples = {name: {"critic": [], "generator": [], "iter": [], "cpu_iter": []} for name in variants}
    for r in range(args.rounds):
        for name, v in variants.items():  # interleaved: textbook, ours, textbook, ours, ...
            tc, cc = time_block(lambda: v.critic(next_real()), args.steps, device)
            tg, cg = time_block(lambda: v.generator(batch_size), args.steps, device)
            s = samples[name]
            s["critic"].append(tc)
            s["generator"].append(tg)
            s["iter"].append(args.n_critic * tc + tg)
            s["cpu_iter"].append(args.n_critic * cc + cg)
            log(f"batch {batch_size} round {r + 1}/{args.rounds}: {name:8s} critic step {tc:.3f} s, "
                f"generator step {tg:.3f} s -> {s['iter'][-1]:.2f} s/iter (CPU {s['cpu_iter'][-1]:.2f} s)")
    rows = []
    useful = flops["textbook"]["iteration"]
    for name in variants:
        s = samples[name]
        sec = common.median(s["iter"])
        mem = memory_in_subprocess(args, name, batch_size) if not args.no_memory else {}
        if mem:
            log(f"batch {batch_size}: {name} peak memory {mem['peak_mem_mb']} MB, tensors {mem['peak_tensor_mb']} MB")
        rows.append({"variant": name, "batch": batch_size, "sec_per_iter": sec,
                     "cpu_sec_per_iter": common.median(s["cpu_iter"]),
                     "sec_per_critic_step": common.median(s["critic"]),
                     "sec_per_generator_step": common.median(s["generator"]),
                     "images_per_sec": (2 * args.n_critic + 1) * batch_size / sec,
                     "gflop_per_sec": useful / sec / 1e9,
                     "gflop_per_iter_counted": flops[name]["iteration"] / 1e9,
                     "gflop_per_critic_step": flops[name]["critic"] / 1e9,
                     "gflop_per_generator_step": flops[name]["generator"] / 1e9,
                     "peak_mem_mb": mem.get("peak_mem_mb"), "peak_mem_kind": mem.get("peak_mem_kind"),
                     "peak_tensor_mb": mem.get("peak_tensor_mb"),
                     "samples_sec_per_iter": s["iter"], "samples_cpu_sec_per_iter": s["cpu_iter"]})
    t, o = rows
    o["speedup"] = t["sec_per_iter"] / o["sec_per_iter"]
    o["speedup_cpu"] = t["cpu_sec_per_iter"] / o["cpu_sec_per_iter"]
    t["speedup"] = t["speedup_cpu"] = 1.0
    o["speedup_per_round"] = [a / b for a, b in zip(t["samples_sec_per_iter"], o["samples_sec_per_iter"])]
    return rows


# ----------------------------------------------------------------------------- output

def format_table(rows, device, markdown):
    mem_name = "peak alloc MB" if device.type == "cuda" else "peak RSS MB"
    head = ["variant", "batch", "s/iter", "CPU s/iter", "images/s", "GFLOP/s", mem_name, "peak tensor MB",
            "speed vs textbook"]

    def mb(x):
        return "-" if x is None or x != x else f"{x:,.0f}"

    def sec(x):
        return f"{x:.1f}" if x >= 1 else f"{x:.3g}"

    body = [[r["variant"], str(r["batch"]), sec(r["sec_per_iter"]), sec(r["cpu_sec_per_iter"]),
             f"{r['images_per_sec']:.3g}",
             f"{r['gflop_per_sec']:.1f}", mb(r["peak_mem_mb"]), mb(r["peak_tensor_mb"]),
             f"{r['speedup']:.2f}x"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i > 1 else "---" for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in body]
    else:
        lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
        lines += ["  ".join(x.rjust(w) for x, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build_parser():
    p = common.ArgumentParser(prog="bench.py", description=__doc__)
    p.add_argument("--batch-sizes", type=common.positive_int, nargs="+", default=[8, 64], help="(default: %(default)s)")
    p.add_argument("--img-size", type=common.image_size, default=128, help="(default: %(default)s, the thesis')")
    p.add_argument("--width", type=common.positive_float, default=1.0, help="channel-width multiplier; 1 = thesis architecture (default: %(default)s)")
    p.add_argument("--n-critic", type=common.positive_int, default=5, help="critic steps per generator iteration (default: %(default)s)")
    p.add_argument("--steps", type=common.positive_int, default=None,
                   help="critic steps and generator steps timed per variant per round (default: 1 on CPU, 10 on CUDA)")
    p.add_argument("--rounds", type=common.positive_int, default=3, help="interleaved rounds; figures are medians over them (default: %(default)s)")
    p.add_argument("--warmup", type=common.positive_int, default=1,
                   help="untimed critic + generator steps per variant and batch before timing; the first also counts FLOPs (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    p.add_argument("--threads", type=common.positive_int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--check-batch", type=common.positive_int, default=2,
                   help="batch size of the identical-maths check, run in float64 and float32 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses (saves a third of the time)")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    p.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    p.add_argument("--memory-of", choices=VARIANTS, help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_of:  # internal: one variant's peak memory, printed as one JSON line for the parent process
        print(json.dumps(measure_memory(args, args.memory_of, args.batch_sizes[0])))
        return
    device = common.get_device(args.device)
    args.device = str(device)
    if args.steps is None:
        args.steps = 10 if device.type == "cuda" else 1
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    log(f"{args.img_size}x{args.img_size} width {args.width}, batch {args.batch_sizes}, {device} ({where}), torch {torch.__version__}")

    G0, D0 = build_models(args, device)
    checks = [check_identical_maths(args, G0, D0, args.check_batch, device, dtype)
              for dtype in (torch.float64, torch.float32)]
    print_check(checks, CHECK_TOLERANCE)
    variants = {name: Variant(name, copy.deepcopy(G0), copy.deepcopy(D0)) for name in VARIANTS}
    del G0, D0
    rows = []
    for batch_size in args.batch_sizes:
        rows += bench_batch(args, variants, batch_size, device)

    print(f"\nWGAN-GP, {args.img_size}x{args.img_size}, width {args.width} (G {arch.count_params(variants['ours'].G):,} "
          f"params, D {arch.count_params(variants['ours'].D):,}), n_critic {args.n_critic}; {device} ({where}); "
          f"torch {torch.__version__}")
    print(f"medians of {args.rounds} interleaved rounds of {args.steps} critic + {args.steps} generator steps; "
          f"s/iter = {args.n_critic} critic steps + 1 generator step")
    print(format_table(rows, device, args.markdown))
    for batch_size in args.batch_sizes:
        t, o = [r for r in rows if r["batch"] == batch_size]
        print(f"batch {batch_size}: textbook/ours = {o['speedup']:.2f}x wall (per round: "
              f"{', '.join(f'{x:.2f}' for x in o['speedup_per_round'])}), {o['speedup_cpu']:.2f}x CPU time; "
              f"GFLOP counted per iteration: textbook "
              f"{t['gflop_per_iter_counted']:.1f}, ours {o['gflop_per_iter_counted']:.1f}")
    if args.json:
        common.write_json(args.json, {"config": {k: v for k, v in vars(args).items() if k != "memory_of"},
                                      "device": str(device), "where": where, "torch": torch.__version__,
                                      "identical_maths": checks, "rows": rows})


if __name__ == "__main__":
    common.run_main(main)
