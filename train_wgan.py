"""Train the WGAN-GP teacher (thesis "model 1"): Algorithm 1 of Gulrajani et al. 2017, line by line.

    for each generator iteration:
        for t = 1..n_critic:                                   # critic_step
            x ~ P_r, z ~ p(z), eps ~ U[0, 1]                   #   a fresh real batch and fresh z every time
            x_tilde = G(z);  x_hat = eps x + (1 - eps) x_tilde
            L = D(x_tilde) - D(x) + lambda (||grad_x_hat D(x_hat)||_2 - 1)^2
            w <- Adam(grad_w mean L, alpha, beta1, beta2)
        z ~ p(z)                                               # generator_step
        theta <- Adam(grad_theta mean -D(G(z)), alpha, beta1, beta2)

lambda = 10, n_critic = 5, Adam alpha = 1e-4, beta1 = 0, beta2 = 0.9. One "epoch" is --iters-per-epoch
generator iterations (default 25, as the thesis counted; its own epochs had 8 critic steps per generator step,
i.e. --n-critic 8). Outputs in --out: ckpt.pt (everything --resume needs), generator.pt (for createsamples.py),
metrics.jsonl, summary.json, snapshots/ (six fixed latent vectors every --snapshot-every epochs), timeline.png.

Examples:
    # a few minutes on a laptop CPU: the built-in demo data at 64x64, a narrow model
    python train_wgan.py --data demo:cats --img-size 64 --width 0.25 --epochs 20 --out runs/demo_wgan
    # the thesis' model 1 on a GPU (128x128, full width)
    python train_wgan.py --data data/cats --epochs 4000 --out runs/model1
    # continue an interrupted run (the same command plus --resume)
    python train_wgan.py --data data/cats --epochs 4000 --out runs/model1 --resume
"""
import torch

import arch
import common
import data


def gradient_penalty(critic, real, fake):
    """E[(||grad_x_hat D(x_hat)||_2 - 1)^2] with x_hat = eps x + (1 - eps) x_tilde, eps ~ U[0, 1] per sample.

    The norm is taken per sample over all of C x H x W (flattened). Taking it over the channel axis only, as the
    thesis code and many public repositories do, penalises every pixel's gradient separately -- a different,
    wrong constraint.
    """
    eps = torch.rand(real.size(0), 1, 1, 1, device=real.device)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    # create_graph: the penalty is a function of the gradient, and we need its gradient w.r.t. the critic
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()


def critic_step(G, D, opt_d, real, nz, lambda_gp):
    """One critic update; returns detached (loss, Wasserstein estimate, gradient penalty)."""
    z = torch.randn(real.size(0), nz, 1, 1, device=real.device)
    with torch.no_grad():  # the critic's loss needs no gradient through G: keep no generator graph
        fake = G(z)
    # real and fake through the critic as one batch: InstanceNorm is per sample, so this is the same maths as
    # two passes, with bigger (faster) matrix products and one backward instead of three
    d_real, d_fake = D(torch.cat([real, fake])).chunk(2)
    gp = gradient_penalty(D, real, fake)
    loss = d_fake.mean() - d_real.mean() + lambda_gp * gp
    loss.backward()
    opt_d.step()
    opt_d.zero_grad(set_to_none=True)  # free the gradients now, not during the other network's steps
    return loss.detach(), (d_real.mean() - d_fake.mean()).detach(), gp.detach()


def generator_step(G, D, opt_g, batch_size, nz, device):
    """One generator update on a freshly generated batch; returns the detached loss -E[D(G(z))]."""
    z = torch.randn(batch_size, nz, 1, 1, device=device)
    with requires_grad(D, False):  # only the image needs the critic's gradient, not the critic's weights
        loss = -D(G(z)).mean()
        loss.backward()
    opt_g.step()
    opt_g.zero_grad(set_to_none=True)
    return loss.detach()


class requires_grad:
    """Context: set `requires_grad` of every parameter of `model` to `flag`, then restore each one's own."""

    def __init__(self, model, flag):
        self.params, self.flag = list(model.parameters()), flag

    def __enter__(self):
        self.saved = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(self.flag)

    def __exit__(self, *exc):
        for p, flag in zip(self.params, self.saved):
            p.requires_grad_(flag)


def build_parser(doc=__doc__, script="train_wgan"):
    p = common.ArgumentParser(prog=f"{script}.py", description=doc)
    common.add_run_args(p, data="demo:cats", out=f"runs/{script.split('_')[-1]}", batch_size=64, epochs=100,
                        lr=1e-4, betas=(0.0, 0.9), iters_per_epoch=25)
    p.add_argument("--n-critic", type=common.positive_int, default=5, help="critic updates per generator update (default: %(default)s)")
    p.add_argument("--lambda-gp", type=float, default=10.0, help="gradient penalty weight (default: %(default)s)")
    p.add_argument("--nz", type=common.positive_int, default=100, help="latent size (default: %(default)s)")
    return p


def setup_device(args):
    """Device, CPU threads and seeds, before any model is built."""
    device = common.get_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    common.seed_everything(args.seed)
    return device


def load_batches(args, device):
    """The dataset and its endless shuffled batch iterator."""
    dataset = data.load_dataset(args.data, args.img_size, cache_dir=args.cache_dir)
    if args.batch_size > len(dataset):
        raise common.UserError(f"--batch-size {args.batch_size} is larger than the dataset ({len(dataset)} images)")
    batches = data.InfiniteBatches(dataset, args.batch_size, device, seed=args.seed, flip=args.flip)
    return dataset, batches


def train(args, G, D, batches, script="train_wgan", extra_summary=None, resume=None):
    """The WGAN-GP loop, shared with train_transfer.py (which passes partly frozen G and D)."""
    # Only what still needs a gradient goes to Adam: frozen parameters (transfer learning) get no state.
    opt_g = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=args.lr, betas=tuple(args.betas))
    opt_d = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=args.lr, betas=tuple(args.betas))
    run = common.Run(args, script, models={"G": G, "D": D}, optimizers={"opt_g": opt_g, "opt_d": opt_d},
                     batches=batches, resume=resume)
    G.train()
    D.train()
    device = next(G.parameters()).device
    for epoch in run.epochs():
        sums = torch.zeros(4, device=device)  # d_loss, wasserstein, gp, g_loss: summed on the device, no sync per step
        for _ in range(args.iters_per_epoch):
            for _ in range(args.n_critic):
                d_loss, wasserstein, gp = critic_step(G, D, opt_d, next(batches), args.nz, args.lambda_gp)
                sums[:3] += torch.stack([d_loss, wasserstein, gp]) / args.n_critic
            sums[3] += generator_step(G, D, opt_g, args.batch_size, args.nz, device)
            run.step += 1
        d_loss, wasserstein, gp, g_loss = (sums / args.iters_per_epoch).tolist()
        run.end_epoch({"d_loss": d_loss, "g_loss": g_loss, "wasserstein": wasserstein, "gp": gp})
    summary = {"params_g": arch.count_params(G), "params_d": arch.count_params(D),
               "trainable_g": arch.count_params(G, trainable_only=True),
               "trainable_d": arch.count_params(D, trainable_only=True)}
    summary.update(extra_summary or {})
    return run.finish(summary)


def main(argv=None):
    args = build_parser().parse_args(argv)
    device = setup_device(args)
    resume = common.open_run(args, "train_wgan", device)
    G = arch.Generator(nz=args.nz, img_size=args.img_size, width=args.width).to(device)
    D = arch.Discriminator(img_size=args.img_size, width=args.width).to(device)
    G.apply(arch.weights_init)
    D.apply(arch.weights_init)
    dataset, batches = load_batches(args, device)
    print(f"{dataset.name}: {len(dataset)} images at {args.img_size}x{args.img_size} | G {arch.count_params(G):,} "
          f"params, D {arch.count_params(D):,} | {device}", flush=True)
    train(args, G, D, batches, resume=resume)


if __name__ == "__main__":
    common.run_main(main)
