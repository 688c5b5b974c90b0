"""Several processes (torchrun; gloo on CPU): gradients averaged over ranks give what one process computes over
the global batch, every rank stays identical, only rank 0 writes, and a run resumes under another process count.

Two workers start once (torch.multiprocessing, `ranks` fixture) through harness.setup's torchrun path and run
every scenario; the one-process references run here. Same random samples in both: `SharedDraws` replaces
torch.rand / randn / randint (z, eps, DiffAugment) so that the k-th draw of every process is rows of one seeded
tensor over the global batch of 2B: rank r gets rows rB..(r+1)B, the reference all 2B. Generator BatchNorm in
train mode normalises over each process' own batch, so the reference runs G on each B-half separately
(`per_half`): the per-sample-equivalent setup. (torch's SyncBatchNorm does not run on CPU; --sync-bn is refused.)
"""
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import arch
import data
import harness
import train_kd
import train_wgan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
B, WORLD = 2, 2  # per-process batch, processes
FLAGS = ["--img-size", "32", "--width", "0.125", "--n-critic", "2", "--diffaug", "color,translation,cutout",
         "--device", "cpu", "--precision", "fp32", "--threads", "1"]
AUGMENT = functools.partial(data.diffaug, policy="color,translation,cutout")


def wgan_args(batch_size, *extra):
    return train_wgan.build_parser().parse_args(FLAGS + ["--batch-size", str(batch_size), *extra])


class SharedDraws:
    """Context: the k-th unseeded torch.rand/randn/randint call returns rows offset..offset+n of a tensor of `total`
    rows drawn from a generator seeded with k, whichever process asks (all draws here are per sample)."""

    def __init__(self, total, offset):
        self.total, self.offset, self.count = total, offset, 0

    def _rows(self, draw, bounds, size, kw):
        size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else tuple(size)
        if "generator" in kw:  # an explicitly seeded draw (the test's own data) is left alone
            return draw(*bounds, size, **kw)
        n = size[0]
        assert n in (self.total, self.total // WORLD) and self.offset + n <= self.total, size
        full = draw(*bounds, (self.total, *size[1:]), generator=torch.Generator().manual_seed(1000 + self.count), **kw)
        self.count += 1
        return full[self.offset:self.offset + n]

    def __enter__(self):
        self.saved = rand, randn, randint = torch.rand, torch.randn, torch.randint
        torch.rand = lambda *size, **kw: self._rows(rand, (), size, kw)
        torch.randn = lambda *size, **kw: self._rows(randn, (), size, kw)
        torch.randint = lambda low, high, size, **kw: self._rows(randint, (low, high), (size,), kw)
        return self

    def __exit__(self, *exc):
        torch.rand, torch.randn, torch.randint = self.saved


def real_batches(steps, rows):
    """`steps` real batches of the global batch 2B, the same in every process; `rows` picks a process' share."""
    gen = torch.Generator().manual_seed(7)
    return [(torch.rand(WORLD * B, 3, 32, 32, generator=gen) * 2 - 1)[rows] for _ in range(steps)]


def wgan_models(transfer, seed=0):
    torch.manual_seed(seed)
    G, D = arch.Generator(nz=100, img_size=32, width=0.125), arch.Discriminator(img_size=32, width=0.125)
    G.apply(arch.weights_init)
    D.apply(arch.weights_init)
    if transfer:  # train_transfer.py's defaults: frozen prefixes stored in bf16
        arch.freeze_layers(G, 2)
        arch.freeze_layers(D, -2)
        arch.store_frozen(G)
        arch.store_frozen(D)
    return G.train(), D.train()


def wgan_iterations(env, batch_size, rows, per_half, transfer=False, iterations=1, seed=0, in_backward=False):
    """`iterations` of train_wgan.train's loop body: n_critic critic steps (with the penalty), one generator step;
    `in_backward`: each parameter stepped inside backward (--step-in-backward), its gradient averaged in its hook."""
    args = wgan_args(batch_size)
    G, D = wgan_models(transfer, seed)
    harness.broadcast_models([G, D], env)
    opt_g = harness.Adam(harness.trainable(G), lr=args.lr, betas=args.betas)
    opt_d = harness.Adam(harness.trainable(D), lr=args.lr, betas=args.betas)
    scaler_g, scaler_d = env.scaler(), env.scaler()
    step_g, step_d = (harness.StepInBackward(o, env) if in_backward else o for o in (opt_g, opt_d))
    reals = real_batches(iterations * args.n_critic, rows)
    losses = []
    for i in range(iterations):
        for real in reals[i * args.n_critic:(i + 1) * args.n_critic]:
            losses.append(train_wgan.critic_step(per_half(G), D, step_d, scaler_d, real, args, env, AUGMENT))
        losses.append(train_wgan.generator_step(per_half(G), D, step_g, scaler_g, args, env, AUGMENT)[None])
    return training_state(G, D, opt_g, opt_d, torch.cat(losses))


def kd_iteration(env, rows, per_half, alpha=0.05, in_backward=False):
    """One iteration of train_kd.main's loop body, with a frozen bf16 teacher in eval mode."""
    torch.manual_seed(1)
    teacher = arch.Generator(nz=100, img_size=32, width=0.125).apply(arch.weights_init).requires_grad_(False)
    arch.store_frozen(teacher, blocks=len(teacher.layers()))
    teacher.eval()
    G, D = arch.GeneratorKD(nz=100, img_size=32, width=0.125), arch.DCGANDiscriminator(img_size=32, width=0.125)
    G.apply(arch.weights_init)
    D.apply(arch.weights_init)
    G.train(), D.train()
    opt_g, opt_d = harness.Adam(G.parameters(), lr=5e-4, betas=(0.0, 0.999)), harness.Adam(D.parameters(), lr=5e-4, betas=(0.0, 0.999))
    step_g, step_d = (harness.StepInBackward(o, env) if in_backward else o for o in (opt_g, opt_d))
    (real,) = real_batches(1, rows)
    z = torch.randn(real.size(0), 100, 1, 1)
    with torch.inference_mode():
        target = teacher(z).float()
    target = target.clone()
    fake = per_half(G)(z).float()
    d_loss = train_kd.discriminator_step(D, step_d, env.scaler(), real, fake, env, AUGMENT)
    g_losses = train_kd.student_step(G, D, step_g, env.scaler(), fake, target, alpha, env, AUGMENT)
    return training_state(G, D, opt_g, opt_d, torch.cat([d_loss[None], g_losses]))


def training_state(G, D, opt_g, opt_d, losses):
    # parameters only: BatchNorm running statistics are per process by design (rank 0's are saved)
    state = {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "losses": losses}
    for net, model in (("G", G), ("D", D)):
        state[net] = {k: p.detach().clone() for k, p in model.named_parameters()}
        state[f"trainable_{net}"] = [k for k, p in model.named_parameters() if p.requires_grad]  # Adam's order
    return state


def _worker(rank, port, out):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    result = {}
    try:  # before any process group exists: --sync-bn on CPU processes must be a user error
        harness.setup(wgan_args(B, "--sync-bn"))
        result["sync_bn_error"] = None
        dist.destroy_process_group()
    except harness.UserError as e:
        result["sync_bn_error"] = str(e)
    env = harness.setup(wgan_args(B))  # torchrun's path: env:// rendezvous, gloo
    result["env"] = (env.rank, env.world_size, dist.get_backend())
    share = slice(rank * B, (rank + 1) * B)
    for name, run in (("wgan", lambda: wgan_iterations(env, B, share, lambda G: G)),
                      ("transfer", lambda: wgan_iterations(env, B, share, lambda G: G, transfer=True)),
                      ("kd", lambda: kd_iteration(env, share, lambda G: G)),
                      ("wgan in backward", lambda: wgan_iterations(env, B, share, lambda G: G, in_backward=True)),
                      ("transfer in backward",
                       lambda: wgan_iterations(env, B, share, lambda G: G, transfer=True, in_backward=True)),
                      ("kd in backward", lambda: kd_iteration(env, share, lambda G: G, in_backward=True))):
        with SharedDraws(WORLD * B, rank * B) as draws:
            result[name] = run()
        result[name]["draws"] = draws.count
    # several iterations as in real training: own data, own RNG stream, different initial weights before the
    # broadcast; DiffAugment on
    result["free"] = wgan_iterations(env, B, share, lambda G: G, iterations=3, seed=100 + rank)
    # a rank where a parameter got no gradient still takes part (zeros), frozen parameters do not
    model = nn.Module()
    model.used, model.frozen = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2), requires_grad=False)
    if rank == 1:
        model.used.grad = torch.tensor([2.0, 4.0, 6.0])
    harness.average_gradients(model, WORLD)
    result["averaged"] = (model.used.grad, model.frozen.grad)
    dist.barrier()  # as harness.run_main does: gloo can abort a process whose peer tears down first
    dist.destroy_process_group()
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    context = mp.start_processes(_worker, args=(free_port(), str(out)), nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.time() + 120
    while not context.join(timeout=1):  # a worker error raises here, with its traceback
        if time.time() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("the two workers did not finish in 120 s (a collective out of step?)")
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in range(WORLD)]


def per_half(G):
    """The reference runs G on each process' half of the global batch: its BatchNorm statistics per process."""
    return lambda z: torch.cat([G(half) for half in z.split(B)])


def reference(name):
    env = harness.Env(torch.device("cpu"))
    run = {"wgan": lambda: wgan_iterations(env, WORLD * B, slice(None), per_half),
           "transfer": lambda: wgan_iterations(env, WORLD * B, slice(None), per_half, transfer=True),
           "kd": lambda: kd_iteration(env, slice(None), per_half)}[name]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only fights the other tests for the cores
    try:
        with SharedDraws(WORLD * B, 0) as draws:
            state = run()
    finally:
        torch.set_num_threads(threads)
    state["draws"] = draws.count
    return state


def flat_state(state):
    """name -> tensor of every parameter and every optimizer state tensor (step counts included)."""
    flat = {f"{net}.{k}": v for net in ("G", "D") for k, v in state[net].items()}
    for opt in ("opt_g", "opt_d"):
        for i, s in state[opt]["state"].items():
            flat.update({f"{opt}.{i}.{k}": torch.as_tensor(v) for k, v in s.items()})
    return flat


def assert_same_training(two, ref):
    """Adam's state (steps, sums of g^2) to float rounding, and the weights wherever the gradient is above float
    noise. A weight whose gradient is mathematically zero (a conv bias right before BatchNorm / InstanceNorm)
    gets rounding noise that Adam's g / sqrt(v) turns into a step of about +-lr of random sign: such weights
    change no output, and are left out of the weight comparison only."""
    for net, opt in (("G", "opt_g"), ("D", "opt_d")):
        names = ref[f"trainable_{net}"]
        assert two[f"trainable_{net}"] == names and len(two[opt]["state"]) == len(ref[opt]["state"]) == len(names)
        v_max = max(float(s["exp_avg_sq"].max()) for s in ref[opt]["state"].values())
        assert v_max > 0  # the network took a step with a non-zero gradient
        compared = total = 0
        for i, name in enumerate(names):
            mine, theirs = two[opt]["state"][i], ref[opt]["state"][i]
            assert float(mine["step"]) == float(theirs["step"]) > 0, name
            # v = sum of g^2: a gradient summed instead of averaged over ranks would be 4x here (Adam's step hides it)
            torch.testing.assert_close(mine["exp_avg_sq"], theirs["exp_avg_sq"], rtol=1e-4, atol=1e-9 * v_max,
                                       msg=lambda m: f"{opt} state of {name}: {m}")
            signal = theirs["exp_avg_sq"] > 1e-10 * v_max  # |g| above 1e-5 of the network's largest
            torch.testing.assert_close(two[net][name][signal], ref[net][name][signal], rtol=0, atol=1e-7,
                                       msg=lambda m: f"{net}.{name}: {m}")
            compared, total = compared + int(signal.sum()), total + signal.numel()
        assert compared > 0.9 * total, (net, compared, total)
        for name in set(ref[net]) - set(names):  # frozen: untouched, and the same bf16 weights
            assert torch.equal(two[net][name], ref[net][name]), name


@pytest.mark.parametrize("name", ["wgan", "transfer", "kd", "wgan in backward", "transfer in backward", "kd in backward"])
def test_two_processes_over_2b_equal_one_process_over_the_same_2b(ranks, name):
    """`in backward`: --step-in-backward, each gradient averaged in its own hook, against the same reference."""
    ref = reference(name.split()[0])
    assert ranks[0][name]["draws"] == ranks[1][name]["draws"] == ref["draws"] > 0
    if name.startswith("transfer"):  # the frozen blocks took part as in train_transfer.py: no gradient, no Adam state
        assert len(ref["trainable_G"]) < len(ref["G"]) and len(ref["trainable_D"]) < len(ref["D"])
    # the losses each rank saw (means over its B) average to the reference's (means over 2B): the same samples
    torch.testing.assert_close((ranks[0][name]["losses"] + ranks[1][name]["losses"]) / 2, ref["losses"], rtol=1e-4, atol=1e-6)
    assert_same_training(ranks[0][name], ref)
    a, b = flat_state(ranks[0][name]), flat_state(ranks[1][name])
    assert all(torch.equal(a[k], b[k]) for k in a)  # and the two ranks hold the very same numbers


def test_ranks_stay_identical_over_several_iterations_of_different_data(ranks):
    a, b = ranks[0]["free"], ranks[1]["free"]
    assert not torch.equal(a["losses"], b["losses"])  # the ranks did see different batches and draws
    fa, fb = flat_state(a), flat_state(b)
    assert fa.keys() == fb.keys()
    G, D = wgan_models(False)
    every = {f"G.{k}" for k, _ in G.named_parameters()} | {f"D.{k}" for k, _ in D.named_parameters()}
    assert every <= fa.keys() and len(a["opt_g"]["state"]) + len(a["opt_d"]["state"]) == len(every)
    for key in fa:  # bitwise: both ranks applied the same all-reduced gradients to the same broadcast weights
        assert torch.equal(fa[key], fb[key]), key


def test_average_gradients_counts_a_missing_gradient_as_zero(ranks):
    for rank in ranks:
        used, frozen = rank["averaged"]
        assert torch.equal(used, torch.tensor([1.0, 2.0, 3.0])) and frozen is None


def test_setup_joins_torchrun_with_gloo_and_refuses_sync_bn_on_cpu(ranks):
    assert [r["env"] for r in ranks] == [(0, 2, "gloo"), (1, 2, "gloo")]
    for r in ranks:
        assert r["sync_bn_error"] and "--sync-bn" in r["sync_bn_error"] and "\n" not in r["sync_bn_error"]


TINY = ["--data", "demo:cats:64", "--img-size", "32", "--width", "0.125", "--batch-size", "4", "--iters-per-epoch", "2",
        "--n-critic", "2", "--ema", "0", "--diffaug", "none", "--precision", "fp32", "--device", "cpu", "--threads", "1",
        "--snapshot-every", "1"]


GLOO_EXIT_ABORT = "terminate called without an active exception"


def torchrun(cmd, env):
    """`torchrun --nproc_per_node 2 CMD`, launched again (into a clean --out) only when it failed with gloo's rare
    abort while the processes tear down after a complete run (every file written, "done" printed): a race in the
    CPU backend's teardown, not in the scripts (docs/troubleshooting.md). Any other failure is returned as it is."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *cmd]
    result = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    if result.returncode != 0 and GLOO_EXIT_ABORT in result.stderr and "done:" in result.stdout:
        shutil.rmtree(cmd[cmd.index("--out") + 1])
        result = subprocess.run(launch, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    return result


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory):
    """A 2-epoch run by `torchrun --nproc_per_node 2` (its output, and the run folder as it left it), then
    `python train_wgan.py --resume --epochs 3` in one process (its output, and the folder after it)."""
    tmp = tmp_path_factory.mktemp("torchrun")
    out, env = str(tmp / "run"), {**os.environ, "OMP_NUM_THREADS": "1", "GANOPT_CACHE": str(tmp / "cache")}
    two = torchrun(["train_wgan.py", *TINY, "--epochs", "2", "--out", out], env)
    assert two.returncode == 0, two.stdout + two.stderr
    after_two = {"files": sorted(os.listdir(out)), "snapshots": sorted(os.listdir(os.path.join(out, "snapshots"))),
                 "metrics": read_jsonl(os.path.join(out, "metrics.jsonl")), "summary": read_json(os.path.join(out, "summary.json")),
                 "ckpt": torch.load(os.path.join(out, "ckpt.pt"), weights_only=False)}
    one = subprocess.run([sys.executable, "train_wgan.py", *TINY, "--epochs", "3", "--out", out, "--resume"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert one.returncode == 0, one.stdout + one.stderr
    after_one = {"snapshots": sorted(os.listdir(os.path.join(out, "snapshots"))),
                 "metrics": read_jsonl(os.path.join(out, "metrics.jsonl")), "summary": read_json(os.path.join(out, "summary.json"))}
    return two.stdout, after_two, one.stdout, after_one


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_torchrun_two_processes_write_one_run(torchrun_run):
    stdout, run, _, _ = torchrun_run
    assert "cpu x 2, fp32, global batch 8" in stdout
    assert stdout.count("epoch 2/2 |") == 1 and stdout.count("done:") == 1  # rank 0 alone logs
    assert run["files"] == ["ckpt.pt", "generator.pt", "metrics.jsonl", "snapshots", "summary.json", "timeline.png"]
    assert run["snapshots"] == ["epoch_000000.png", "epoch_000001.png", "epoch_000002.png"]
    assert [(r["epoch"], r["step"], r["images"]) for r in run["metrics"]] == [(1, 2, 16), (2, 4, 32)]
    summary, ckpt = run["summary"], run["ckpt"]
    assert (summary["world_size"], summary["global_batch"], summary["epochs"], summary["steps"]) == (2, 8, 2, 4)
    assert ckpt["world_size"] == 2 and [r["batches"]["world_size"] for r in ckpt["ranks"]] == [2, 2]
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])  # own draws per rank


def test_a_two_process_checkpoint_resumes_in_one_process(torchrun_run):
    _, _, stdout, run = torchrun_run
    assert "was written by 2 process(es), this run has 1" in stdout and "resumed" in stdout
    assert [(r["epoch"], r["step"]) for r in run["metrics"]] == [(1, 2), (2, 4), (3, 6)]
    assert (run["summary"]["world_size"], run["summary"]["global_batch"], run["summary"]["epochs"]) == (1, 4, 3)
    assert run["snapshots"][-1] == "epoch_000003.png" and len(run["snapshots"]) == 4


def test_images_seen_continue_across_a_change_of_process_count(torchrun_run):
    _, _, _, run = torchrun_run
    assert [r["images"] for r in run["metrics"]] == [16, 32, 40]
