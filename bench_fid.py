"""Time compute_fid.py against `python -m pytorch_fid` on the same two folders, and check that the FIDs agree.

Default: 500 random images of /work/shared/data/cat-faces-64 vs 500 of /work/shared/data/dog-faces-224 (the
thesis' 500 vs 500), copied into a temp folder. Each round runs, one after the other:
  1. python -m pytorch_fid A B             FID only (pytorch-fid's defaults, --device as given)
  2. python compute_fid.py A B             FID + KID
  3. python compute_fid.py --save-stats B B.npz   cache the reference side once
  4. python compute_fid.py A B.npz         FID + KID against the cache: only A goes through Inception
  5. python compute_fid.py A B --no-channels-last   FID + KID in pytorch-fid's NCHW layout: its bits exactly
                                           (the default NHWC layout equals it to float rounding, shown)
Rounds repeat --repeats times, interleaved, so a machine that gets busier part-way slows every command alike,
and 1 and 2 swap places every other round (on a shared machine whose load drifts, going first is not neutral);
the table shows medians. All are separate processes timed by wall clock (imports and model loading included).

--layouts instead compares, in one process, the Inception of the training-time evaluator and of
compute_fid.py in three forms on the same images: NCHW fp32 (pytorch-fid's), NHWC fp32 (the default) and
NHWC under bf16 autocast (`--eval-fast`): images/s (median of interleaved rounds), the largest relative
feature difference and the FID of A against B for each.

Examples:
    python bench_fid.py                                   # 500 cats vs 500 dogs, 3 rounds, CPU
    python bench_fid.py --layouts --n 500 --repeats 3     # Inception layouts and precisions
    python bench_fid.py --n 200 --repeats 1               # quicker
    python bench_fid.py --a samples/model1 --b data/real_500 --device cuda
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import harness
from harness import UserError

ROOT = os.path.dirname(os.path.abspath(__file__))
SHARED = "/work/shared/data"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option; the description and examples keep their line breaks."""


def copy_subset(src, dst, n, seed):
    """The n files compute_fid.py --max-images n --seed seed would pick from src, copied to dst."""
    import compute_fid  # heavy (torch): only when we actually copy
    if not os.path.isdir(src):
        raise UserError(f"{src}: no such folder (give --a/--b folders, or --src-a/--src-b to sample from)")
    files = compute_fid.subsample(compute_fid.list_images(src), n, seed)
    if len(files) < n:
        raise UserError(f"{src} has only {len(files)} images, --n is {n}")
    os.makedirs(dst)
    for f in files:
        shutil.copy2(f, dst)
    return dst


def timed(cmd):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {last}")
    return seconds, proc.stdout


def compare_layouts(args):
    """NCHW fp32 vs NHWC fp32 vs NHWC bf16 on the same images of A, each scored against B."""
    import numpy as np
    import torch
    import compute_fid as cf
    files_a = cf.subsample(cf.list_images(args.a or args.src_a), args.n, args.seed)
    files_b = cf.subsample(cf.list_images(args.b or args.src_b), args.n, args.seed)
    images = torch.stack([torch.from_numpy(np.array(cf.read_rgb(f))).permute(2, 0, 1) for f in files_a])
    exact = cf.load_inception(device=args.device)
    ref = cf.folder_stats(files_b, exact, device=args.device, num_workers=0, quiet=True)
    modes = {"NCHW fp32 (pytorch-fid)": (exact, False),
             "NHWC fp32 (default)": (cf.load_inception(device=args.device, channels_last=True), False),
             "NHWC bf16 (--eval-fast)": (cf.load_inception(device=args.device, channels_last=True), True)}
    speeds, feats = {k: [] for k in modes}, {}
    print(f"{len(images)} images of {args.a or args.src_a} vs {len(files_b)} of {args.b or args.src_b}; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    for r in range(args.repeats):
        for name, (model, bf16) in modes.items():
            t0 = time.perf_counter()
            with torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16, enabled=bf16):
                feats[name] = cf.image_features(images, model, device=args.device)
            speeds[name].append(len(images) / (time.perf_counter() - t0))
    print("| Inception | images/s (median) | max relative feature difference | FID A vs B | FID difference |\n|---|---|---|---|---|")
    base = feats["NCHW fp32 (pytorch-fid)"]
    fid0 = cf.score(base, ref)["fid"]
    for name in modes:
        rel = float(np.abs(feats[name] - base).max() / np.abs(base).max())
        fid = cf.score(feats[name], ref)["fid"]
        print(f"| {name} | {harness.median(speeds[name]):.2f} | {rel:.1e} | {fid:.6f} | {fid - fid0:+.2g} |")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


def main():
    p = harness.ArgumentParser(prog="bench_fid.py", description=__doc__.split("\n\n")[0],
                              epilog=__doc__[__doc__.index("Examples:"):], formatter_class=HelpFormatter)
    p.add_argument("--a", help="folder A, used as is (None: --n random images of --src-a)")
    p.add_argument("--b", help="folder B, used as is (None: --n random images of --src-b)")
    p.add_argument("--src-a", default=f"{SHARED}/cat-faces-64", help="where A is sampled from")
    p.add_argument("--src-b", default=f"{SHARED}/dog-faces-224", help="where B is sampled from")
    p.add_argument("--n", type=harness.positive_int, default=500, help="images sampled per side")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    p.add_argument("--repeats", type=harness.positive_int, default=3, help="rounds; medians are shown")
    p.add_argument("--device", default="cpu", help="passed to both tools")
    p.add_argument("--workdir", help="keep the copies and outputs here (None: a temp folder, removed)")
    p.add_argument("--layouts", action="store_true", help="compare Inception layouts/precisions in one process instead")
    args = p.parse_args()
    if args.layouts:
        return compare_layouts(args)

    work = args.workdir or tempfile.mkdtemp(prefix="bench_fid_")
    os.makedirs(work, exist_ok=True)
    try:
        a = args.a or copy_subset(args.src_a, os.path.join(work, "a"), args.n, args.seed)
        b = args.b or copy_subset(args.src_b, os.path.join(work, "b"), args.n, args.seed)
        for folder in (a, b):
            if not os.path.isdir(folder):
                raise UserError(f"{folder}: no such folder")
        npz, js, js_cached, js_cl = (os.path.join(work, name) for name in
                                     ("b_stats.npz", "ours.json", "ours_cached.json", "ours_cl.json"))
        py, ours = sys.executable, os.path.join(ROOT, "compute_fid.py")
        commands = [
            ("`python -m pytorch_fid A B` (FID)", [py, "-m", "pytorch_fid", a, b, "--device", args.device]),
            ("`compute_fid.py A B` (FID + KID)", [py, ours, a, b, "--json", js]),
            ("`compute_fid.py --save-stats B B.npz`", [py, ours, "--save-stats", b, npz]),
            ("`compute_fid.py A B.npz` (FID + KID)", [py, ours, a, npz, "--json", js_cached]),
            ("`compute_fid.py A B --no-channels-last` (FID + KID)", [py, ours, a, b, "--no-channels-last", "--json", js_cl]),
        ]
        for _, cmd in commands[1:]:  # every round rewrites the same outputs
            cmd += ["--device", args.device, "--overwrite", "--quiet"]
        print(f"A: {a}\nB: {b}\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; "
              f"{args.repeats} round(s) of {len(commands)} commands", flush=True)
        times = [[] for _ in commands]
        fids = {}
        for r in range(args.repeats):
            for k in ([0, 1, 2, 3, 4] if r % 2 == 0 else [1, 0, 2, 3, 4]):
                name, cmd = commands[k]
                seconds, out = timed(cmd)
                times[k].append(seconds)
                print(f"  round {r + 1}: {name} {seconds:.1f} s", flush=True)
                if k == 0:
                    match = re.search(r"FID:\s*(\S+)", out)
                    fids["pytorch_fid A B"] = float(match.group(1)) if match else float("nan")
                elif k in (1, 3, 4):
                    with open({1: js, 3: js_cached, 4: js_cl}[k]) as f:
                        fids[{1: "compute_fid A B", 3: "compute_fid A B.npz", 4: "no-channels-last"}[k]] = \
                            json.load(f)["fid"]
        print(f"load average {os.getloadavg()[0]:.1f} at the end\n")

        base = harness.median(times[0])
        print("| command | median s | vs pytorch_fid | runs (s) |\n|---|---|---|---|")
        for (name, _), ts in zip(commands, times):
            med = harness.median(ts)
            print(f"| {name} | {med:.1f} | {med / base:.2f}x | {', '.join(f'{t:.1f}' for t in ts)} |")
        print()
        ref = fids["pytorch_fid A B"]
        exact = fids.pop("no-channels-last")
        agree = all(abs(v - ref) <= 1e-6 * max(1.0, abs(ref)) for v in fids.values())
        for name, value in fids.items():
            print(f"FID {name}: {value!r} (differs by {value - ref:.2g})")
        print("FIDs agree to 1e-6 relative" if agree else "FIDs DISAGREE")
        print(f"FID compute_fid A B --no-channels-last: {exact!r} (differs by {exact - ref:.2g})")
        if not agree:
            sys.exit(1)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    harness.run_main(main)
