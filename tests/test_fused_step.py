"""--step-in-backward (harness.StepInBackward): the optimizer step fused into backward gives the same training as
the step after backward -- weights and Adam's state, bitwise on a CPU (the same kernels in the same order; only the
moment of each parameter's update moves) -- for the WGAN-GP critic step with its double-backward penalty, the
generator step, transfer with frozen blocks (fp32- and bf16-stored), the KD steps, under fp32 and bf16 autocast;
fp16 is refused; a run resumed mid-run (at an epoch end and mid-epoch) ends bitwise equal to an uninterrupted one.
Two processes (torchrun) are tested in test_distributed.py."""
import copy
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import arch
import harness
import train_kd
import train_transfer
import train_wgan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CPU = torch.device("cpu")
STEP_ARGS = SimpleNamespace(nz=100, lambda_gp=10.0, batch_size=4)


def wgan_models(frozen_dtype=None):
    """A tiny WGAN-GP pair (16x16, width 0.25); with `frozen_dtype`, train_transfer.py's default freezing."""
    torch.manual_seed(0)
    G, D = arch.Generator(nz=100, img_size=16, width=0.25), arch.Discriminator(img_size=16, width=0.25)
    G.apply(arch.weights_init)
    D.apply(arch.weights_init)
    if frozen_dtype:
        arch.freeze_layers(G, 2)
        arch.freeze_layers(D, -2)
        if frozen_dtype == "bf16":
            arch.store_frozen(G)
            arch.store_frozen(D)
    return G.train(), D.train()


def steppers(opts, env, in_backward):
    return [harness.StepInBackward(o, env) if in_backward else o for o in opts]


def state(models, opts):
    """Every parameter and buffer, and every optimizer state tensor (step counts included)."""
    flat = {f"{i}.{k}": v.detach().clone() for i, m in enumerate(models) for k, v in m.state_dict().items()}
    for i, opt in enumerate(opts):
        for j, s in opt.state_dict()["state"].items():
            flat.update({f"opt{i}.{j}.{k}": torch.as_tensor(v).clone() for k, v in s.items()})
    return flat


def no_gradients(*models):
    return all(p.grad is None for m in models for p in m.parameters())


def wgan_training(in_backward, precision="fp32", frozen_dtype=None, betas=(0.0, 0.9), iterations=3, n_critic=2):
    """train_wgan.train's loop body, `iterations` times: n_critic critic steps (with the penalty), one generator step."""
    env = harness.Env(CPU, precision=precision)
    G, D = wgan_models(frozen_dtype)
    initial = state([G, D], [])
    opt_g = harness.Adam(harness.trainable(G), lr=1e-3, betas=betas)
    opt_d = harness.Adam(harness.trainable(D), lr=1e-3, betas=betas)
    step_g, step_d = steppers((opt_g, opt_d), env, in_backward)
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    losses = []
    for _ in range(iterations):
        for _ in range(n_critic):
            real = torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1
            losses.append(train_wgan.critic_step(G, D, step_d, env.scaler(), real, STEP_ARGS, env))
            assert no_gradients(G, D)  # the step in backward freed each gradient (the other path: zero_grad)
        losses.append(train_wgan.generator_step(G, D, step_g, env.scaler(), STEP_ARGS, env)[None])
        assert no_gradients(G, D) and all(p.requires_grad for p in harness.trainable(D))
    return initial, state([G, D], [opt_g, opt_d]), torch.cat(losses), (opt_g, opt_d)


def kd_training(in_backward, precision="fp32", iterations=3):
    """train_kd.main's loop body with a bf16-stored frozen teacher, `iterations` times (32x32: the student's least)."""
    env = harness.Env(CPU, precision=precision)
    torch.manual_seed(0)
    teacher = arch.Generator(nz=100, img_size=32, width=0.125).apply(arch.weights_init).requires_grad_(False)
    arch.store_frozen(teacher, blocks=len(teacher.layers()))
    teacher.eval()
    G, D = arch.GeneratorKD(nz=100, img_size=32, width=0.125), arch.DCGANDiscriminator(img_size=32, width=0.125)
    G.apply(arch.weights_init).train()
    D.apply(arch.weights_init).train()
    initial = state([G, D], [])
    opt_g, opt_d = (harness.Adam(m.parameters(), lr=5e-4, betas=(0.0, 0.999)) for m in (G, D))
    step_g, step_d = steppers((opt_g, opt_d), env, in_backward)
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    losses = []
    for _ in range(iterations):
        real = torch.rand(4, 3, 32, 32, generator=gen) * 2 - 1
        z = torch.randn(4, 100, 1, 1)
        with torch.inference_mode(), env.autocast():
            target = teacher(z).float()
        target = target.clone()
        with env.autocast():
            fake = G(z).float()
        d_loss = train_kd.discriminator_step(D, step_d, env.scaler(), real, fake, env)
        g_losses = train_kd.student_step(G, D, step_g, env.scaler(), fake, target, 0.05, env)
        assert no_gradients(G, D) and all(p.requires_grad for p in D.parameters())
        losses.append(torch.cat([d_loss[None], g_losses]))
    return initial, state([G, D], [opt_g, opt_d]), torch.stack(losses), (opt_g, opt_d)


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def assert_trained(initial, final, opts, steps):
    """Every trainable tensor has Adam state with the expected step count; weights moved; frozen ones did not."""
    for opt, n in zip(opts, steps):
        params = [p for g in opt.param_groups for p in g["params"]]
        assert len(opt.state) == len(params) > 0
        assert all(float(s["step"]) == n for s in opt.state.values())
    moved = [k for k in initial if not torch.equal(initial[k], final[k])]
    assert moved


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("betas", [(0.0, 0.9), (0.5, 0.9)], ids=["no-first-moment", "first-moment"])
def test_wgan_gp_steps_in_backward_equal_steps_after_backward(precision, betas):
    initial, after, losses_after, _ = wgan_training(False, precision, betas=betas)
    _, inside, losses_inside, opts = wgan_training(True, precision, betas=betas)
    assert_bitwise_equal(after, inside)
    assert torch.equal(losses_after, losses_inside)
    # the critic stepped once per critic step (never in the generator step), the generator once per iteration
    assert_trained(initial, inside, opts[::-1], steps=(6, 3))
    assert ("opt1.0.exp_avg" in inside) == (betas[0] > 0)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("frozen_dtype", ["fp32", "bf16"])
def test_transfer_steps_in_backward_equal_steps_after_backward(precision, frozen_dtype):
    initial, after, _, _ = wgan_training(False, precision, frozen_dtype=frozen_dtype)
    _, inside, _, opts = wgan_training(True, precision, frozen_dtype=frozen_dtype)
    assert_bitwise_equal(after, inside)
    assert_trained(initial, inside, opts[::-1], steps=(6, 3))
    G, D = wgan_models(frozen_dtype)
    frozen = [f"{i}.{k}" for i, m in enumerate((G, D)) for k, p in m.named_parameters() if not p.requires_grad]
    assert frozen and all(torch.equal(initial[k], inside[k]) for k in frozen)
    assert all(len(o.param_groups[0]["params"]) < len(list(m.parameters())) for o, m in zip(opts, (G, D)))
    if frozen_dtype == "bf16":
        assert any(inside[k].dtype == torch.bfloat16 for k in frozen)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_kd_steps_in_backward_equal_steps_after_backward(precision):
    initial, after, losses_after, _ = kd_training(False, precision)
    _, inside, losses_inside, opts = kd_training(True, precision)
    assert_bitwise_equal(after, inside)
    assert torch.equal(losses_after, losses_inside)
    assert_trained(initial, inside, opts, steps=(3, 3))


def test_each_parameter_steps_once_per_backward_after_the_penalty_double_backward():
    """autograd.grad(create_graph=True) of the penalty accumulates into no .grad: the hooks fire in the loss's
    backward only, once per parameter, with the complete gradient (the sum of the penalty's and the critic's)."""
    env = harness.Env(CPU)
    G, D = wgan_models()
    reference = copy.deepcopy(D)
    opt = harness.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.9))
    seen = []
    opt.register_step_pre_hook(lambda o, args, kwargs: seen.append([(p, p.grad.clone()) for p in kwargs["params"]]))
    step = harness.StepInBackward(opt, env)
    real = torch.rand(4, 3, 16, 16) * 2 - 1
    torch.manual_seed(3)
    loss = train_wgan.critic_step(G, D, step, env.scaler(), real, STEP_ARGS, env)[0]
    assert len(seen) == len(list(D.parameters())) and all(len(s) == 1 for s in seen)
    assert {id(s[0][0]) for s in seen} == {id(p) for p in D.parameters()}  # each one once
    # the same loss on an untouched copy, backward without hooks: the gradients each hook saw
    torch.manual_seed(3)
    z = torch.randn(4, 100, 1, 1)
    with torch.no_grad():
        fake = G(z)
    d_real, d_fake = reference(torch.cat([real, fake])).chunk(2)
    gp = train_wgan.gradient_penalty(reference, real, fake)
    ref_loss = d_fake.mean() - d_real.mean() + 10.0 * gp
    assert torch.equal(ref_loss.detach(), loss)
    ref_loss.backward()
    grads = {id(p): g for (p, g), in seen}
    for p, r in zip(D.parameters(), reference.parameters()):
        assert torch.equal(grads[id(p)], r.grad)
    step.remove()
    assert all(not p._post_accumulate_grad_hooks for p in D.parameters())


def test_fp16_is_refused_in_one_line(tmp_path):
    with pytest.raises(harness.UserError, match="--step-in-backward cannot run with --precision fp16"):
        harness.StepInBackward(harness.Adam([nn.Parameter(torch.zeros(2))]), harness.Env(CPU, precision="fp16"))
    res = subprocess.run([sys.executable, "train_wgan.py", "--data", "demo:cats:64", "--img-size", "16", "--width", "0.125",
                          "--precision", "fp16", "--device", "cpu", "--step-in-backward", "--out", str(tmp_path / "run")],
                         cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and lines[-1].startswith("error: --step-in-backward cannot run with --precision fp16")
    assert "Traceback" not in res.stderr and not (tmp_path / "run").exists()


def test_the_meter_sees_one_gradient_at_a_time_in_backward_and_all_of_them_after():
    """Weights large, activations tiny: after backward every gradient exists at once; in backward one at a time."""
    peaks = {}
    for in_backward in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, 256), nn.Tanh(), nn.Linear(256, 256))
        opt = harness.Adam(model.parameters(), lr=1e-3)
        meter = harness.MemoryMeter(CPU, [model], [opt])
        meter.start()
        step = harness.StepInBackward(opt, harness.Env(CPU)) if in_backward else opt
        for _ in range(2):
            with meter.hooks():
                loss = model(torch.randn(1, 256)).square().sum()
                harness.optimize(loss, model, step, harness.Env(CPU).scaler(), harness.Env(CPU))
        peaks[in_backward] = meter.peak_parts
    weight, everything = 256 * 256 * 4, sum(p.numel() * 4 for p in model.parameters())
    assert peaks[False]["grads"] == everything
    assert 0 < peaks[True]["grads"] <= weight
    assert peaks[True]["params"] == peaks[False]["params"] == everything
    assert peaks[True]["optimizer"] == peaks[False]["optimizer"] == 2 * everything  # beta1 > 0: both moments


TINY = ["--img-size", "16", "--width", "0.125", "--batch-size", "4", "--iters-per-epoch", "2", "--n-critic", "2",
        "--data", "demo:cats:64", "--device", "cpu", "--snapshot-every", "1", "--precision", "fp32", "--threads", "1"]


def checkpoint(out):
    return torch.load(os.path.join(out, "ckpt.pt"), weights_only=True)


def assert_same_checkpoint(a, b):
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    for key in ("G", "D", "G_ema"):
        sa, sb = a[key]["state_dict"], b[key]["state_dict"]
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), key
    for key in ("opt_g", "opt_d"):
        sa, sb = a[key]["state"], b[key]["state"]
        assert sa.keys() == sb.keys() and sa
        assert all(torch.equal(sa[i][n], sb[i][n]) for i in sa for n in sa[i]), key
    assert torch.equal(a["ranks"][0]["rng"]["torch"], b["ranks"][0]["rng"]["torch"])


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """train_wgan.py for 3 epochs with --step-in-backward, and without."""
    tmp = tmp_path_factory.mktemp("straight")
    train_wgan.main(TINY + ["--epochs", "3", "--out", str(tmp / "inside"), "--step-in-backward"])
    train_wgan.main(TINY + ["--epochs", "3", "--out", str(tmp / "after"), "--no-step-in-backward"])
    return tmp / "inside", tmp / "after"


def test_train_wgan_step_in_backward_equals_the_step_after_backward(straight_runs):
    inside, after = straight_runs
    assert_same_checkpoint(checkpoint(inside), checkpoint(after))
    summary = json.loads((inside / "summary.json").read_text())
    assert summary["args"]["step_in_backward"] is True and summary["peak_tensor_parts_mb"]["grads"] >= 0


def test_resume_at_an_epoch_end_equals_the_uninterrupted_run(straight_runs, tmp_path):
    inside, _ = straight_runs
    out = str(tmp_path / "split")
    train_wgan.main(TINY + ["--epochs", "1", "--out", out, "--step-in-backward"])
    train_wgan.main(TINY + ["--epochs", "3", "--out", out, "--step-in-backward", "--resume"])
    assert_same_checkpoint(checkpoint(inside), checkpoint(out))


def test_resume_mid_epoch_equals_the_uninterrupted_run(straight_runs, tmp_path, monkeypatch):
    """A stop request (as SIGTERM makes) after the 3rd generator update, i.e. inside epoch 2: checkpoint, resume."""
    inside, _ = straight_runs
    out = str(tmp_path / "stopped")
    updates = []
    monkeypatch.setattr(harness.StopFlag, "requested", lambda self, env: updates.append(1) or len(updates) == 3)
    with pytest.raises(SystemExit) as stop:
        train_wgan.main(TINY + ["--epochs", "3", "--out", out, "--step-in-backward"])
    assert stop.value.code == 128 + 15
    ckpt = checkpoint(out)
    assert (ckpt["epoch"], ckpt["iteration"], ckpt["step"]) == (1, 1, 3)
    monkeypatch.undo()
    train_wgan.main(TINY + ["--epochs", "3", "--out", out, "--step-in-backward", "--resume"])
    assert_same_checkpoint(checkpoint(inside), checkpoint(out))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A generator.pt of a tiny untrained teacher (32x32: the student's least), and a train_wgan.py run (ckpt.pt)."""
    tmp = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    path = tmp / "generator.pt"
    torch.save(arch.generator_file(arch.Generator(nz=100, img_size=32, width=0.125).apply(arch.weights_init)), path)
    train_wgan.main(TINY[2:] + ["--img-size", "32", "--epochs", "1", "--out", str(tmp / "wgan")])
    return path, tmp / "wgan"


def test_train_kd_and_train_transfer_step_in_backward_equal_the_step_after_backward(teacher, tmp_path):
    generator, run = teacher
    kd = ["--teacher", str(generator), "--data", "demo:cats:64", "--width", "0.125", "--batch-size", "4",
          "--iters-per-epoch", "2", "--epochs", "2", "--device", "cpu", "--precision", "fp32", "--threads", "1"]
    transfer = ["--init", str(run)] + TINY[2:] + ["--img-size", "32", "--epochs", "2", "--data", "demo:dogs:64"]
    for main, argv in ((train_kd.main, kd), (train_transfer.main, transfer)):
        outs = [str(tmp_path / f"{main.__module__}_{flag}") for flag in ("after", "inside")]
        main(argv + ["--out", outs[0], "--no-step-in-backward"])
        main(argv + ["--out", outs[1], "--step-in-backward"])
        assert_same_checkpoint(*map(checkpoint, outs))


@pytest.mark.parametrize("world_size, precision, flag, expected", [
    (1, "fp32", None, True), (1, "bf16", None, True), (1, "fp16", None, False), (2, "fp32", None, False),
    (1, "fp32", False, False), (2, "bf16", True, True)])
def test_the_default_steps_in_backward_in_one_process_unless_fp16(world_size, precision, flag, expected):
    assert harness.auto_step_in_backward(flag, world_size, precision) is expected


def test_a_run_records_the_step_it_used_and_a_resume_follows_it(tmp_path):
    out = str(tmp_path / "run")
    train_wgan.main(TINY + ["--epochs", "1", "--out", out])  # the default, one process, fp32: in backward
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["args"]["step_in_backward"] is True
    with pytest.raises(harness.UserError, match="--step-in-backward cannot run with --precision fp16"):
        fp16 = [("fp16" if a == "fp32" else a) for a in TINY]
        train_wgan.main(fp16 + ["--epochs", "2", "--out", out, "--resume", "--step-in-backward"])
    train_wgan.main(TINY + ["--epochs", "2", "--out", out, "--resume", "--no-step-in-backward"])  # switched: applied
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["args"]["step_in_backward"] is False


def test_a_resume_at_auto_precision_follows_the_checkpoints_fp16_and_steps_after_backward(tmp_path, capsys):
    out = str(tmp_path / "run")
    fp16 = [("fp16" if a == "fp32" else a) for a in TINY]
    train_wgan.main(fp16 + ["--epochs", "1", "--out", out])  # the default at fp16: the step after backward
    auto = [a for a in TINY if a not in ("--precision", "fp32")]  # --precision auto, as a plain --resume
    train_wgan.main(auto + ["--epochs", "2", "--out", out, "--resume"])
    with open(os.path.join(out, "summary.json")) as f:
        saved = json.load(f)["args"]
    assert (saved["precision"], saved["step_in_backward"]) == ("fp16", False)
    assert "note: --step-in-backward" not in capsys.readouterr().out  # nothing changed: nothing to note
