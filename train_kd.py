"""Distil the WGAN-GP teacher into the 5x smaller GeneratorKD (thesis KD models, after KDGAN, Wang et al. 2018).

Teacher G_t: a trained Generator, frozen, in eval mode, run under torch.inference_mode (no graph, no grads).
Student G_s: GeneratorKD. Discriminator D: the DC-GAN one (BCE, computed from logits). Per iteration:

    x ~ data, z ~ N(0, I)
    D   <- Adam(grad  BCE(D(x), 1) + BCE(D(G_s(z)), 0))                                 # discriminator step
    G_s <- Adam(grad  alpha * BCE(D(G_s(z)), 1) + (1 - alpha) * MSE(G_s(z), G_t(z)))    # student step, same z

alpha = 1 is a plain DC-GAN, alpha = 0 pure imitation of the teacher; the thesis found alpha = 0.05 best.
Defaults follow the thesis code: Adam lr 5e-4, betas (0, 0.999), batch 8, 100 iterations per epoch. The teacher is
stored in bf16 (--teacher-dtype; upcast block by block while it runs, so its arithmetic stays fp32 where bf16 is
slow): it is never trained, and its outputs are only regression targets.

Examples:
    # after `python train_wgan.py` (teacher in runs/wgan), with the thesis' alpha:
    python train_kd.py --alpha 0.05
    # demo data on a CPU, a teacher trained at 32x32 / width 0.25
    python train_kd.py --teacher runs/demo_wgan --data demo:cats --width 0.25 --epochs 5 --out runs/demo_kd
    # continue an interrupted run
    python train_kd.py --teacher runs/model1/generator.pt --data data/cats --out runs/kd_005 --resume
"""
import functools
import os

import torch
import torch.nn.functional as F

import arch
import data
import harness

DEFAULT_TEACHER = "runs/wgan/generator.pt"  # where `python train_wgan.py` (default --out runs/wgan) puts it


def kd_loss(d_fake_logits, student_images, teacher_images, alpha):
    """The thesis' JointLoss: alpha * BCE(D(G_s(z)), 1) + (1 - alpha) * MSE(G_s(z), G_t(z)), in fp32."""
    d_fake_logits, student_images = d_fake_logits.float(), student_images.float()
    adversarial = F.binary_cross_entropy_with_logits(d_fake_logits, torch.ones_like(d_fake_logits))
    imitation = F.mse_loss(student_images, teacher_images.float())
    return alpha * adversarial + (1 - alpha) * imitation, adversarial.detach(), imitation.detach()


def discriminator_step(D, opt_d, scaler, real, fake, env, augment=lambda x: x):
    """One DC-GAN discriminator update: real -> 1, student fake -> 0 (BCE from logits)."""
    with env.autocast():  # real and fake as one batch: InstanceNorm is per sample, so this equals two passes
        d_real, d_fake = D(torch.cat([augment(real), augment(fake.detach())])).float().chunk(2)
    loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    return harness.logged(loss.detach(), harness.optimize(loss, D, opt_d, scaler, env))


def student_step(G, D, opt_g, scaler, fake, target, alpha, env, augment=lambda x: x):
    """One student update on the same z the teacher saw."""
    with harness.requires_grad(D, False):  # the student needs D's gradient w.r.t. the image only
        with env.autocast():
            logits = D(augment(fake))
        loss, adversarial, imitation = kd_loss(logits, fake, target, alpha)
        stepped = harness.optimize(loss, G, opt_g, scaler, env)
    return harness.logged(torch.stack([loss.detach(), adversarial, imitation]), stepped)


def iteration(G, D, teacher, opt_g, opt_d, scaler_g, scaler_d, real, alpha, env, augment=lambda x: x):
    """One distillation iteration on a real batch: the teacher's images of a fresh z, one discriminator update,
    one student update on the same z; returns the detached (d_loss, g_loss, bce_g, mse_teacher)."""
    z = torch.randn(real.size(0), G.config["nz"], 1, 1, device=real.device)
    with torch.inference_mode(), env.autocast():
        target = teacher(z).float()
    target = target.clone()  # an inference tensor cannot be saved for backward; a clone can
    with env.autocast():
        fake = G(z).float()
    d_loss = discriminator_step(D, opt_d, scaler_d, real, fake, env, augment)
    g_losses = student_step(G, D, opt_g, scaler_g, fake, target, alpha, env, augment)
    return torch.cat([d_loss[None], g_losses])


def load_teacher(path, device, img_size, nz, dtype="bf16"):
    """The frozen teacher (its EMA weights when it has them); its kind, latent and image size are checked."""
    if not os.path.exists(path):
        hint = " (the default: train one first with `python train_wgan.py`)" if path == DEFAULT_TEACHER else ""
        raise harness.UserError(f"no teacher at {path}{hint}; pass --teacher PATH to a train_wgan.py generator.pt or ckpt.pt")
    teacher, config = arch.load_model(path, kinds=("Generator",), key="G", device=device)
    for name, mine in (("img_size", img_size), ("nz", nz)):
        if mine is not None and mine != config[name]:
            raise harness.UserError(f"teacher {path} has {name}={config[name]}, student asks for {name}={mine}: "
                                    f"they must match (leave --{name.replace('_', '-')} out to take the teacher's)")
    if config["img_size"] < 32:  # GeneratorKD's smallest
        raise harness.UserError(f"teacher {path} makes {config['img_size']}x{config['img_size']} images; the KD "
                                "student needs 32x32 or more: distil a teacher trained with --img-size 32 or larger")
    teacher.requires_grad_(False)
    if dtype == "bf16":
        arch.store_frozen(teacher, blocks=len(teacher.layers()))
    return teacher.eval(), config


def build_parser():
    p = harness.ArgumentParser(prog="train_kd.py", description=__doc__)
    harness.add_run_args(p, out_default="runs/kd", width_default=None)  # the student follows the teacher unless given
    p.add_argument("--teacher", default=DEFAULT_TEACHER, help="teacher generator: a train_wgan.py generator.pt, ckpt.pt, "
                   "run dir, or a raw thesis state_dict (the default is where `python train_wgan.py` writes it)")
    p.add_argument("--teacher-dtype", choices=("bf16", "fp32"), default="bf16", help="storage of the frozen teacher's weights")
    p.add_argument("--alpha", type=harness.unit_float, default=0.05, help="weight of the adversarial term, in [0, 1]")
    p.add_argument("--img-size", type=harness.image_size, default=None, help="image size (None: the teacher's)")
    p.add_argument("--nz", type=harness.positive_int, default=None, help="latent size (None: the teacher's)")
    p.add_argument("--batch-size", type=harness.positive_int, default=8, help="images per step, per process")
    p.add_argument("--epochs", type=harness.positive_int, default=100, help="epochs to train (in all, across --resume)")
    p.add_argument("--iters-per-epoch", type=harness.positive_int, default=100, help="iterations (D + student updates) per epoch")
    p.add_argument("--lr", type=harness.positive_float, default=5e-4, help="Adam learning rate (both networks)")
    p.add_argument("--betas", type=harness.beta, nargs=2, default=(0.0, 0.999), metavar=("B1", "B2"), help="Adam betas")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    env = harness.setup(args)
    teacher, tconf = load_teacher(args.teacher, env.device, args.img_size, args.nz, args.teacher_dtype)
    taken = [f"--{k.replace('_', '-')}" for k in ("img_size", "nz", "width") if getattr(args, k) is None]
    args.img_size, args.nz = tconf["img_size"], tconf["nz"]  # (load_teacher refused other values)
    args.width = tconf["width"] if args.width is None else args.width
    if env.master:
        print(f"student: {args.img_size}x{args.img_size}, nz {args.nz}, width {args.width}"
              + (f" ({', '.join(taken)} from the teacher)" if taken else ""), flush=True)
    resume = harness.open_run(args, "train_kd", env)  # (after the student's flags are known: resume checks them)
    G = harness.build(env, arch.GeneratorKD, nz=args.nz, img_size=args.img_size, width=args.width)  # if it fits
    D = harness.build(env, arch.DCGANDiscriminator, img_size=args.img_size, width=args.width)
    G.apply(arch.weights_init)
    D.apply(arch.weights_init)
    dataset = data.load_dataset(args.data, args.img_size, cache_dir=args.cache_dir, verbose=env.master)
    batches = data.InfiniteBatches(dataset, args.batch_size, env.device, seed=args.seed, flip=args.flip,
                                   rank=env.rank, world_size=env.world_size)
    if env.master:
        print(f"{dataset.name}: {len(dataset)} images | teacher {args.teacher} ({arch.count_params(teacher):,} params, "
              f"{args.teacher_dtype}) -> student {arch.count_params(G):,} params | alpha {args.alpha} | "
              f"{env.device} x {env.world_size}, {env.precision}, global batch {args.batch_size * env.world_size}", flush=True)

    # the distillation loop, its whole schedule
    if args.sync_bn and env.world_size > 1:
        G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
    opt_g = harness.Adam(G.parameters(), lr=args.lr, betas=args.betas)
    opt_d = harness.Adam(D.parameters(), lr=args.lr, betas=args.betas)
    scaler_g, scaler_d = env.scaler(), env.scaler()
    ema = harness.EMA(G, args.ema) if args.ema else None
    sampler = ema.model if ema else G  # the weights snapshots and evaluations show
    augment = functools.partial(data.diffaug, policy=args.diffaug)
    # --step-in-backward: each parameter's update runs inside backward (no gradient buffers); checkpoints keep opt_*
    step_g, step_d = (harness.StepInBackward(o, env) if args.step_in_backward else o for o in (opt_g, opt_d))
    trained = {"G": G, "D": D, "opt_g": opt_g, "opt_d": opt_d, "scaler_g": scaler_g, "scaler_d": scaler_d}
    done = harness.restore(resume, trained, ema, batches, env, args.seed)  # where to start: epoch, step, ...
    harness.broadcast_models([G, D] + ([ema.model] if ema else []), env)  # every process starts from rank 0's
    stop = harness.StopFlag().catch()  # SIGINT / SIGTERM: finish the step, checkpoint, exit
    evaluate = None
    if args.eval_every and env.master:
        import compute_fid  # only evaluating runs need it (and pytorch-fid)
        evaluate = compute_fid.Evaluator(args.eval_ref, args.nz, args.eval_n, env.device, args.eval_weights, args.eval_fast)
    z_fixed = torch.randn(6, args.nz, 1, 1, generator=torch.Generator().manual_seed(1234)).to(env.device)
    if env.master:  # a killed run's snapshots after the checkpoint (all of them on a fresh start) go
        harness.drop_dead_run(args.out, done)
    if done["step"] == 0 and env.master:
        harness.snapshot(sampler, z_fixed, args.out, 0)  # the untrained student: row 0 of the timeline
    meter = harness.MemoryMeter(env.device, [G, D, teacher] + ([ema.model] if ema else []), [opt_g, opt_d])  # teacher too
    meter.start()
    clock = harness.Clock(env.device, done["train_sec"])
    step, images, global_batch = done["step"], done["images"], args.batch_size * env.world_size
    # d_loss, g_loss, bce_g, mse_teacher of each iteration of the epoch (resumed mid-epoch: those it had done)
    losses = (torch.zeros(args.iters_per_epoch, 4) if done["losses"] is None else done["losses"]).to(env.device)

    def save_checkpoint(epoch, iteration, step, images, losses):
        """Everything --resume needs to continue bitwise after `iteration` of epoch `epoch` + 1 (see restore)."""
        checkpoint = {"format": harness.CHECKPOINT_FORMAT, "script": "train_kd", "args": vars(args), "epoch": epoch,
                      "iteration": iteration, "step": step, "images": images, "train_sec": clock.train_sec,
                      "losses": losses, "ranks": harness.gather_ranks(batches, env), "world_size": env.world_size,
                      "memory": meter.report(), "G": harness.model_state(G), "D": harness.model_state(D),
                      "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                      "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
                      **({"G_ema": harness.model_state(ema.model)} if ema else {})}
        if env.master:
            harness.save(checkpoint, os.path.join(args.out, "ckpt.pt"))

    G.train()
    D.train()
    first_it = done["iteration"]
    for epoch in range(done["epoch"] + 1, args.epochs + 1):
        for it in range(first_it, args.iters_per_epoch):
            real = next(batches)
            with meter.hooks():  # counts what training holds, over the first iterations
                losses[it] = iteration(G, D, teacher, step_g, step_d, scaler_g, scaler_d, real, args.alpha, env, augment)
            step += 1
            images += global_batch
            if ema:
                ema.update(G, images, global_batch)
            if stop.requested(env):  # checkpoint this exact point, then exit
                harness.check_finite(losses[:it + 1], epoch, step, args.out)
                save_checkpoint(epoch - 1, it + 1, step, images, losses)
                stop.exit(epoch, it + 1, step, args.out)
        # the end of an epoch: mean losses, log line, evaluation, snapshot, checkpoint (the last epoch: all)
        harness.check_finite(harness.mean_over_processes(losses, env), epoch, step, args.out)
        sec, last, mem = clock.lap(), epoch == args.epochs, meter.report()
        record = {"epoch": epoch, "step": step, **dict(zip(("d_loss", "g_loss", "bce_g", "mse_teacher"), losses.mean(0).tolist())),
                  "sec": round(sec, 4), "train_sec": round(clock.train_sec, 2), "images": images,
                  "peak_mem_mb": mem["peak_mem_mb"], "peak_tensor_mb": mem["peak_tensor_mb"]}
        if evaluate and (epoch % args.eval_every == 0 or last):
            record.update(evaluate(sampler))
            if ema and args.eval_raw:  # ablations: the same run without the average
                record.update({f"{k}_raw": v for k, v in evaluate(G).items()})
        if env.master:
            harness.log_epoch(record, args.out, args.epochs, clock.eta(args.epochs - epoch))
        if env.master and (epoch % args.snapshot_every == 0 or last):
            harness.snapshot(sampler, z_fixed, args.out, epoch)
        if epoch % args.save_every == 0 or last:
            save_checkpoint(epoch, 0, step, images, None)
            if env.master:  # for createsamples.py: the student, its moving average, no optimizer
                harness.save(arch.generator_file(G, ema.model if ema else None, epoch=epoch, script="train_kd"),
                             os.path.join(args.out, "generator.pt"))
        clock.start()
        first_it = 0
        losses.zero_()

    summary = {**harness.run_summary(args, "train_kd", env, step, G, ema, clock, meter, done["memory"]),
               "alpha": args.alpha, "teacher": args.teacher, "teacher_dtype": args.teacher_dtype,
               "params_g": arch.count_params(G), "params_d": arch.count_params(D),
               "trainable_g": arch.count_params(G, True), "trainable_d": arch.count_params(D, True),
               "params_teacher": arch.count_params(teacher), "teacher_mb": fp32_mb(teacher),
               "teacher_in_memory_mb": round(arch.param_bytes(teacher) / 2**20, 1), "student_mb": fp32_mb(G)}
    if env.master:
        harness.write_summary(args.out, summary)


def fp32_mb(model):
    """Size of the model's fp32 state_dict in MiB: what its generator file holds, give or take a few KB."""
    return round(sum(t.numel() for t in list(model.parameters()) + list(model.buffers())) * 4 / 2**20, 1)


if __name__ == "__main__":
    harness.run_main(main)
