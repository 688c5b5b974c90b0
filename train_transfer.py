"""Transfer a WGAN-GP teacher to a new domain with frozen layers (thesis "model 2 (transfer learning)").

Start from a teacher (--init: a train_wgan.py run directory or checkpoint, or a raw thesis-style state_dict of
the generator), freeze the generator blocks next to z and the critic blocks next to the image, and train the
rest with train_wgan.py's loop on the new data. The default freezing is the thesis' at every image size:

    generator: layer1-layer2 frozen (--freeze-g 2)
    critic:    all blocks but the last frozen, the last block and the output layer train (--freeze-d -2):
               layer1-4 of 5 at 128x128 (the thesis), layer1-3 of 4 at 64x64, layer1-2 of 3 at 32x32

Frozen means: requires_grad=False and no Adam state; weights kept in bf16 (--frozen-dtype; upcast block by block
while running, so the arithmetic stays fp32 where bf16 is slow); the frozen generator prefix runs without an
autograd graph (its input z needs no gradient); frozen critic blocks still pass gradients to the image (the
penalty and the generator step need them); BatchNorm running statistics of frozen blocks stay the teacher's
(--adapt-bn lets them follow the new data). `--freeze-g 0 --freeze-d 0` without --init is the from-scratch
baseline ("model 2 (full)"). Measured on 64x64 cats -> dogs, 1,500 generator updates each (docs/study.md): this
freezing trains with 0.47x of full training's tensor memory and ends 12% worse in FID than training from scratch
(the thesis: 11% worse); freezing only the critic's lower blocks (--freeze-g 0 --freeze-d 2) and fine-tuning
everything (--freeze-g 0 --freeze-d 0 --lr 5e-5) do better than from scratch, but save little memory.

Examples:
    python train_transfer.py --init runs/demo_wgan --data demo:dogs --img-size 32 --width 0.25 --epochs 5 --out runs/demo_transfer
    python train_transfer.py --freeze-g 0 --freeze-d 0 --data demo:dogs --img-size 32 --width 0.25 --epochs 5 --out runs/demo_full
    python train_transfer.py --init runs/model1 --data data/dogs --epochs 1000 --out runs/model2_transfer   # thesis, GPU
"""
import os

import arch
import harness
import train_wgan


def load_init(path, device, ema=False):
    """Teacher (G, D) from a run directory or training checkpoint; (G, None) from a generator file or raw G.
    G is the raw generator (the one its critic was trained against), or with `ema` its moving average."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    obj = arch.read_file(path, device)
    G, _ = arch.model_from(obj, path, kinds=("Generator",), key="G", device=device, ema=ema)
    D = None
    if isinstance(obj, dict) and obj.get("format") == arch.CHECKPOINT_FORMAT and "D" in obj:
        D, _ = arch.model_from(obj, path, kinds=("Discriminator",), key="D", device=device)
    return G, D


def main(argv=None):
    p = train_wgan.build_parser(__doc__, script="train_transfer")
    p.add_argument("--init", default=None, help="teacher: train_wgan.py run dir or ckpt.pt (G and D), or a generator file / raw G state_dict")
    p.add_argument("--init-d", default=None, help="critic to start from when --init holds only a generator (a raw thesis D state_dict)")
    p.add_argument("--freeze-g", type=int, default=2, help="generator blocks to freeze, from z (negative: all but the last |N|)")
    p.add_argument("--freeze-d", type=int, default=-2, help="critic blocks to freeze, from the image (negative: all but the last |N| "
                   "parameter blocks; -2 leaves the last block and the output layer)")
    p.add_argument("--freeze-g-from", choices=("z", "image"), default="z", help="which end of the generator "
                   "--freeze-g counts from: z (the thesis: layer1, layer2, ...) or image (final, then the last layers)")
    p.add_argument("--init-g", choices=("raw", "ema"), default="raw", help="the teacher's generator to start G "
                   "(and its EMA) from: its raw weights or their moving average (its samples' weights)")
    p.add_argument("--frozen-dtype", choices=("bf16", "fp32"), default="bf16", help="storage of frozen weights")
    p.add_argument("--adapt-bn", action="store_true", help="let BatchNorm running statistics in frozen generator blocks adapt")
    p.set_defaults(data="demo:dogs")
    args = p.parse_args(argv)
    if args.init is None and (args.freeze_g or args.freeze_d):
        raise harness.UserError("freezing needs a teacher: pass --init RUN_DIR (or --freeze-g 0 --freeze-d 0 for the from-scratch baseline)")

    env = harness.setup(args)
    resume = harness.open_run(args, "train_transfer", env)
    if args.init and not os.path.exists(args.init):
        raise harness.UserError(f"--init {args.init}: no such run directory or file")
    G = harness.build(env, arch.Generator, nz=args.nz, img_size=args.img_size, width=args.width)  # if it fits
    D = harness.build(env, arch.Discriminator, img_size=args.img_size, width=args.width)
    G.apply(arch.weights_init)
    D.apply(arch.weights_init)
    if args.init:
        teacher_g, teacher_d = load_init(args.init, env.device, ema=args.init_g == "ema")
        if args.init_g == "ema" and teacher_g.weights_kind != "ema":
            raise harness.UserError(f"--init-g ema: {args.init} holds no moving average of its generator (trained with --ema 0)")
        if args.init_d:
            teacher_d, _ = arch.load_model(args.init_d, kinds=("Discriminator",), key="D", device=env.device)
        if teacher_d is None:
            raise harness.UserError(f"{args.init} holds no critic: pass --init-d with the teacher's critic state_dict")
        for name, mine, theirs in (("generator", G, teacher_g), ("critic", D, teacher_d)):
            if mine.config != theirs.config:
                raise harness.UserError(f"--init {name} is {theirs.config}, but the flags give {mine.config} (match --img-size/--width/--nz)")
            mine.load_state_dict(theirs.state_dict())
        del teacher_g, teacher_d
    try:
        frozen_g = arch.freeze_layers(G, args.freeze_g, adapt_bn=args.adapt_bn, from_output=args.freeze_g_from == "image")
        frozen_d = arch.freeze_layers(D, args.freeze_d)
    except ValueError as e:
        raise harness.UserError(str(e)) from None
    if args.frozen_dtype == "bf16":
        arch.store_frozen(G)
        arch.store_frozen(D)
    dataset, batches = train_wgan.load_batches(args, env)
    if env.master:
        print(f"{dataset.name}: {len(dataset)} images | init {args.init or 'none (from scratch)'} | frozen G {frozen_g or '-'}, "
              f"D {frozen_d or '-'} ({args.frozen_dtype}) | trainable G {arch.count_params(G, True):,}/{arch.count_params(G):,}, "
              f"D {arch.count_params(D, True):,}/{arch.count_params(D):,} | {env.device} x {env.world_size}, {env.precision}, global batch {args.batch_size * env.world_size}", flush=True)
    train_wgan.train(args, env, G, D, batches, script="train_transfer", resume=resume, summary={
        "init": args.init, "init_g": args.init_g, "frozen_g": frozen_g, "frozen_d": frozen_d, "adapt_bn": args.adapt_bn,
        "frozen_dtype": args.frozen_dtype, "frozen_params_g": arch.count_params(G) - arch.count_params(G, True),
        "frozen_params_d": arch.count_params(D) - arch.count_params(D, True)})


if __name__ == "__main__":
    harness.run_main(main)
