"""train_wgan.py: the gradient penalty, the two updates, checkpoints, exact resume, learning, user errors."""
import copy
import json
from types import SimpleNamespace
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

import arch
import harness
import data
import train_wgan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--img-size", "32", "--width", "0.125", "--batch-size", "8", "--iters-per-epoch", "2", "--n-critic", "2",
        "--data", "demo:cats:64", "--device", "cpu", "--snapshot-every", "1", "--precision", "fp32"]


class TinyCritic(nn.Module):
    """Non-linear, per-sample critic: tanh of a conv, summed with fixed weights."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1)).view(-1)


def test_gradient_penalty_matches_hand_computed_per_sample_penalty():
    torch.manual_seed(0)
    critic, real, fake = TinyCritic(), torch.randn(5, 3, 8, 8), torch.randn(5, 3, 8, 8)
    torch.manual_seed(1)
    gp = train_wgan.gradient_penalty(critic, real, fake)
    torch.manual_seed(1)
    eps = torch.rand(5, 1, 1, 1)  # the same draw gradient_penalty made
    expected = []
    for i in range(5):  # one sample at a time, the norm over all of C x H x W
        x_hat = (eps[i] * real[i:i + 1] + (1 - eps[i]) * fake[i:i + 1]).requires_grad_(True)
        (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
        expected.append((g.norm() - 1) ** 2)
    torch.testing.assert_close(gp, torch.stack(expected).mean())
    # the (wrong) channel-axis norm of many public implementations gives a different number
    torch.manual_seed(1)
    eps = torch.rand(5, 1, 1, 1)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(x_hat).sum(), x_hat)
    assert abs(((g.norm(2, dim=1) - 1) ** 2).mean().item() - gp.item()) > 1e-3


@pytest.mark.parametrize("scale, expected", [(1.0, 0.0), (2.0, 1.0), (0.5, 0.25)])
def test_gradient_penalty_of_linear_critic(scale, expected):
    # D(x) = <w, x> has gradient w everywhere: penalty (|w| - 1)^2, zero for a unit-norm w
    torch.manual_seed(0)
    w = torch.randn(3 * 16 * 16)
    w = w / w.norm() * scale
    critic = lambda x: x.flatten(1) @ w  # noqa: E731
    gp = train_wgan.gradient_penalty(critic, torch.randn(6, 3, 16, 16), torch.randn(6, 3, 16, 16))
    assert abs(gp.item() - expected) < 1e-5


ENV = harness.Env(torch.device("cpu"))  # fp32, one process
STEP_ARGS = SimpleNamespace(nz=100, lambda_gp=10.0, batch_size=8)


def tiny_models():
    torch.manual_seed(0)
    G, D = arch.Generator(img_size=32, width=0.125), arch.Discriminator(img_size=32, width=0.125)
    opt_g = torch.optim.Adam(G.parameters(), 1e-3, betas=(0.0, 0.9))
    opt_d = torch.optim.Adam(D.parameters(), 1e-3, betas=(0.0, 0.9))
    return G, D, opt_g, opt_d


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def changed(before, model):
    return [not torch.equal(a, b) for a, b in zip(before, model.parameters())]


def test_critic_step_changes_only_the_critic():
    G, D, opt_g, opt_d = tiny_models()
    g0, d0 = params(G), params(D)
    D0 = copy.deepcopy(D)  # the critic the step computed its loss with
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    torch.manual_seed(7)
    loss, wasserstein, gp = train_wgan.critic_step(G, D, opt_d, ENV.scaler(), real, STEP_ARGS, ENV)
    # (conv biases right before InstanceNorm get no gradient: the norm subtracts them out)
    assert not any(changed(g0, G)) and any(changed(d0, D)) and not torch.equal(d0[-2], D.output[0].weight)
    assert all(p.grad is None for p in list(G.parameters()) + list(D.parameters()))  # freed after the step
    # the logged values, recomputed from the same draws (z, then eps) with the critic as it was before the step
    torch.manual_seed(7)
    with torch.no_grad():
        fake = G(torch.randn(8, 100, 1, 1))
    eps = torch.rand(8, 1, 1, 1)
    x_hat = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D0(x_hat).sum(), x_hat)
    expected_gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
    with torch.no_grad():
        expected_w = D0(real).mean() - D0(fake).mean()
    torch.testing.assert_close(gp, expected_gp)
    torch.testing.assert_close(wasserstein, expected_w)
    torch.testing.assert_close(loss, -expected_w + 10.0 * expected_gp)


def test_generator_step_changes_only_the_generator_on_a_fresh_batch():
    G, D, opt_g, opt_d = tiny_models()
    seen = []
    forward = D.forward
    D.forward = lambda x: seen.append(x) or forward(x)
    g0, d0 = params(G), params(D)
    torch.manual_seed(5)
    train_wgan.generator_step(G, D, opt_g, ENV.scaler(), STEP_ARGS, ENV)
    assert all(changed(g0, G)) and not any(changed(d0, D))
    assert all(p.requires_grad for p in D.parameters())  # the critic's flags are restored
    assert all(p.grad is None for p in D.parameters())  # no gradient was computed for the critic
    (x,) = seen
    assert x.grad_fn is not None  # G(z) itself, with its graph, not a detached or stored batch
    torch.manual_seed(5)
    z = torch.randn(8, 100, 1, 1)
    G2, *_ = tiny_models()
    with torch.no_grad():
        torch.testing.assert_close(x.detach(), G2(z))  # a freshly drawn z through G


def test_main_writes_every_output(tmp_path):
    out = tmp_path / "run"
    train_wgan.main(TINY + ["--epochs", "2", "--out", str(out)])
    for name in ("ckpt.pt", "generator.pt", "metrics.jsonl", "summary.json", "timeline.png",
                 "snapshots/epoch_000000.png", "snapshots/epoch_000002.png"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert set(lines[0]) >= {"epoch", "step", "d_loss", "g_loss", "wasserstein", "gp", "sec", "peak_mem_mb"}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= {"script", "args", "params_g", "params_d", "trainable_g", "trainable_d", "generator_mb",
                            "peak_mem_mb", "sec_per_epoch", "device", "peak_tensor_mb", "peak_mem_kind"}
    assert summary["params_g"] == summary["trainable_g"] == arch.count_params(arch.Generator(img_size=32, width=0.125))
    assert summary["peak_tensor_mb"] > 0 and summary["steps"] == 4
    G, config = arch.load_model(str(out / "generator.pt"), ema=False)
    assert config == {"kind": "Generator", "nz": 100, "img_size": 32, "width": 0.125, "nc": 3}
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)  # loads without allowing code
    assert {"G", "G_ema", "D", "opt_g", "opt_d", "scaler_g", "scaler_d", "ranks", "args", "epoch", "step"} <= set(ckpt)
    assert set(ckpt["ranks"][0]) == {"rng", "batches"}
    G_ema, _ = arch.load_model(str(out / "generator.pt"))  # the moving average by default
    assert G.weights_kind == "raw" and G_ema.weights_kind == "ema"
    for k, v in G.state_dict().items():
        assert torch.equal(v, ckpt["G"]["state_dict"][k])
        assert torch.equal(G_ema.state_dict()[k], ckpt["G_ema"]["state_dict"][k])
    assert any(not torch.equal(v, G_ema.state_dict()[k]) for k, v in G.state_dict().items() if v.is_floating_point())


def test_resume_is_bitwise_exact(tmp_path):
    torch.set_num_threads(1)  # the same reduction order in both runs
    a, b = tmp_path / "a", tmp_path / "b"
    train_wgan.main(TINY + ["--epochs", "4", "--out", str(a), "--flip"])
    train_wgan.main(TINY + ["--epochs", "2", "--out", str(b), "--flip"])
    train_wgan.main(TINY + ["--epochs", "4", "--out", str(b), "--flip", "--resume"])
    ca, cb = (torch.load(p / "ckpt.pt", weights_only=True) for p in (a, b))
    assert ca["step"] == cb["step"] == 8
    for key in ("G", "D"):
        for k, v in ca[key]["state_dict"].items():
            assert torch.equal(v, cb[key]["state_dict"][k]), (key, k)
    for k, v in ca["opt_d"]["state"][0].items():
        assert torch.equal(v, cb["opt_d"]["state"][0][k])
    assert [json.loads(x)["epoch"] for x in (b / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


def test_checkpoint_round_trip_restores_rng_and_state(tmp_path):
    harness.seed_everything(3)
    state = harness.rng_state()
    expected = (torch.rand(3), np.random.rand(3), __import__("random").random())
    path = tmp_path / "c.pt"
    torch.save({"rng": state}, path)
    harness.seed_everything(99)
    harness.set_rng_state(arch.read_file(path)["rng"])
    got = (torch.rand(3), np.random.rand(3), __import__("random").random())
    assert torch.equal(expected[0], got[0]) and np.array_equal(expected[1], got[1]) and expected[2] == got[2]
    assert not any(f.startswith("c.pt.tmp") for f in os.listdir(tmp_path))  # the temp file was renamed


def image_stats_fd(x, y):
    """Frechet distance of 4x4-pooled image statistics (48-d): a cheap stand-in for FID on demo data."""
    from scipy import linalg
    fx = nn.functional.adaptive_avg_pool2d(x, 4).flatten(1).double().numpy()
    fy = nn.functional.adaptive_avg_pool2d(y, 4).flatten(1).double().numpy()
    mx, my, cx, cy = fx.mean(0), fy.mean(0), np.cov(fx, rowvar=False), np.cov(fy, rowvar=False)
    covmean = linalg.sqrtm(cx @ cy).real
    return float(((mx - my) ** 2).sum() + np.trace(cx + cy - 2 * covmean))


def test_training_moves_the_generator_towards_the_data(tmp_path):
    out = tmp_path / "learn"
    real = torch.from_numpy(data.load_dataset("demo:cats:512", 32, verbose=False).images[:256].copy()).float() / 127.5 - 1
    torch.manual_seed(0)
    z = torch.randn(256, 100, 1, 1)
    untrained = arch.Generator(img_size=32, width=0.25)
    torch.manual_seed(0)
    untrained.apply(arch.weights_init)
    train_wgan.main(["--img-size", "32", "--width", "0.25", "--batch-size", "32", "--iters-per-epoch", "25",
                     "--lr", "5e-4", "--data", "demo:cats:512", "--device", "cpu", "--epochs", "6",
                     "--snapshot-every", "100", "--out", str(out)])
    trained, _ = arch.load_model(str(out / "generator.pt"))
    with torch.no_grad():
        grey, learned = untrained.eval()(z), trained.eval()(z)
        before, after = image_stats_fd(grey, real), image_stats_fd(learned, real)
    assert after < 0.5 * before, (before, after)
    # what a newcomer sees first: the untrained generator draws near-uniform grey; the trained one draws faces
    # with the data's contrast (pixel spread within each image, averaged over images)
    spread = lambda x: x.flatten(1).std(1).mean().item()  # noqa: E731
    assert spread(grey) < 0.3 * spread(real) and spread(learned) > 0.5 * spread(real), (
        spread(grey), spread(learned), spread(real))


def run_cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "train_wgan.py"), *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args, message", [
    (["--data", "/no/such/folder"], "/no/such/folder"),
    (["--device", "tpu"], "--device"),
    (["--img-size", "48"], "power of two"),
    (["--batch-size", "0"], "positive"),
    (["--data", "demo:horses"], "demo"),
])
def test_user_errors_are_one_line(tmp_path, args, message):
    res = run_cli(*TINY, "--out", str(tmp_path / "x"), *args)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and message in lines[0], res.stderr


def test_existing_run_is_never_overwritten(tmp_path):
    out = tmp_path / "run"
    train_wgan.main(TINY + ["--epochs", "1", "--out", str(out)])
    before = (out / "ckpt.pt").read_bytes()
    res = run_cli(*TINY, "--epochs", "1", "--out", str(out))
    assert res.returncode == 2 and "--resume" in res.stderr and "Traceback" not in res.stderr
    assert (out / "ckpt.pt").read_bytes() == before
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    res = run_cli(*TINY, "--epochs", "2", "--out", str(out), "--resume", str(tmp_path / "junk.pt"))
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert (out / "ckpt.pt").read_bytes() == before


def test_the_penalty_interpolates_the_augmented_images_the_critic_sees(monkeypatch):
    # DiffAugment with WGAN-GP: x_hat lies between T(x) and T'(G(z)), the images the critic is actually shown
    G, D, opt_g, opt_d = tiny_models()
    seen, penalised = [], []
    forward = D.forward
    monkeypatch.setattr(D, "forward", lambda x: seen.append(x.detach().clone()) or forward(x))
    real_gp = train_wgan.gradient_penalty
    monkeypatch.setattr(train_wgan, "gradient_penalty",
                        lambda critic, r, f, *a: penalised.append((r.clone(), f.clone())) or real_gp(critic, r, f, *a))
    marker = lambda x: x + 100.0  # noqa: E731 (an "augmentation" whose output is unmistakable)
    real = torch.rand(8, 3, 32, 32) * 2 - 1
    train_wgan.critic_step(G, D, opt_d, ENV.scaler(), real, STEP_ARGS, ENV, marker)
    (r, f), = penalised
    torch.testing.assert_close(r, real + 100.0)
    assert f.min() > 98  # G's output in [-1, 1], augmented
    torch.testing.assert_close(seen[0], torch.cat([r, f]))  # the critic's loss saw exactly these


def test_ema_update_arithmetic_buffers_and_frozen_layers():
    torch.manual_seed(0)
    G = arch.Generator(img_size=32, width=0.125)
    arch.freeze_layers(G, 1)
    ema = harness.EMA(G, half_life_images=1000)
    before = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for p in G.parameters():
            if p.requires_grad:
                p.add_(1.0)
        G.layer2[1].running_mean.add_(3.0)
    ema.update(G, images_seen=100_000, batch_images=100)  # ramp-up past: half-life 1000 images
    beta = 0.5 ** (100 / 1000)
    for (name, p), e in zip(G.named_parameters(), ema.model.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(e, beta * before[name] + (1 - beta) * p)
        else:  # frozen: the same storage, not a copy
            assert e.data_ptr() == p.data_ptr()
    torch.testing.assert_close(ema.model.layer2[1].running_mean, G.layer2[1].running_mean)  # buffers copied
    ema2 = harness.EMA(G, half_life_images=1000)  # early in a run the ramp-up makes it follow G closely
    with torch.no_grad():
        G.final[0].weight.add_(1.0)
    ema2.update(G, images_seen=100, batch_images=100)  # half-life 0.05 * 100 = 5 images: beta ~ 1e-6
    torch.testing.assert_close(ema2.model.final[0].weight, G.final[0].weight, atol=1e-5, rtol=0)


def test_periodic_evaluation_writes_the_quality_curve(tmp_path):
    import compute_fid as cf
    torch.manual_seed(0)
    net = cf.fid_inception_v3_arch()  # random weights: the numbers mean nothing, the plumbing is checked
    for mod in net.modules():  # kaiming: features vary with the images (PyTorch's default init makes them ~0)
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    weights = tmp_path / "random_inception.pth"
    torch.save(net.state_dict(), weights)
    model = cf.load_inception(str(weights), dims=64)
    real = torch.from_numpy(data.load_dataset("demo:cats:64", 32, verbose=False).images[:40].copy())
    feats = cf.image_features(real, model, batch_size=20)
    mu, sigma = cf.statistics(feats)
    cf.save_stats(str(tmp_path / "ref.npz"), {"mu": mu, "sigma": sigma, "features": feats, "n": len(feats)})
    out = tmp_path / "run"
    train_wgan.main(TINY + ["--epochs", "2", "--out", str(out), "--eval-every", "1", "--eval-ref", str(tmp_path / "ref.npz"),
                            "--eval-n", "20", "--eval-weights", str(weights)])
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "fid" in r] == [1, 2]
    assert all(np.isfinite(r["fid"]) and r["kid"] is not None for r in records)
    assert (out / "quality.png").is_file()
    assert json.loads((out / "summary.json").read_text())["final"]["fid"] == records[-1]["fid"]
    # the last FID, recomputed here: the samples' weights (the moving average, in generator.pt) on 20 latents of
    # the evaluation's fixed seed, against the reference (features to float rounding: NHWC in training)
    G, _ = arch.load_model(str(out / "generator.pt"))
    z = torch.randn(20, 100, 1, 1, generator=torch.Generator().manual_seed(2024))
    with torch.no_grad():
        images = ((G.eval()(z) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    expected = cf.score(cf.image_features(images, model), cf.load_stats(str(tmp_path / "ref.npz")))["fid"]
    assert records[-1]["fid"] == pytest.approx(expected, abs=1e-4)  # logged with 4 decimals


def test_stop_flag_installs_its_handlers_only_when_asked():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    flag = harness.StopFlag()
    assert {sig: signal.getsignal(sig) for sig in before} == before and not flag.requested(ENV)
    try:
        flag.catch()
        assert all(signal.getsignal(sig) == flag._set for sig in before)
        os.kill(os.getpid(), signal.SIGTERM)  # handled: the flag is set, the process goes on
        assert flag.requested(ENV) and flag.signum == signal.SIGTERM
        with pytest.raises(SystemExit) as exc:
            flag.exit(3, 1, 5, "runs/x")
        assert exc.value.code == 128 + signal.SIGTERM
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
