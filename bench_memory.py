"""Training memory, speed and size of the three methods side by side (thesis Tables 3.1-3.3).

Rows: full WGAN-GP training ("model 1" / "model 2 full"), transfer learning with the default freezing
(G layer1-2, D layer1-4 frozen), and knowledge distillation (teacher frozen, GeneratorKD student, DC-GAN D),
all at the same architecture and batch size, on random data in [-1, 1] (memory and speed do not depend on
the pixels). Each method runs in a fresh subprocess so process-level figures do not leak between rows.

Memory, two measures (see common.MemoryMeter):
  peak device  -- CUDA: torch.cuda.max_memory_allocated; CPU: the process' peak RSS above its RSS before
                  the models were built (the interpreter and torch's libraries are left out).
  peak tensors -- device-independent: parameters (frozen ones and the KD teacher included), gradients,
                  optimizer state and the activations autograd saved, at their largest sum.
Speed: median seconds per iteration over --iters timed iterations after --warmup. A WGAN-GP iteration is
--n-critic critic updates + 1 generator update; a KD iteration is 1 D + 1 student update. sec/epoch uses
the thesis' epochs: 25 WGAN-GP iterations (200 critic / 25 generator updates at n_critic 8; ours 5), 100 KD.

Examples:
    python bench_memory.py                                  # thesis architecture, 128x128, batch 8, CPU
    python bench_memory.py --batch-size 64 --device cuda    # on a GPU
    python bench_memory.py --img-size 64 --width 0.25 --iters 5 --markdown   # quick
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch

import arch
import common
import train_kd
import train_wgan

METHODS = ("full", "transfer", "kd")


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def worker(args):
    """Train one method for warmup + iters iterations; print one JSON line with its figures."""
    device = common.get_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base_rss = rss_bytes() if device.type == "cpu" else 0
    B, nz = args.batch_size, 100
    kw = dict(img_size=args.img_size, width=args.width)
    if args.method in ("full", "transfer"):
        G, D = arch.Generator(nz=nz, **kw).to(device), arch.Discriminator(**kw).to(device)
        if args.method == "transfer":
            arch.freeze_layers(G, 2)
            arch.freeze_layers(D, 4)
        models = [G, D]
        betas, lr = (0.0, 0.9), 1e-4
    else:
        teacher = arch.Generator(nz=nz, **kw).to(device).eval().requires_grad_(False)
        G, D = arch.GeneratorKD(nz=nz, **kw).to(device), arch.DCGANDiscriminator(**kw).to(device)
        models = [G, D, teacher]
        betas, lr = (0.0, 0.999), 5e-4
    opt_g = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=lr, betas=betas)
    opt_d = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=lr, betas=betas)
    meter = common.MemoryMeter(device, models, [opt_g, opt_d])
    for opt in (opt_g, opt_d):
        opt.register_step_pre_hook(lambda *a: meter.sample())
        opt.register_step_post_hook(lambda *a: meter.sample())
    real = torch.rand(B, 3, args.img_size, args.img_size, device=device) * 2 - 1

    def iteration():
        if args.method == "kd":
            z = torch.randn(B, nz, 1, 1, device=device)
            with torch.inference_mode():
                target = teacher(z)
            target = target.clone()
            fake = G(z)
            train_kd.discriminator_step(D, opt_d, real, fake)
            train_kd.student_step(D, opt_g, fake, target, 0.05)
        else:
            for _ in range(args.n_critic):
                train_wgan.critic_step(G, D, opt_d, real, nz, 10.0)
            train_wgan.generator_step(G, D, opt_g, B, nz, device)

    times = []
    meter.start()
    with meter.hooks():
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            iteration()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
    report = meter.report()
    device_peak = meter.device_peak_bytes() - base_rss
    gen = G
    print(json.dumps({
        "method": args.method, "batch_size": B, "img_size": args.img_size, "width": args.width,
        "device": str(device), "peak_device_mb": round(device_peak / 2**20, 1),
        "peak_device_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "peak_rss_above_start",
        "peak_tensor_mb": report["peak_tensor_mb"], "peak_tensor_parts_mb": report["peak_tensor_parts_mb"],
        "sec_per_iter": round(common.median(times), 4), "sec_per_epoch": round(common.median(times) * (100 if args.method == "kd" else 25), 2),
        "params_total": sum(arch.count_params(m) for m in models),
        "params_trainable": sum(arch.count_params(m, trainable_only=True) for m in (G, D)),
        "generator_params": arch.count_params(gen), "generator_mb": common.model_file_mb(gen),
    }), flush=True)


LABELS = {"full": "full training (model 1 / model 2 full)", "transfer": "transfer (G 2 + D 4 frozen)",
          "kd": "knowledge distillation (alpha 0.05)"}
THESIS_GB = {"full": 4.03, "transfer": 1.45, "kd": 1.89}


def markdown(rows):
    full = {r["method"]: r for r in rows}.get("full")
    out = ["| method | peak device MB | peak tensors MB | vs full (tensors) | vs full (device) | thesis vs full | "
           "s/iter | s/epoch | params total / trainable | generator file MB |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio_t = r["peak_tensor_mb"] / full["peak_tensor_mb"] if full else float("nan")
        ratio_d = r["peak_device_mb"] / full["peak_device_mb"] if full else float("nan")
        out.append(f"| {LABELS[r['method']]} | {r['peak_device_mb']:.0f} | {r['peak_tensor_mb']:.0f} | {ratio_t:.2f}x | "
                   f"{ratio_d:.2f}x | {THESIS_GB[r['method']] / THESIS_GB['full']:.2f}x | {r['sec_per_iter']:.2f} | "
                   f"{r['sec_per_epoch']:.1f} | {r['params_total'] / 1e6:.2f}M / {r['params_trainable'] / 1e6:.2f}M | "
                   f"{r['generator_mb']:.1f} |")
    return "\n".join(out)


def main():
    p = common.ArgumentParser(prog="bench_memory.py", description=__doc__)
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--img-size", type=common.image_size, default=128)
    p.add_argument("--width", type=common.positive_float, default=1.0)
    p.add_argument("--batch-size", type=common.positive_int, default=8)
    p.add_argument("--n-critic", type=common.positive_int, default=5)
    p.add_argument("--iters", type=common.positive_int, default=3, help="timed iterations per method (default: %(default)s)")
    p.add_argument("--warmup", type=common.nonneg_int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=common.positive_int, default=None)
    p.add_argument("--markdown", action="store_true", help="print a README-ready table")
    p.add_argument("--json", default=None, help="write the rows to this file")
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # internal: run one method
    args = p.parse_args()
    if args.method:
        return worker(args)
    common.get_device(args.device)  # fail early on a bad --device
    rows = []
    for method in args.methods:
        print(f"[bench_memory] {method} ...", file=sys.stderr, flush=True)
        cmd = [sys.executable, os.path.abspath(__file__), "--method", method] + sys.argv[1:]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise common.UserError(f"{method} failed: {(res.stderr.strip().splitlines() or ['?'])[-1]}")
        rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    if args.json:
        common.write_json(args.json, rows)
    print(markdown(rows) if args.markdown else json.dumps(rows, indent=2))


if __name__ == "__main__":
    common.run_main(main)
