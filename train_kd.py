"""Distil the WGAN-GP teacher into the 5x smaller GeneratorKD (thesis KD models, after KDGAN, Wang et al. 2018).

Teacher G_t: a trained Generator, frozen, in eval mode, run under torch.inference_mode (no graph, no grads).
Student G_s: GeneratorKD. Discriminator D: the DC-GAN one (BCE, computed from logits). Per iteration:

    x ~ data, z ~ N(0, I)
    D   <- Adam(grad  BCE(D(x), 1) + BCE(D(G_s(z)), 0))                                 # discriminator step
    G_s <- Adam(grad  alpha * BCE(D(G_s(z)), 1) + (1 - alpha) * MSE(G_s(z), G_t(z)))    # student step, same z

alpha = 1 is a plain DC-GAN, alpha = 0 pure imitation of the teacher; the thesis found alpha = 0.05 best.
Defaults follow the thesis code: Adam lr 5e-4, betas (0, 0.999), batch 8, 100 iterations per epoch.

Examples:
    # after `python train_wgan.py` (teacher in runs/wgan), with the thesis' alpha:
    python train_kd.py --alpha 0.05
    # demo data on a CPU, a teacher trained at 64x64 / width 0.25
    python train_kd.py --teacher runs/demo_wgan/generator.pt --data demo:cats --width 0.25 --epochs 10 --out runs/demo_kd
    # continue an interrupted run
    python train_kd.py --teacher runs/model1/generator.pt --data data/cats --out runs/kd_005 --resume
"""
import argparse
import os

import torch
import torch.nn.functional as F

import arch
import common
import train_wgan

DEFAULT_TEACHER = "runs/wgan/generator.pt"  # where `python train_wgan.py` (default --out runs/wgan) puts it


def kd_loss(d_fake_logits, student_images, teacher_images, alpha):
    """The thesis' JointLoss: alpha * BCE(D(G_s(z)), 1) + (1 - alpha) * MSE(G_s(z), G_t(z))."""
    adversarial = F.binary_cross_entropy_with_logits(d_fake_logits, torch.ones_like(d_fake_logits))
    imitation = F.mse_loss(student_images, teacher_images)
    return alpha * adversarial + (1 - alpha) * imitation, adversarial.detach(), imitation.detach()


def discriminator_step(D, opt_d, real, fake):
    """One DC-GAN discriminator update: real -> 1, student fake -> 0 (BCE from logits)."""
    # one pass over real and fake together: InstanceNorm is per sample, so this equals two passes
    d_real, d_fake = D(torch.cat([real, fake.detach()])).chunk(2)
    loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    loss.backward()
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)
    return loss.detach()


def student_step(D, opt_g, fake, target, alpha):
    """One student update on the same z the teacher saw."""
    with train_wgan.requires_grad(D, False):  # the student needs D's gradient w.r.t. the image only
        loss, adversarial, imitation = kd_loss(D(fake), fake, target, alpha)
        loss.backward()
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    return loss.detach(), adversarial, imitation


def alpha_value(text):
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def load_teacher(path, device, img_size, nz):
    """The frozen teacher; its kind, latent size and image size are checked against the student's."""
    if not os.path.exists(path):
        hint = " (the default: train one first with `python train_wgan.py`)" if path == DEFAULT_TEACHER else ""
        raise common.UserError(f"no teacher at {path}{hint}; pass --teacher PATH to a train_wgan.py generator.pt or ckpt.pt")
    if os.path.isdir(path):
        path = os.path.join(path, "generator.pt")
    obj = common.load_checkpoint(path, device)
    stored = obj.get("G") if isinstance(obj, dict) and obj.get("format") == common.CHECKPOINT_FORMAT else obj
    kind = stored.get("config", {}).get("kind") if isinstance(stored, dict) and isinstance(stored.get("config"), dict) else None
    if kind not in (None, "Generator"):
        raise common.UserError(f"--teacher {path} holds a {kind}, but the teacher must be a Generator (train_wgan.py)")
    teacher, config = common.model_from(obj, path, kinds=("Generator",), key="G", device=device)
    for name, mine in (("img_size", img_size), ("nz", nz)):
        if mine is not None and mine != config[name]:
            raise common.UserError(f"teacher {path} has {name}={config[name]}, student asks for {name}={mine}: "
                                   f"they must match (leave --{name.replace('_', '-')} out to take the teacher's)")
    teacher.requires_grad_(False)
    return teacher.eval(), config


def main(argv=None):
    p = common.ArgumentParser(prog="train_kd.py", description=__doc__)
    common.add_run_args(p, data="demo:cats", out="runs/kd", batch_size=8, epochs=100, lr=5e-4, betas=(0.0, 0.999),
                        iters_per_epoch=100, img_size=None)
    p.add_argument("--teacher", default=DEFAULT_TEACHER, help="teacher generator: a train_wgan.py generator.pt, ckpt.pt, "
                   "run dir, or a raw thesis state_dict (default: %(default)s, where `python train_wgan.py` writes it)")
    p.add_argument("--alpha", type=alpha_value, default=0.05, help="weight of the adversarial term, in [0, 1] (default: %(default)s)")
    p.add_argument("--nz", type=common.positive_int, default=None, help="latent size (default: the teacher's)")
    args = p.parse_args(argv)

    device = train_wgan.setup_device(args)
    teacher, tconf = load_teacher(args.teacher, device, args.img_size, args.nz)
    resume = common.open_run(args, "train_kd", device)
    args.img_size, args.nz = tconf["img_size"], tconf["nz"]
    G = arch.GeneratorKD(nz=args.nz, img_size=args.img_size, width=args.width).to(device)
    D = arch.DCGANDiscriminator(img_size=args.img_size, width=args.width).to(device)
    G.apply(arch.weights_init)
    D.apply(arch.weights_init)
    dataset, batches = train_wgan.load_batches(args, device)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=tuple(args.betas))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=tuple(args.betas))
    print(f"{dataset.name}: {len(dataset)} images | teacher {args.teacher} ({arch.count_params(teacher):,} params) -> "
          f"student {arch.count_params(G):,} params | alpha {args.alpha} | {device}", flush=True)

    run = common.Run(args, "train_kd", models={"G": G, "D": D}, optimizers={"opt_g": opt_g, "opt_d": opt_d},
                     batches=batches, resume=resume)
    run.meter.models.append(teacher)  # the teacher's weights are training memory too
    G.train()
    D.train()
    for epoch in run.epochs():
        sums = torch.zeros(4, device=device)  # d_loss, g_loss, adversarial, imitation
        for _ in range(args.iters_per_epoch):
            real = next(batches)
            z = torch.randn(real.size(0), args.nz, 1, 1, device=device)
            with torch.inference_mode():
                target = teacher(z)
            target = target.clone()  # an inference tensor cannot be saved for backward; a clone can
            fake = G(z)
            d_loss = discriminator_step(D, opt_d, real, fake)
            g_loss, adversarial, imitation = student_step(D, opt_g, fake, target, args.alpha)
            sums += torch.stack([d_loss, g_loss, adversarial, imitation])
            run.step += 1
        d_loss, g_loss, adversarial, imitation = (sums / args.iters_per_epoch).tolist()
        run.end_epoch({"d_loss": d_loss, "g_loss": g_loss, "bce_g": adversarial, "mse_teacher": imitation})
    run.finish({"alpha": args.alpha, "teacher": args.teacher,
                "params_g": arch.count_params(G), "params_d": arch.count_params(D),
                "trainable_g": arch.count_params(G, True), "trainable_d": arch.count_params(D, True),
                "params_teacher": arch.count_params(teacher), "teacher_mb": common.model_file_mb(teacher),
                "student_mb": common.model_file_mb(G)})


if __name__ == "__main__":
    common.run_main(main)
