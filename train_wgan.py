"""Train the WGAN-GP teacher (thesis "model 1"): Algorithm 1 of Gulrajani et al. 2017, line by line.

    for each generator iteration:
        for t = 1..n_critic:                                   # critic_step
            x ~ P_r, z ~ p(z), eps ~ U[0, 1]                   #   a fresh real batch and fresh z every time
            x_tilde = G(z);  x_hat = eps x + (1 - eps) x_tilde
            L = D(x_tilde) - D(x) + lambda (||grad_x_hat D(x_hat)||_2 - 1)^2
            w <- Adam(grad_w mean L, alpha, beta1, beta2)
        z ~ p(z)                                               # generator_step
        theta <- Adam(grad_theta mean -D(G(z)), alpha, beta1, beta2)

lambda = 10, n_critic = 5, Adam alpha = 1e-4 (ours: 2e-4, see --lr), beta1 = 0, beta2 = 0.9. One "epoch" is --iters-per-epoch
generator iterations (25, as the thesis counted). Additions, each one flag: --diffaug (DiffAugment of every
critic input), --ema (moving average of G, used for samples), --precision (autocast), torchrun (several GPUs).
Outputs in --out: ckpt.pt (everything --resume needs), generator.pt (for createsamples.py), metrics.jsonl,
summary.json, snapshots/ (six fixed latent vectors every --snapshot-every epochs), timeline.png, quality.png.

Examples:
    python train_wgan.py --data demo:cats --img-size 32 --width 0.25 --epochs 10 --out runs/demo_wgan
    python train_wgan.py --data data/cats --epochs 4000 --out runs/model1          # thesis' model 1, a GPU
    python train_wgan.py --data data/cats --epochs 4000 --out runs/model1 --resume # continue it
    torchrun --nproc_per_node 4 train_wgan.py --data data/cats --out runs/model1   # 4 GPUs
"""
import functools
import os

import torch

import arch
import data
import harness


def gradient_penalty(critic, real, fake, env=None, scaler=None):
    """E[(||grad_x_hat D(x_hat)||_2 - 1)^2] with x_hat = eps x + (1 - eps) x_tilde, eps ~ U[0, 1] per sample.

    The norm is per sample over all of C x H x W; over the channel axis only (the thesis code, many public
    repositories) it would penalise each pixel's gradient separately -- a different, wrong constraint.
    Mixed precision: the critic runs under autocast, the norm in fp32. Under fp16 the critic's output is
    loss-scaled before autograd.grad (small gradients would underflow) and the gradient unscaled before its
    norm (the PyTorch AMP recipe for gradient penalties).
    """
    eps = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    with env.autocast() if env else torch.autocast("cpu", enabled=False):
        out = critic(x_hat).float().sum()
    scale = scaler.scale(torch.ones((), device=real.device)) if scaler else 1.0
    # create_graph: the penalty is a function of the gradient, and we need its gradient w.r.t. the critic
    (grad,) = torch.autograd.grad(out * scale, x_hat, create_graph=True)
    grad = grad.float() / scale
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_step(G, D, opt_d, scaler, real, args, env, augment=lambda x: x):
    """One critic update; returns the detached (loss, Wasserstein estimate, gradient penalty)."""
    z = torch.randn(real.size(0), args.nz, 1, 1, device=real.device)
    with torch.no_grad(), env.autocast():  # the critic's loss needs no gradient through G
        fake = G(z).float()
    real, fake = augment(real), augment(fake)
    # the penalty interpolates the augmented images: the critic is asked to be 1-Lipschitz on what it sees
    with env.autocast():  # real and fake as one batch: InstanceNorm is per sample, so the maths is unchanged
        d_real, d_fake = D(torch.cat([real, fake])).float().chunk(2)
    gp = gradient_penalty(D, real, fake, env, scaler)
    loss = d_fake.mean() - d_real.mean() + args.lambda_gp * gp
    stepped = harness.optimize(loss, D, opt_d, scaler, env)
    return harness.logged(torch.stack([loss.detach(), (d_real.mean() - d_fake.mean()).detach(), gp.detach()]), stepped)


def generator_step(G, D, opt_g, scaler, args, env, augment=lambda x: x):
    """One generator update on a freshly generated batch; returns the detached loss -E[D(G(z))]."""
    z = torch.randn(args.batch_size, args.nz, 1, 1, device=env.device)
    with harness.requires_grad(D, False):  # only the image needs the critic's gradient, not the critic's weights
        with env.autocast():
            loss = -D(augment(G(z).float())).float().mean()
        stepped = harness.optimize(loss, G, opt_g, scaler, env)
    return harness.logged(loss.detach(), stepped)


def iteration(G, D, opt_g, opt_d, scaler_g, scaler_d, batches, n_critic, args, env, augment=lambda x: x):
    """One generator iteration of Algorithm 1: `n_critic` critic updates, each on the next real batch, then one
    generator update; returns the detached (d_loss, wasserstein, gp) averaged over the critic steps, and g_loss."""
    critic = sum(critic_step(G, D, opt_d, scaler_d, next(batches), args, env, augment) for _ in range(n_critic)) / n_critic
    g_loss = generator_step(G, D, opt_g, scaler_g, args, env, augment)
    return torch.cat([critic, g_loss[None]])


def build_parser(doc=__doc__, script="train_wgan"):
    p = harness.ArgumentParser(prog=f"{script}.py", description=doc)
    harness.add_run_args(p, out_default=f"runs/{script.split('_')[-1]}")
    p.add_argument("--img-size", type=harness.image_size, default=128, help="image size (a power of two)")
    p.add_argument("--batch-size", type=harness.positive_int, default=64, help="images per critic step, per process")
    p.add_argument("--epochs", type=harness.positive_int, default=100, help="epochs to train (in all, across --resume)")
    p.add_argument("--iters-per-epoch", type=harness.positive_int, default=25, help="generator updates per epoch")
    p.add_argument("--n-critic", type=harness.positive_int, default=5, help="critic updates per generator update")
    p.add_argument("--warmup-iters", type=harness.nonneg_int, default=0, metavar="K",
                   help="the first K generator updates of the run take --warmup-n-critic critic updates each")
    p.add_argument("--warmup-n-critic", type=harness.positive_int, default=100,
                   help="critic updates per generator update during --warmup-iters (the WGAN code: 100 for 25)")
    p.add_argument("--lr", type=harness.positive_float, default=2e-4, help="Adam learning rate, both networks (the "
                   "thesis: 1e-4; 2e-4 learned faster in our ablation, see README)")
    p.add_argument("--betas", type=harness.beta, nargs=2, default=(0.0, 0.9), metavar=("B1", "B2"), help="Adam betas")
    p.add_argument("--lambda-gp", type=harness.nonneg_float, default=10.0, help="gradient penalty weight")
    p.add_argument("--nz", type=harness.positive_int, default=100, help="latent size")
    return p


def load_batches(args, env):
    """The dataset and this process' endless shuffled batches (a disjoint share per process)."""
    dataset = data.load_dataset(args.data, args.img_size, cache_dir=args.cache_dir, verbose=env.master)
    if args.batch_size * env.world_size > len(dataset):
        raise harness.UserError(f"--batch-size {args.batch_size} x {env.world_size} process(es) is more than the "
                                f"dataset ({len(dataset)} images)")
    batches = data.InfiniteBatches(dataset, args.batch_size, env.device, seed=args.seed, flip=args.flip,
                                   rank=env.rank, world_size=env.world_size)
    return dataset, batches


def train(args, env, G, D, batches, script="train_wgan", resume=None, summary=None):
    """The WGAN-GP loop, shared with train_transfer.py (which passes partly frozen G and D): its whole schedule."""
    if args.sync_bn and env.world_size > 1:  # never the critic: no double backward through SyncBatchNorm
        G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
    # Only what needs a gradient goes to Adam: frozen parameters (transfer learning) get no state
    opt_g = harness.Adam(harness.trainable(G), lr=args.lr, betas=args.betas)
    opt_d = harness.Adam(harness.trainable(D), lr=args.lr, betas=args.betas)
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
        harness.snapshot(sampler, z_fixed, args.out, 0)  # the untrained generator: row 0 of the timeline
    meter = harness.MemoryMeter(env.device, [G, D] + ([ema.model] if ema else []), [opt_g, opt_d])
    meter.start()
    clock = harness.Clock(env.device, done["train_sec"])
    step, images, global_batch = done["step"], done["images"], args.batch_size * env.world_size
    # d_loss, wasserstein, gp, g_loss of each iteration of the epoch (resumed mid-epoch: those it had done)
    losses = (torch.zeros(args.iters_per_epoch, 4) if done["losses"] is None else done["losses"]).to(env.device)

    def save_checkpoint(epoch, iteration, step, images, losses):
        """Everything --resume needs to continue bitwise after `iteration` of epoch `epoch` + 1 (see restore)."""
        checkpoint = {"format": harness.CHECKPOINT_FORMAT, "script": script, "args": vars(args), "epoch": epoch,
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
            # a warm-up gives the critic more steps per generator update (WGAN's 100 for its first 25): a
            # critic trained on another domain first learns the new one before its gradients move G
            n_critic = args.warmup_n_critic if step < args.warmup_iters else args.n_critic
            with meter.hooks():  # counts what training holds, over the first iterations
                losses[it] = iteration(G, D, step_g, step_d, scaler_g, scaler_d, batches, n_critic, args, env, augment)
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
        record = {"epoch": epoch, "step": step, **dict(zip(("d_loss", "wasserstein", "gp", "g_loss"), losses.mean(0).tolist())),
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
            if env.master:  # for createsamples.py: the generator, its moving average, no optimizer
                harness.save(arch.generator_file(G, ema.model if ema else None, epoch=epoch, script=script),
                             os.path.join(args.out, "generator.pt"))
        clock.start()
        first_it = 0
        losses.zero_()

    summary = {**harness.run_summary(args, script, env, step, G, ema, clock, meter, done["memory"]),
               "params_g": arch.count_params(G), "params_d": arch.count_params(D),
               "trainable_g": arch.count_params(G, True), "trainable_d": arch.count_params(D, True), **(summary or {})}
    if env.master:
        harness.write_summary(args.out, summary)
    return summary


def main(argv=None):
    args = build_parser().parse_args(argv)
    env = harness.setup(args)
    resume = harness.open_run(args, "train_wgan", env)
    G = harness.build(env, arch.Generator, nz=args.nz, img_size=args.img_size, width=args.width)  # if it fits
    D = harness.build(env, arch.Discriminator, img_size=args.img_size, width=args.width)
    G.apply(arch.weights_init)
    D.apply(arch.weights_init)
    dataset, batches = load_batches(args, env)
    if env.master:
        print(f"{dataset.name}: {len(dataset)} images at {args.img_size}x{args.img_size} | G {arch.count_params(G):,} "
              f"params, D {arch.count_params(D):,} | {env.device} x {env.world_size}, {env.precision}, global batch "
              f"{args.batch_size * env.world_size}", flush=True)
    train(args, env, G, D, batches, resume=resume)


if __name__ == "__main__":
    harness.run_main(main)
