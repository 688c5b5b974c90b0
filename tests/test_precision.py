"""Precision and lean storage on a CPU: harness.Adam, the bf16 / fp16 gradient penalty, loss scaling, bf16 runs of
every training script, bf16 frozen weights and teacher (arch.store_frozen). Tiny models, a few steps each."""
import json

import pytest
import torch

import arch
import harness
import train_kd
import train_transfer
import train_wgan

CPU = torch.device("cpu")
TINY = ["--img-size", "32", "--width", "0.125", "--batch-size", "4", "--iters-per-epoch", "2", "--epochs", "1",
        "--device", "cpu", "--threads", "1", "--ema", "0"]
WGAN_ARGS = ["--n-critic", "2", "--data", "demo:cats:16"]
TRANSFER_ARGS = ["--n-critic", "2", "--data", "demo:dogs:16"]
KD_ARGS = ["--data", "demo:cats:16"]


def final_losses(out):
    with open(out / "metrics.jsonl") as f:
        record = [json.loads(line) for line in f if line.strip()][-1]
    return {k: v for k, v in record.items() if k in ("d_loss", "wasserstein", "gp", "g_loss", "bce_g", "mse_teacher")}


# ----------------------------------------------------------------------------- harness.Adam

@pytest.mark.parametrize("beta1", [0.0, 0.5])
def test_adam_equals_torch_adam_and_keeps_no_first_moment_at_beta1_zero(beta1):
    torch.manual_seed(0)
    ours = [torch.randn(7, 5, requires_grad=True), torch.randn(3, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_(True) for p in ours]
    opt = harness.Adam(ours, lr=1e-2, betas=(beta1, 0.9))
    ref = torch.optim.Adam(theirs, lr=1e-2, betas=(beta1, 0.9))
    for _ in range(5):
        grads = [torch.randn_like(p) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    assert all(("exp_avg" in opt.state[p]) == (beta1 > 0) for p in ours)
    assert all(opt.state[p]["exp_avg_sq"].shape == p.shape for p in ours)


# ----------------------------------------------------------------------------- the gradient penalty at low precision

def tiny_critic():
    torch.manual_seed(0)
    D = arch.Discriminator(img_size=16, width=0.125)
    D.apply(arch.weights_init)
    return D


def penalty_and_grads(D, real, fake, env=None, scaler=None):
    """(penalty, its gradient w.r.t. the critic's weights), eps drawn from the same seed every call."""
    D.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    gp = train_wgan.gradient_penalty(D, real, fake, env, scaler)
    gp.backward()
    return gp.detach(), weight_grads(D)


def weight_grads(D):  # the output bias gets none: the penalty does not depend on it
    return torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).flatten() for p in D.parameters()])


def images(n=4, size=16):
    gen = torch.Generator().manual_seed(2)
    return [torch.rand(n, 3, size, size, generator=gen) * 2 - 1 for _ in range(2)]


def test_bf16_gradient_penalty_equals_fp32_within_bf16_rounding():
    # bf16 keeps 8 significant bits (relative step 2^-8 = 0.4%); through a 2-block critic and its double backward
    # the penalty ends within 1% and its weight gradient within 2% in norm and direction (measured: 0.08%, 0.1%)
    D, (real, fake) = tiny_critic(), images()
    gp32, g32 = penalty_and_grads(D, real, fake)
    gp16, g16 = penalty_and_grads(D, real, fake, harness.Env(CPU, precision="bf16"))
    assert abs(gp16 - gp32) <= 0.01 * gp32
    assert torch.cosine_similarity(g16, g32, dim=0) > 0.999
    assert (g16.norm() / g32.norm() - 1).abs() < 0.02


def test_fp16_penalty_once_the_scaler_backs_off_equals_fp32():
    # the PyTorch AMP recipe: the critic's output is loss-scaled before autograd.grad, the gradient unscaled
    # before its norm, the penalty loss-scaled again for backward. Steps whose gradients overflow fp16 are
    # skipped and the scale halved (2^16 overflows the output's own gradient, fp16's max being 65504; on a CPU
    # the fp16 double backward also overflows at 2^10 here); the first step taken must equal fp32
    D, (real, fake) = tiny_critic(), images()
    gp32, g32 = penalty_and_grads(D, real, fake)
    env = harness.Env(CPU, precision="fp16")
    scaler, opt = env.scaler(), torch.optim.SGD(D.parameters(), lr=0.0)  # lr 0: compare gradients only
    for tries in range(1, 17):
        scale = scaler.get_scale()
        D.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        gp = train_wgan.gradient_penalty(D, real, fake, env, scaler)
        scaler.scale(gp).backward()
        scaler.step(opt)  # unscales the gradients, skips the step if any is inf/NaN
        scaler.update()
        if scaler.get_scale() == scale:  # taken
            break
        assert scaler.get_scale() == scale / 2
    assert 1 < tries < 16 and scale < 2 ** 16
    assert abs(gp.detach() - gp32) <= 0.01 * gp32  # fp16 keeps 11 significant bits
    g = weight_grads(D)
    assert torch.cosine_similarity(g, g32, dim=0) > 0.999
    assert (g.norm() / g32.norm() - 1).abs() < 0.02  # unscaled: not `scale` times the fp32 gradient


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_penalty_of_a_zero_gradient_is_one_and_its_gradient_finite(precision):
    # a critic with zero weights: grad_x D = 0, the norm's derivative at 0 must not give NaN
    w = torch.zeros(3 * 8 * 8, requires_grad=True)
    critic = lambda x: x.flatten(1) @ w  # noqa: E731
    env = harness.Env(CPU, precision=precision)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8) if precision == "fp16" else None
    gp = train_wgan.gradient_penalty(critic, torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8), env, scaler)
    gp.backward()
    assert gp.item() == 1.0
    assert torch.isfinite(w.grad).all()


# ----------------------------------------------------------------------------- fp16 loss scaling (GradScaler on CPU)

def tiny_model_and_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 1))
    return model, torch.randn(8, 6)


def test_grad_scaler_scales_the_loss_and_unscales_the_gradients_exactly():
    model, x = tiny_model_and_batch()
    model(x).pow(2).mean().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    loss = model(x).pow(2).mean()
    scaled = scaler.scale(loss)
    assert scaled.item() == loss.item() * 2 ** 12
    scaled.backward()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler.unscale_(opt)
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=0)  # a power of two: exact up to fp32 rounding
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 12  # a finite step leaves the scale (it grows after 2000 of them)


def test_optimize_skips_a_step_with_an_inf_gradient_and_halves_the_scale():
    model, x = tiny_model_and_batch()
    env = harness.Env(CPU, precision="fp16")
    scaler = env.scaler()
    opt = harness.Adam(model.parameters(), lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    scale = scaler.get_scale()
    harness.optimize(model(x).mean() * 1e38, model, opt, scaler, env)  # x 2^16: the gradient overflows to inf
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert not opt.state  # skipped: Adam never ran
    assert scaler.get_scale() == scale / 2
    harness.optimize(model(x).mean(), model, opt, scaler, env)  # a finite step goes through
    assert not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert scaler.get_scale() == scale / 2
    assert all(p.grad is None for p in model.parameters())


# ----------------------------------------------------------------------------- the training scripts under bf16

@pytest.fixture(scope="module")
def bf16_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("precision") / "wgan_bf16"
    train_wgan.main([*TINY, *WGAN_ARGS, "--precision", "bf16", "--out", str(out)])
    return out


def assert_finite_bf16_run(out):
    with open(out / "summary.json") as f:
        summary = json.load(f)
    assert summary["precision"] == "bf16"
    losses = final_losses(out)
    assert losses and all(v == v and abs(v) < float("inf") for v in losses.values()), losses


def test_train_wgan_bf16_runs_with_finite_losses(bf16_teacher):
    assert_finite_bf16_run(bf16_teacher)


def test_train_transfer_bf16_runs_with_finite_losses(bf16_teacher, tmp_path):
    train_transfer.main([*TINY, *TRANSFER_ARGS, "--precision", "bf16", "--init", str(bf16_teacher), "--out", str(tmp_path / "t")])
    assert_finite_bf16_run(tmp_path / "t")


def test_train_kd_bf16_runs_with_finite_losses(bf16_teacher, tmp_path):
    train_kd.main([*TINY, *KD_ARGS, "--precision", "bf16", "--teacher", str(bf16_teacher), "--out", str(tmp_path / "k")])
    assert_finite_bf16_run(tmp_path / "k")


def test_train_wgan_fp16_survives_the_skipped_first_step(tmp_path):
    # the scaler's first scale (2^16) overflows the penalty's fp16 gradient: those steps are skipped, not fatal
    train_wgan.main([*TINY, *WGAN_ARGS, "--precision", "fp16", "--out", str(tmp_path / "w")])
    ckpt = torch.load(tmp_path / "w" / "ckpt.pt", weights_only=True)
    assert ckpt["scaler_d"]["scale"] < 2.0 ** 16  # it lowered its scale after the overflows
    assert all(torch.isfinite(v).all() for v in ckpt["G"]["state_dict"].values())


# ----------------------------------------------------------------------------- lean storage: bf16 frozen weights

def lean_and_full_runs(main, argv, flag, tmp_path):
    """(losses, summary) of the same run with `flag` fp32 and bf16."""
    runs = {}
    for dtype in ("fp32", "bf16"):
        main([*argv, flag, dtype, "--out", str(tmp_path / dtype)])
        with open(tmp_path / dtype / "summary.json") as f:
            runs[dtype] = final_losses(tmp_path / dtype), json.load(f)
    return runs["bf16"], runs["fp32"]


def params_mb(summary):  # what the memory meter saw of parameters and buffers (the KD teacher included)
    return summary["peak_tensor_parts_mb"]["params"]


def assert_losses_close(lean, full, rel, floor):
    assert lean.keys() == full.keys()
    for k in full:
        assert abs(lean[k] - full[k]) <= rel * max(abs(full[k]), floor), (k, lean, full)


def test_transfer_bf16_frozen_weights_end_close_to_fp32_frozen(bf16_teacher, tmp_path):
    # frozen weights rounded to bf16 (0.4% each): after 2 iterations every loss within 5% (measured: <= 1.7%)
    (lean, lean_summary), (full, full_summary) = lean_and_full_runs(train_transfer.main, [
        *TINY, *TRANSFER_ARGS, "--precision", "fp32", "--init", str(bf16_teacher)], "--frozen-dtype", tmp_path)
    assert_losses_close(lean, full, rel=0.05, floor=0.1)
    assert params_mb(lean_summary) < params_mb(full_summary)  # frozen blocks stored in bf16


def test_kd_bf16_teacher_ends_close_to_fp32_teacher(bf16_teacher, tmp_path):
    # the teacher's outputs move by bf16 rounding: the losses after 2 iterations within 1% (measured: 1e-5)
    (lean, lean_summary), (full, full_summary) = lean_and_full_runs(train_kd.main, [
        *TINY, *KD_ARGS, "--precision", "fp32", "--teacher", str(bf16_teacher)], "--teacher-dtype", tmp_path)
    assert_losses_close(lean, full, rel=0.01, floor=1e-3)
    assert params_mb(lean_summary) < params_mb(full_summary)  # the teacher stored in bf16


def test_store_frozen_halves_frozen_bytes_and_keeps_the_output():
    torch.manual_seed(0)
    G = arch.Generator(img_size=32, width=0.125)
    G.apply(arch.weights_init)
    frozen = arch.freeze_layers(G, 2)
    z = torch.randn(4, 100, 1, 1)
    G.eval()
    with torch.no_grad():
        before = G(z)
    frozen_bytes = lambda: sum(p.numel() * p.element_size() for n, m in G.layers() if n in frozen  # noqa: E731
                               for p in m.parameters())
    trainable_before = [p.detach().clone() for p in harness.trainable(G)]
    fp32_bytes = frozen_bytes()
    saved = arch.store_frozen(G)
    assert frozen_bytes() * 2 == fp32_bytes == saved * 2
    assert all(p.dtype == torch.bfloat16 for n, m in G.layers() if n in frozen for p in m.parameters())
    assert all(p.dtype == torch.float32 and torch.equal(p, q) for p, q in zip(harness.trainable(G), trainable_before))
    assert all(b.dtype == torch.float32 for b in G.buffers() if b.is_floating_point())  # BatchNorm statistics
    with torch.no_grad():
        after = G(z)
    assert after.dtype == torch.float32
    assert (after - before).abs().max() < 0.02  # Tanh output in [-1, 1]; bf16 weights are within 0.4%
    # training still works: the trainable blocks get gradients, the bf16 ones none
    G.train()
    G(z).mean().backward()
    assert all(p.grad is not None for p in harness.trainable(G))
    assert all(p.grad is None for n, m in G.layers() if n in frozen for p in m.parameters())


def test_store_frozen_teacher_halves_every_weight():
    torch.manual_seed(0)
    teacher = arch.Generator(img_size=32, width=0.125).eval().requires_grad_(False)
    teacher.apply(arch.weights_init)
    z = torch.randn(4, 100, 1, 1)
    with torch.no_grad():
        before = teacher(z)
    weights = sum(p.numel() * 4 for p in teacher.parameters())
    assert arch.store_frozen(teacher, blocks=len(teacher.layers())) * 2 == weights
    assert sum(p.numel() * p.element_size() for p in teacher.parameters()) * 2 == weights
    with torch.inference_mode():
        after = teacher(z)
    assert (after - before).abs().max() < 0.02
