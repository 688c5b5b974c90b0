"""Training memory of full training, transfer learning and distillation side by side (thesis Tables 3.1-3.3).

Rows, each trained for --warmup + --iters iterations in a fresh subprocess (process figures do not leak between
rows) on random data in [-1, 1] (memory does not depend on the pixels), thesis architecture by default:
    full torch.Adam  full WGAN-GP training with torch.optim.Adam in fp32: the thesis' baseline
    full             the same with harness.Adam, as train_wgan.py trains (betas (0, 0.9): no first moment kept)
    transfer fp32    train_transfer.py's default freezing (G layer1-2; D all blocks but the last block and the
                     output layer, -2), frozen weights kept in fp32
    transfer bf16    the same, frozen weights stored in bf16 (train_transfer.py's default --frozen-dtype)
    KD fp32          train_kd.py: frozen teacher, GeneratorKD student, DC-GAN discriminator, teacher in fp32
    KD bf16          the same, teacher stored in bf16 (train_kd.py's default --teacher-dtype)
The iterations are the scripts' own (train_wgan.iteration: --n-critic critic steps and a generator step;
train_kd.iteration: the teacher under inference_mode, a discriminator and a student step), autocast at
--precision (the baseline always fp32), no DiffAugment, no EMA (the thesis had none; the scripts' --ema adds one
generator copy). Every row but the baseline runs twice, as the scripts run with --no-step-in-backward and with
--step-in-backward (their default in one process; harness.StepInBackward: each parameter's Adam update inside
backward, its gradient freed at once);
--step-in-backward / --no-step-in-backward keep one of the two.

Memory (harness.MemoryMeter, over the first 3 iterations, the steady state included):
    peak tensors  device-independent: parameters and buffers (frozen ones and the teacher included), gradients,
                  optimizer state and the activations autograd saved, at their largest sum
    peak device   CUDA: torch.cuda.max_memory_allocated; CPU: the peak RSS above the RSS before the models
                  were built (interpreter and libraries left out, allocator slack in)
    parts         the peak's split: weights (parameters and buffers) / gradients / optimizer state / activations
    floor         weights + optimizer state + the gradients that must exist at one time (the larger network's
                  after its backward, as each step frees its own; with the step in backward the largest single
                  one), in bytes: what training of that model keeps however small its batch
Ratios: against the thesis' baseline (full torch.Adam, fp32) and against full training at the same settings
(harness.Adam, --precision, the same step); "thesis vs full" is the thesis' own ratio (Table 3.3). Below the
table, one line per row but the baseline splits its floor into its parts. s/iter: median of the --iters timed
iterations (a WGAN-GP iteration is --n-critic critic + 1 generator update, a KD iteration 1 D + 1 student update).

Activation checkpointing is left out: the generator's BatchNorm would update its running statistics again
when a block is recomputed, and the critic's blocks sit inside the gradient penalty's double backward; and
no training script offers it, so a figure here would describe no configuration anyone can run.

    python bench_memory.py --threads 1 --markdown            # thesis architecture, 128x128, batch 8, CPU
    python bench_memory.py --device cuda --markdown          # on a GPU
    python bench_memory.py --img-size 32 --width 0.125 --iters 1 --markdown   # a few seconds
"""
import argparse
import itertools
import json
import os
import subprocess
import sys
import time

import torch

import arch
import harness
import train_kd
import train_wgan

ROWS = ("full-torch-adam", "full", "transfer-fp32", "transfer-bf16", "kd-fp32", "kd-bf16")
LABELS = {"full-torch-adam": "full torch.Adam (thesis baseline)", "full": "full (harness.Adam)",
          "transfer-fp32": "transfer, frozen fp32", "transfer-bf16": "transfer, frozen bf16",
          "kd-fp32": "KD, teacher fp32", "kd-bf16": "KD, teacher bf16"}
THESIS_VS_FULL = {"full": 1.0, "transfer": 1.45 / 4.03, "kd": 1.89 / 4.03}  # Table 3.3, GB
NZ = 100


def rss_bytes():
    with open("/proc/self/status") as f:
        return next((int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:")), 0)


def tensor_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def worker(args):
    """Train one row's method; print one JSON line with its figures."""
    device = harness.get_device(args.device)
    method = args.row.split("-")[0]
    precision = "fp32" if args.row == "full-torch-adam" else args.precision
    env = harness.Env(device, precision=precision)
    torch.manual_seed(0)
    base_rss = rss_bytes() if device.type == "cpu" else 0
    B, kw = args.batch_size, dict(img_size=args.img_size, width=args.width)
    if method in ("full", "transfer"):
        G, D = arch.Generator(nz=NZ, **kw).to(device), arch.Discriminator(**kw).to(device)
        if method == "transfer":
            arch.freeze_layers(G, 2)
            arch.freeze_layers(D, -2)
            if args.row.endswith("bf16"):
                arch.store_frozen(G)
                arch.store_frozen(D)
        models, lr, betas = [G, D], 1e-4, (0.0, 0.9)
    else:
        teacher = arch.Generator(nz=NZ, **kw).to(device).eval().requires_grad_(False)
        if args.row.endswith("bf16"):
            arch.store_frozen(teacher, blocks=len(teacher.layers()))
        G, D = arch.GeneratorKD(nz=NZ, **kw).to(device), arch.DCGANDiscriminator(**kw).to(device)
        models, lr, betas = [G, D, teacher], 5e-4, (0.0, 0.999)
    adam = torch.optim.Adam if args.row == "full-torch-adam" else harness.Adam
    opt_g, opt_d = adam(harness.trainable(G), lr=lr, betas=betas), adam(harness.trainable(D), lr=lr, betas=betas)
    in_backward = bool(args.step_in_backward) and args.row != "full-torch-adam"
    step_g, step_d = (harness.StepInBackward(o, env) if in_backward else o for o in (opt_g, opt_d))
    scaler_g, scaler_d = env.scaler(), env.scaler()
    ema = harness.EMA(G, args.ema) if args.ema and args.row != "full-torch-adam" else None  # as the scripts keep it
    meter = harness.MemoryMeter(device, models + ([ema.model] if ema else []), [opt_g, opt_d])
    step_args = argparse.Namespace(nz=NZ, lambda_gp=10.0, batch_size=B)
    real = torch.rand(B, 3, args.img_size, args.img_size, device=device) * 2 - 1
    G.train()
    D.train()

    def iteration():  # the scripts' own iterations
        if method == "kd":
            train_kd.iteration(G, D, teacher, step_g, step_d, scaler_g, scaler_d, real, 0.05, env)
        else:
            train_wgan.iteration(G, D, step_g, step_d, scaler_g, scaler_d, itertools.repeat(real), args.n_critic,
                                 step_args, env)

    times = []
    meter.start()
    for i in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        with meter.hooks():
            iteration()
        if ema:
            ema.update(G, (i + 1) * B, B)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        print(f"[{args.row}] iteration {i + 1}: {time.perf_counter() - t0:.2f} s", file=sys.stderr, flush=True)
    report = meter.report()
    trainable = [p for m in (G, D) for p in harness.trainable(m)]
    per_network = [tensor_bytes(harness.trainable(m)) for m in (G, D)]  # each step frees its network's gradients
    state = [v for o in (opt_g, opt_d) for s in o.state.values() for v in s.values()
             if isinstance(v, torch.Tensor) and v.numel() > 1]
    grads = max(tensor_bytes([p]) for p in trainable) if in_backward else max(per_network)
    floor = {"params": sum(arch.param_bytes(m) for m in models), "grads": grads, "optimizer": tensor_bytes(state)}
    print(json.dumps({
        "row": args.row, "method": method, "precision": precision, "optimizer": adam.__module__ + "." + adam.__name__,
        "step_in_backward": in_backward,
        "batch_size": B, "img_size": args.img_size, "width": args.width, "device": str(device),
        "peak_device_mb": round((meter.device_peak_bytes() - base_rss) / 2**20, 1),
        "peak_device_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "peak_rss_above_start",
        "peak_tensor_mb": report["peak_tensor_mb"], "peak_tensor_parts_mb": report["peak_tensor_parts_mb"],
        "floor_mb": round(sum(floor.values()) / 2**20, 1), "floor_parts_mb": {k: round(v / 2**20, 1) for k, v in floor.items()},
        "sec_per_iter": round(harness.median(times), 4),
        "params_total": sum(arch.count_params(m) for m in models),
        "params_trainable": sum(arch.count_params(m, trainable_only=True) for m in (G, D)),
        "generator_params": arch.count_params(G), "generator_mb": round(arch.param_bytes(G) / 2**20, 1),
    }), flush=True)


def add_ratios(rows):
    """Each row against the thesis' baseline (full torch.Adam fp32) and against full training at its settings."""
    by = {(r["row"], r["step_in_backward"]): r for r in rows}
    base = by.get(("full-torch-adam", False))
    for r in rows:
        full = by.get(("full", r["step_in_backward"]))
        for key, ref in (("vs_baseline", base), ("vs_full", full)):
            for what in ("tensor", "device"):
                r[f"{what}_{key}"] = r[f"peak_{what}_mb"] / ref[f"peak_{what}_mb"] if ref else None
            r[f"floor_{key}"] = r["floor_mb"] / ref["peak_tensor_mb"] if ref else None
    return rows


def table(rows, markdown):
    head = ["method", "precision", "peak tensors MB", "weights / grads / optimizer / activations MB", "vs baseline",
            "vs full (same settings)", "thesis vs full", "floor MB", "floor vs baseline", "peak device MB",
            "device vs baseline", "s/iter", "params total / trainable", "generator MB"]

    def ratio(x):
        return "-" if x is None else f"{x:.2f}x"

    def mb(x):
        return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"

    body = [[label(r), r["precision"], mb(r["peak_tensor_mb"]),
             " / ".join(mb(r["peak_tensor_parts_mb"].get(k, 0)) for k in ("params", "grads", "optimizer", "activations")),
             ratio(r["tensor_vs_baseline"]), ratio(r["tensor_vs_full"]), f"{THESIS_VS_FULL[r['method']]:.2f}x",
             mb(r["floor_mb"]),
             ratio(r["floor_vs_baseline"]),
             mb(r["peak_device_mb"]), ratio(r["device_vs_baseline"]), f"{r['sec_per_iter']:.3g}",
             f"{r['params_total'] / 1e6:.2f}M / {r['params_trainable'] / 1e6:.2f}M", f"{r['generator_mb']:.1f}"]
            for r in rows]
    if markdown:
        return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(b) + " |" for b in body])
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(x.rjust(w) for x, w in zip(line, widths)) for line in [head] + body)


def floors(rows):
    """One line per row but the baseline: its floor's parts, and the gradients and activations at its peak."""
    lines = []
    for r in rows:
        if r["row"] != "full-torch-adam":
            parts = ", ".join(f"{k} {v:,.1f}" for k, v in r["floor_parts_mb"].items())
            baseline = "" if r["floor_vs_baseline"] is None else f" = {r['floor_vs_baseline']:.2f}x of the baseline"
            lines.append(f"{label(r)}: floor (params + grads + optimizer state: {parts} MB) = "
                         f"{r['floor_mb']:,.1f} MB{baseline}; the {r['peak_tensor_mb']:,.1f} MB peak holds "
                         f"{r['peak_tensor_parts_mb'].get('grads', 0):,.1f} MB of gradients and "
                         f"{r['peak_tensor_parts_mb'].get('activations', 0):,.1f} MB of activations")
    return lines


def label(row):
    return LABELS[row["row"]] + (", step in backward" if row["step_in_backward"] else "")


def build_parser():
    p = harness.ArgumentParser(prog="bench_memory.py", description=__doc__)
    p.add_argument("--ema", type=float, default=0, metavar="IMAGES",
                   help="keep the scripts' EMA of the generator (its half-life) in every row but the baseline; 0 = none")
    p.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="which rows to run")
    p.add_argument("--img-size", type=harness.image_size, default=128, help="image size (128: the thesis')")
    p.add_argument("--width", type=harness.positive_float, default=1.0, help="channel-width multiplier; 1 = thesis architecture")
    p.add_argument("--batch-size", type=harness.positive_int, default=8, help="images per step (the thesis' KD code: 8)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast of every row but the baseline (always fp32)")
    p.add_argument("--step-in-backward", action=argparse.BooleanOptionalAction, default=None,
                   help="every row but the baseline with the optimizer step inside backward (the scripts' "
                        "--step-in-backward); --no-step-in-backward: without; unset: each row both ways")
    p.add_argument("--n-critic", type=harness.positive_int, default=5, help="critic updates per WGAN-GP iteration")
    p.add_argument("--iters", type=harness.positive_int, default=2, help="timed iterations per row (the meter watches the first 3 in all)")
    p.add_argument("--warmup", type=harness.nonneg_int, default=1, help="untimed iterations first")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=harness.positive_int, default=None, help="torch CPU threads (None: torch's choice)")
    p.add_argument("--markdown", action="store_true", help="print a README-ready table")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--row", choices=ROWS, help=argparse.SUPPRESS)  # internal: run one row
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.row:
        return worker(args)
    args.device = str(harness.get_device(args.device))  # fail early on a bad --device
    if args.warmup + args.iters < 2:
        raise harness.UserError("--warmup + --iters must be at least 2: the steady state (optimizer state "
                                "allocated) starts at the second iteration")
    modes = [False, True] if args.step_in_backward is None else [args.step_in_backward]
    if args.precision == "fp16" and True in modes:  # the loss scaler's skipped steps need every gradient at once
        if args.step_in_backward:
            raise harness.UserError("--step-in-backward cannot run with --precision fp16 (see train_wgan.py --help)")
        print("note: --precision fp16: no rows with the step in backward (it refuses fp16)", file=sys.stderr)
        modes = [False]
    rows = []
    for row in args.rows:
        for in_backward in modes if row != "full-torch-adam" else [False]:
            print(f"[bench_memory] {row}{' in backward' if in_backward else ''} ...", file=sys.stderr, flush=True)
            cmd = [sys.executable, os.path.abspath(__file__), *argv, "--row", row, "--device", args.device,
                   "--step-in-backward" if in_backward else "--no-step-in-backward"]
            res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
            if res.returncode != 0:
                raise harness.UserError(f"row {row} failed (exit status {res.returncode}; its error is above)")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    add_ratios(rows)
    if args.json:
        harness.write_json(args.json, rows)
    print(f"thesis architecture at {args.img_size}x{args.img_size}, width {args.width}, batch {args.batch_size}, "
          f"{args.device}, autocast {args.precision} (baseline fp32); tensors: harness.MemoryMeter; device: "
          f"{'max_memory_allocated' if args.device.startswith('cuda') else 'peak RSS above start'}")
    print(table(rows, args.markdown))
    for line in floors(rows):
        print(line)


if __name__ == "__main__":
    harness.run_main(main)
