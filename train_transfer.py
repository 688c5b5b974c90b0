"""Transfer a WGAN-GP teacher to a new domain with frozen layers (thesis "model 2 (transfer learning)").

Start from a teacher (--init: a train_wgan.py run directory or checkpoint, or a raw thesis-style state_dict
of the generator), freeze the first --freeze-g generator blocks (default 2: layer1 and layer2, next to z) and
the first --freeze-d critic blocks (default 4), and train the rest with the same WGAN-GP loop as
train_wgan.py on the new data. Frozen means:
  - requires_grad=False and not given to Adam (no optimizer state, no gradient buffers);
  - the frozen generator prefix runs without an autograd graph (its input z needs no gradient), so none of
    its activations are kept; likewise the frozen critic prefix on real and fake images in the critic step;
  - frozen critic blocks still pass gradients to the image (the gradient penalty and the generator step
    need d critic / d image), so they run with a graph there;
  - BatchNorm running statistics in frozen generator blocks stay as the teacher left them (--adapt-bn lets
    them follow the new data).
`--freeze-g 0 --freeze-d 0` without --init is the from-scratch baseline ("model 2 (full)").

Examples:
    # teacher on demo cats, then transfer to demo dogs (CPU, minutes)
    python train_wgan.py --data demo:cats --img-size 64 --width 0.25 --epochs 20 --out runs/demo_wgan
    python train_transfer.py --init runs/demo_wgan --data demo:dogs --img-size 64 --width 0.25 --epochs 10 --out runs/demo_transfer
    # the from-scratch baseline on the same data
    python train_transfer.py --freeze-g 0 --freeze-d 0 --data demo:dogs --img-size 64 --width 0.25 --epochs 10 --out runs/demo_full
    # thesis setting (GPU): model 1 -> dogs with layer1-2 of G and layer1-4 of D frozen
    python train_transfer.py --init runs/model1 --data data/dogs --epochs 1000 --out runs/model2_transfer
"""
import os

import arch
import common
import train_wgan


def load_init(path, device):
    """Teacher (G, D) from a run directory or training checkpoint; (G, None) from a generator file or raw G."""
    if os.path.isdir(path):
        path = os.path.join(path, "ckpt.pt")
    obj = common.load_checkpoint(path, device)
    G, _ = common.model_from(obj, path, kinds=("Generator",), key="G", device=device)
    D = None
    if isinstance(obj, dict) and obj.get("format") == common.CHECKPOINT_FORMAT and "D" in obj:
        D, _ = common.model_from(obj, path, kinds=("Discriminator",), key="D", device=device)
    return G, D


def main(argv=None):
    p = train_wgan.build_parser(__doc__, script="train_transfer")
    p.add_argument("--init", default=None, help="teacher: train_wgan.py run dir or ckpt.pt (G and D), or a generator file / raw G state_dict")
    p.add_argument("--init-d", default=None, help="critic to start from when --init holds only a generator (a raw thesis D state_dict)")
    p.add_argument("--freeze-g", type=common.nonneg_int, default=2, help="generator blocks to freeze, from z (default: %(default)s)")
    p.add_argument("--freeze-d", type=common.nonneg_int, default=4, help="critic blocks to freeze, from the image (default: %(default)s)")
    p.add_argument("--adapt-bn", action="store_true", help="let BatchNorm running statistics in frozen generator blocks adapt")
    p.set_defaults(data="demo:dogs")
    args = p.parse_args(argv)
    if args.init is None and (args.freeze_g or args.freeze_d):
        raise common.UserError("freezing needs a teacher: pass --init RUN_DIR (or --freeze-g 0 --freeze-d 0 for the from-scratch baseline)")

    device = train_wgan.setup_device(args)
    resume = common.open_run(args, "train_transfer", device)
    G = arch.Generator(nz=args.nz, img_size=args.img_size, width=args.width).to(device)
    D = arch.Discriminator(img_size=args.img_size, width=args.width).to(device)
    G.apply(arch.weights_init)
    D.apply(arch.weights_init)
    if args.init:
        teacher_g, teacher_d = load_init(args.init, device)
        if args.init_d:
            teacher_d, _ = common.load_model(args.init_d, kinds=("Discriminator",), key="D", device=device)
        if teacher_d is None:
            raise common.UserError(f"{args.init} holds no critic: pass --init-d with the teacher's critic state_dict")
        for name, mine, theirs in (("generator", G, teacher_g), ("critic", D, teacher_d)):
            if mine.config != theirs.config:
                raise common.UserError(f"--init {name} is {theirs.config}, but the flags give {mine.config} (match --img-size/--width/--nz)")
            mine.load_state_dict(theirs.state_dict())
        del teacher_g, teacher_d
    try:
        frozen_g = arch.freeze_layers(G, args.freeze_g, adapt_bn=args.adapt_bn)
        frozen_d = arch.freeze_layers(D, args.freeze_d)
    except ValueError as e:
        raise common.UserError(str(e)) from None
    dataset, batches = train_wgan.load_batches(args, device)
    print(f"{dataset.name}: {len(dataset)} images | init {args.init or 'none (from scratch)'} | frozen G {frozen_g or '-'}, "
          f"D {frozen_d or '-'} | trainable G {arch.count_params(G, True):,}/{arch.count_params(G):,}, "
          f"D {arch.count_params(D, True):,}/{arch.count_params(D):,} | {device}", flush=True)
    train_wgan.train(args, G, D, batches, script="train_transfer", resume=resume, extra_summary={
        "init": args.init, "frozen_g": frozen_g, "frozen_d": frozen_d, "adapt_bn": args.adapt_bn,
        "frozen_params_g": arch.count_params(G) - arch.count_params(G, True),
        "frozen_params_d": arch.count_params(D) - arch.count_params(D, True)})


if __name__ == "__main__":
    common.run_main(main)
