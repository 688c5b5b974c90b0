"""train_transfer.py (frozen-layer transfer) and train_kd.py (knowledge distillation).

Transfer: the run starts from the teacher's G and D; frozen parameters and frozen BatchNorm buffers stay
bitwise the teacher's while the trainable ones move; Adam only ever sees trainable parameters; frozen critic
blocks still pass d critic / d image (gradient penalty, generator step); freezing lowers the saved-activation
bytes; --adapt-bn, the from-scratch baseline, summary.json, exact resume, one-line errors.
KD: kd_loss is the thesis formula, computed from logits; alpha = 1 / 0 are pure DC-GAN / pure imitation; the
teacher never changes; a short run clearly lowers MSE(student, teacher); summary.json; one-line errors.

Everything runs on the CPU at 32x32 (64x64 for one memory count), width 1/8, on the built-in demo data with a
handful of iterations; the scripts' `main(argv)` runs in-process, subprocesses only check the real CLI.
"""
import copy
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import arch
import harness
import train_kd
import train_transfer
import train_wgan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, WIDTH = 32, 0.125
TINY = ["--img-size", str(SIZE), "--width", str(WIDTH), "--device", "cpu", "--precision", "fp32"]
# WGAN-GP loop kept small: batch 8, 2 critic steps per generator step, 2 generator steps per epoch
FAST = ["--batch-size", "8", "--n-critic", "2", "--iters-per-epoch", "2"]
REAL_METER = harness.MemoryMeter
ENV = harness.Env(torch.device("cpu"))  # fp32, one process


def step_args(batch_size):
    return SimpleNamespace(nz=100, lambda_gp=10.0, batch_size=batch_size)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The CPUs are shared: one torch thread (restored afterwards) avoids oversubscription."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class MeterSpy:
    """Stands in for `harness.MemoryMeter`, which the training loops build from [G, D, ...] and [opt_g, opt_d] right
    before the first step: records each run's live models and optimizers and a copy of G's and D's state then
    (after loading --init / weights_init)."""

    def __init__(self, on_start=None):
        self.runs, self.on_start = [], on_start

    def __call__(self, device, models, optimizers, **kw):
        G, D = models[:2]
        initial = {"G": copy.deepcopy(G.state_dict()), "D": copy.deepcopy(D.state_dict())}
        if self.on_start:
            self.on_start({"G": G, "D": D})
        self.runs.append(SimpleNamespace(initial=initial, models={"G": G, "D": D},
                                         optimizers={"opt_g": optimizers[0], "opt_d": optimizers[1]}))
        return REAL_METER(device, models, optimizers, **kw)


def load_ckpt(out):
    return torch.load(os.path.join(out, "ckpt.pt"), map_location="cpu", weights_only=True)


def load_summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def model_file_mb(model):
    return round(sum(t.numel() for t in list(model.parameters()) + list(model.buffers())) * 4 / 2**20, 1)


def is_frozen_key(key, frozen):
    return key.split(".")[0] in frozen


# added to the argv of runs that must be refused: should a check go missing, the run ends in seconds (and the
# test fails) instead of training for the default 100 epochs
QUICK_KD = ["--epochs", "1", "--iters-per-epoch", "1", "--batch-size", "8"]
QUICK_TRANSFER = ["--epochs", "1", "--iters-per-epoch", "1", "--n-critic", "1"]


def one_line_error(capsys, main, argv):
    """Run `main(argv)` as the script's `__main__` does; it must exit non-zero with one stderr line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # any other exception escapes here: a traceback for the user
        harness.run_main(lambda: main([str(a) for a in argv]))
    err = capsys.readouterr().err
    assert exc.value.code not in (0, None)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def cli(script, *args, cwd):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def assert_cli_one_line_error(result):
    assert result.returncode not in (0, None), result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


# ============================================================================ transfer learning

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A train_wgan.py run dir (1 epoch of 2 generator iterations on demo cats): the transfer teacher."""
    out = tmp_path_factory.mktemp("teacher") / "wgan"
    train_wgan.main(["--data", "demo:cats:64", *TINY, *FAST, "--epochs", "1", "--out", str(out)])
    return out


def transfer_argv(out, *extra):
    # fp32 storage of frozen weights, so "unchanged" can be checked bitwise (bf16 storage: test_precision.py)
    return ["--data", "demo:dogs:64", *TINY, *FAST, "--frozen-dtype", "fp32", "--out", str(out), *map(str, extra)]


@pytest.fixture(scope="module")
def transfer_run(teacher_run, tmp_path_factory):
    """Teacher -> demo dogs with layer1-2 of G and layer1-2 of D frozen (at 32x32 the critic has only 4
    blocks), another seed than the teacher's so that un-loaded weights could not match it by chance."""
    out = tmp_path_factory.mktemp("transfer") / "run"
    spy = MeterSpy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "MemoryMeter", spy)
        train_transfer.main(transfer_argv(out, "--init", teacher_run, "--freeze-g", 2, "--freeze-d", 2,
                                          "--seed", 1, "--epochs", 1))
    (rec,) = spy.runs
    return SimpleNamespace(out=out, teacher=load_ckpt(teacher_run), ckpt=load_ckpt(out), summary=load_summary(out),
                           frozen={"G": {"layer1", "layer2"}, "D": {"layer1", "layer2"}}, **vars(rec))


def test_transfer_starts_from_the_teachers_g_and_d(transfer_run):
    for key in ("G", "D"):
        teacher = transfer_run.teacher[key]["state_dict"]
        initial = transfer_run.initial[key]
        assert initial.keys() == teacher.keys()
        for k, v in teacher.items():
            assert torch.equal(initial[k], v), f"{key}.{k} was not loaded from the teacher"


def test_frozen_weights_and_bn_buffers_unchanged_trainable_ones_moved(transfer_run):
    moved = []
    for key in ("G", "D"):
        teacher, final = transfer_run.teacher[key]["state_dict"], transfer_run.ckpt[key]["state_dict"]
        frozen = transfer_run.frozen[key]
        params = dict(transfer_run.models[key].named_parameters())
        for k, v in teacher.items():
            if is_frozen_key(k, frozen):  # weights, biases, BN running_mean/var/num_batches_tracked
                assert torch.equal(final[k], v), f"frozen {key}.{k} changed"
            elif k in params and not (key == "D" and k == "output.0.bias"):
                # (the critic's last bias gets exactly zero gradient: it cancels in D(fake) - D(real))
                assert not torch.equal(final[k], v), f"trainable {key}.{k} did not change"
                moved.append(k)
    # BatchNorm of the trainable generator blocks ran in train mode: its running statistics followed the data
    g_teacher, g_final = transfer_run.teacher["G"]["state_dict"], transfer_run.ckpt["G"]["state_dict"]
    assert not torch.equal(g_final["layer3.1.running_mean"], g_teacher["layer3.1.running_mean"])
    assert g_final["layer1.1.num_batches_tracked"] == g_teacher["layer1.1.num_batches_tracked"]
    assert len(moved) > 6
    G = transfer_run.models["G"]
    assert G.training and not G.layer1[1].training and not G.layer2[1].training and G.layer3[1].training


def test_optimizers_hold_only_trainable_parameters(transfer_run):
    for key, opt_key in (("G", "opt_g"), ("D", "opt_d")):
        model, opt = transfer_run.models[key], transfer_run.optimizers[opt_key]
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
        assert frozen and trainable
        assert all(is_frozen_key(n, transfer_run.frozen[key]) for n, _ in frozen)
        in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
        assert in_opt == trainable, f"{opt_key} was given frozen parameters"
        assert {id(p) for p in opt.state} == trainable  # every trainable one stepped, no frozen one has state
        assert all(p.grad is None for _, p in frozen)
        saved = transfer_run.ckpt[opt_key]
        assert len(saved["state"]) == sum(len(g["params"]) for g in saved["param_groups"]) == len(trainable)


def test_transfer_summary_records_counts_and_init(transfer_run, teacher_run):
    s = transfer_run.summary
    G, D = arch.Generator(img_size=SIZE, width=WIDTH), arch.Discriminator(img_size=SIZE, width=WIDTH)
    for key, model in (("g", G), ("d", D)):
        frozen = transfer_run.frozen[key.upper()]
        n_frozen = sum(p.numel() for n, p in model.named_parameters() if is_frozen_key(n, frozen))
        n_all = sum(p.numel() for p in model.parameters())
        assert s[f"frozen_{key}"] == sorted(frozen)
        assert s[f"params_{key}"] == n_all
        assert s[f"frozen_params_{key}"] == n_frozen > 0
        assert s[f"trainable_{key}"] == n_all - n_frozen > 0
    assert s["init"] == str(teacher_run)
    assert s["adapt_bn"] is False and s["script"] == "train_transfer"


def test_adapt_bn_lets_frozen_running_stats_follow_the_new_data(teacher_run, tmp_path):
    out = tmp_path / "adapt"
    train_transfer.main(transfer_argv(out, "--init", teacher_run, "--freeze-g", 2, "--freeze-d", 2, "--adapt-bn",
                                      "--epochs", 1, "--iters-per-epoch", 1, "--n-critic", 1))
    teacher, final = load_ckpt(teacher_run)["G"]["state_dict"], load_ckpt(out)["G"]["state_dict"]
    for layer in ("layer1", "layer2"):
        assert torch.equal(final[f"{layer}.0.weight"], teacher[f"{layer}.0.weight"])  # still frozen
        assert torch.equal(final[f"{layer}.1.weight"], teacher[f"{layer}.1.weight"])
        assert not torch.equal(final[f"{layer}.1.running_mean"], teacher[f"{layer}.1.running_mean"])
        assert not torch.equal(final[f"{layer}.1.running_var"], teacher[f"{layer}.1.running_var"])
    assert load_summary(out)["adapt_bn"] is True


def test_frozen_batchnorm_keeps_eval_mode_unless_adapt_bn():
    z = torch.randn(8, 100, 1, 1)
    for adapt in (False, True):
        torch.manual_seed(0)
        G = arch.Generator(img_size=SIZE, width=WIDTH)
        arch.freeze_layers(G, 2, adapt_bn=adapt)
        G.eval().train()  # switching modes must not unfreeze the statistics
        before = copy.deepcopy(G.state_dict())
        G(z)
        after = G.state_dict()
        assert torch.equal(after["layer1.1.running_mean"], before["layer1.1.running_mean"]) is not adapt
        assert torch.equal(after["layer2.1.running_var"], before["layer2.1.running_var"]) is not adapt
        assert not torch.equal(after["layer3.1.running_mean"], before["layer3.1.running_mean"])


def test_from_scratch_baseline_needs_no_init(tmp_path):
    out = tmp_path / "full"
    spy = MeterSpy()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "MemoryMeter", spy)
        train_transfer.main(transfer_argv(out, "--freeze-g", 0, "--freeze-d", 0, "--epochs", 1,
                                          "--iters-per-epoch", 1, "--n-critic", 1))
    s = load_summary(out)
    assert s["init"] is None and s["frozen_g"] == [] and s["frozen_d"] == []
    assert s["trainable_g"] == s["params_g"] and s["trainable_d"] == s["params_d"]
    assert s["frozen_params_g"] == s["frozen_params_d"] == 0
    (rec,) = spy.runs
    for key, opt_key in (("G", "opt_g"), ("D", "opt_d")):
        params = list(rec.models[key].parameters())
        assert all(p.requires_grad for p in params)
        assert len(rec.optimizers[opt_key].state) == len(params)
    # the fresh DCGAN initialisation, trained: the generator moved
    final = load_ckpt(out)["G"]["state_dict"]
    assert not torch.equal(final["layer1.0.weight"], rec.initial["G"]["layer1.0.weight"])


def test_transfer_resume_is_exact(teacher_run, tmp_path):
    common_args = ["--init", teacher_run, "--freeze-g", 2, "--freeze-d", 2, "--iters-per-epoch", 1, "--n-critic", 1]
    train_transfer.main(transfer_argv(tmp_path / "straight", *common_args, "--epochs", 2))
    train_transfer.main(transfer_argv(tmp_path / "split", *common_args, "--epochs", 1))
    train_transfer.main(transfer_argv(tmp_path / "split", *common_args, "--epochs", 2, "--resume"))
    a, b = load_ckpt(tmp_path / "straight"), load_ckpt(tmp_path / "split")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == 2
    for key in ("G", "D"):
        sa, sb = a[key]["state_dict"], b[key]["state_dict"]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{key}.{k} differs after resume"
    for key in ("opt_g", "opt_d"):
        sa, sb = a[key]["state"], b[key]["state"]
        assert sa.keys() == sb.keys() and sa
        for i in sa:
            for name in sa[i]:
                assert torch.equal(sa[i][name], sb[i][name]), f"{key} state {i}.{name} differs after resume"
    assert torch.equal(a["ranks"][0]["rng"]["torch"], b["ranks"][0]["rng"]["torch"])


@pytest.mark.parametrize("n_frozen", [2, 3])  # 3 = every critic block but the output at 32x32
def test_frozen_critic_passes_gradients_to_the_image(n_frozen):
    torch.manual_seed(0)
    ref = arch.Discriminator(img_size=SIZE, width=WIDTH).apply(arch.weights_init)
    D = copy.deepcopy(ref)
    arch.freeze_layers(D, n_frozen)
    x = torch.randn(4, 3, SIZE, SIZE)
    x_ref, x_frz = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ref(x_ref).sum().backward()
    D(x_frz).sum().backward()
    assert x_frz.grad is not None and x_frz.grad.abs().sum() > 0
    torch.testing.assert_close(x_frz.grad, x_ref.grad)
    assert all(p.grad is None for p in D.parameters() if not p.requires_grad)

    # the gradient penalty needs d critic / d image through the frozen blocks
    real, fake = torch.randn(4, 3, SIZE, SIZE), torch.randn(4, 3, SIZE, SIZE)
    ref.zero_grad(set_to_none=True)
    D.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    gp_ref = train_wgan.gradient_penalty(ref, real, fake)
    torch.manual_seed(1)
    gp = train_wgan.gradient_penalty(D, real, fake)
    torch.testing.assert_close(gp, gp_ref)
    assert gp.item() > 0
    if n_frozen < len(arch.freezable_layers(D)):
        gp.backward()
        gp_ref.backward()
        ref_grads = dict(ref.named_parameters())
        trainable = [(n, p) for n, p in D.named_parameters() if p.requires_grad]
        assert trainable
        assert all(p.grad is not None for n, p in trainable if n.endswith("weight"))
        for n, p in trainable:  # (the output bias gets none: the penalty does not depend on it)
            assert (p.grad is None) == (ref_grads[n].grad is None), n
            if p.grad is not None:
                torch.testing.assert_close(p.grad, ref_grads[n].grad)

    # the generator step: G learns through a (partly or fully) frozen critic exactly as through the unfrozen one
    torch.manual_seed(2)
    G0 = arch.Generator(img_size=SIZE, width=WIDTH).apply(arch.weights_init)
    states = []
    for critic in (ref, D):
        G = copy.deepcopy(G0)
        opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.9))
        torch.manual_seed(3)
        train_wgan.generator_step(G, critic, opt, ENV.scaler(), step_args(4), ENV)
        states.append(G.state_dict())
    assert not torch.equal(states[1]["layer1.0.weight"], G0.state_dict()["layer1.0.weight"])
    for k in states[0]:
        torch.testing.assert_close(states[1][k], states[0][k])
    # the generator step's requires_grad context restored each critic parameter's own flag
    assert [p.requires_grad for p in D.parameters()] == [not is_frozen_key(n, set(arch.freezable_layers(D)[:n_frozen]))
                                                         for n, _ in D.named_parameters()]


def test_memory_meter_counts_known_tensor_sizes():
    """harness.MemoryMeter against sizes known beforehand: a bias-free 512 -> 256 linear layer (fp32 weight: 512 KiB),
    harness.Adam with beta1 = 0 (one state tensor per weight; the 0-d step counter is not counted) and one
    iteration whose saved tensors autograd's formulas name: the matmul keeps its input x (for the weight's
    gradient) and the weight (for x's: a parameter, counted once as such), y * y keeps y (one storage, saved twice)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(512, 256, bias=False)
    opt = harness.Adam(layer.parameters(), lr=1e-3, betas=(0.0, 0.9))
    x = torch.randn(1024, 512, requires_grad=True)
    weight, saved = 256 * 512 * 4, 1024 * 512 * 4 + 1024 * 256 * 4
    meter = harness.MemoryMeter("cpu", [layer], [opt], watch_iterations=1)
    meter.start()
    assert meter.peak_parts == {"params": weight, "grads": 0, "optimizer": 0, "activations": 0}
    with meter.hooks():
        y = layer(x)
        loss = (y * y).sum()
        assert meter.live_bytes == saved
        loss.backward()
        assert meter.live_bytes == 0  # backward released them
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert meter.peak_bytes == weight + saved
    assert meter.peak_parts == {"params": weight, "grads": 0, "optimizer": 0, "activations": saved}
    assert meter.static == {"params": weight, "optimizer": weight}  # read at the step; gradients are read live
    assert meter.report()["peak_tensor_mb"] == round((weight + saved) / 2**20, 1)
    assert meter.window_device_peak is not None  # the device peak, frozen at the end of the watched iteration
    with meter.hooks():  # past the watched iterations: a larger batch is not counted
        (layer(torch.randn(4096, 512, requires_grad=True)) ** 2).sum().backward()
    assert meter.peak_bytes == weight + saved and meter.live_bytes == 0


def test_bench_memory_trains_with_the_scripts_iterations(tmp_path):
    """bench_memory.py's rows run train_wgan.iteration and train_kd.iteration (one process per row); every row's
    peak holds at least its floor (parameters, gradients, optimizer state)."""
    out = tmp_path / "rows.json"
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench_memory.py"), "--img-size", "32", "--width", "0.125",
                          "--n-critic", "1", "--iters", "1", "--threads", "1", "--device", "cpu", "--rows", "full",
                          "kd-bf16", "--json", str(out)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = json.loads(out.read_text())
    # each row without and with --step-in-backward, whose floor holds one parameter's gradient instead of a network's
    assert [(r["row"], r["step_in_backward"]) for r in rows] == [("full", False), ("full", True),
                                                                ("kd-bf16", False), ("kd-bf16", True)]
    assert all(r["peak_tensor_mb"] >= r["floor_mb"] > 0 for r in rows), rows
    assert all(a["floor_mb"] > b["floor_mb"] for a, b in (rows[:2], rows[2:])), rows
    assert "KD, teacher bf16: floor (params + grads + optimizer state" in res.stdout
    assert "KD, teacher bf16, step in backward: floor (params + grads + optimizer state" in res.stdout


def saved_activation_peaks(G, D, steps):
    """Per step function: the peak bytes autograd held for backward while it ran (harness.MemoryMeter)."""
    peaks = []
    for step in steps:
        meter = harness.MemoryMeter("cpu", [G, D], [], watch_iterations=1)  # no optimizer: parameters only
        meter.start()
        with meter.hooks():
            step()
        assert meter.live_bytes == 0  # nothing left behind after the step
        peaks.append(meter.peak_parts["activations"])
    return peaks


def test_default_freezing_saves_activation_bytes():
    """train_transfer's default (--freeze-g 2 --freeze-d -2: at 64x64 layer1-3 of the critic frozen, layer4 and
    the output layer train) against the same models unfrozen: one critic step and one generator step each, same
    seed, same batch."""
    size = 64
    real = torch.rand(8, 3, size, size, generator=torch.Generator().manual_seed(5)) * 2 - 1
    results = {}
    for name, (fg, fd) in (("full", (0, 0)), ("frozen", (2, -2))):
        torch.manual_seed(0)
        G = arch.Generator(img_size=size, width=WIDTH).apply(arch.weights_init)
        D = arch.Discriminator(img_size=size, width=WIDTH).apply(arch.weights_init)
        arch.freeze_layers(G, fg)
        arch.freeze_layers(D, fd)
        opt_g = torch.optim.Adam([p for p in G.parameters() if p.requires_grad], lr=1e-4, betas=(0.0, 0.9))
        opt_d = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=1e-4, betas=(0.0, 0.9))
        G.train(), D.train()
        losses = []
        torch.manual_seed(1)
        critic, gen = saved_activation_peaks(G, D, [
            lambda: losses.extend(train_wgan.critic_step(G, D, opt_d, ENV.scaler(), real, step_args(8), ENV)),
            lambda: losses.append(train_wgan.generator_step(G, D, opt_g, ENV.scaler(), step_args(8), ENV))])
        assert len(losses) == 4 and all(torch.isfinite(t) for t in losses)
        results[name] = SimpleNamespace(critic=critic, gen=gen, opt_d=opt_d, D=D)
    full, frozen = results["full"], results["frozen"]
    assert frozen.critic < 0.8 * full.critic, (frozen.critic, full.critic)
    assert frozen.gen < 0.95 * full.gen, (frozen.gen, full.gen)
    trained = list(frozen.D.layer4.parameters()) + list(frozen.D.output.parameters())
    assert {id(p) for p in frozen.opt_d.state} == {id(p) for p in trained}


@pytest.mark.parametrize("flags, needles", [
    ([], ["--init", "--freeze-g 0 --freeze-d 0"]),  # the default freezing needs a teacher
    (["--freeze-g", 1, "--freeze-d", 0], ["--init"]),
    (["--init", "TEACHER", "--freeze-g", 5, "--freeze-d", 0], ["cannot freeze 5", "Generator", "has 4"]),
    (["--init", "TEACHER", "--freeze-d", 7], ["cannot freeze 7", "Discriminator", "has 4"]),
    (["--init", "TEACHER", "--freeze-d", 2, "--width", 0.25], ["--init", "width"]),
    (["--init", "NOWHERE", "--freeze-d", 2], ["no such", "--init"]),
    (["--init", "TEACHER", "--freeze-g", -9], ["cannot freeze -9", "Generator"]),
])
def test_transfer_flag_errors_are_one_line(flags, needles, teacher_run, tmp_path, capsys):
    out = tmp_path / "o"
    flags = [{"TEACHER": teacher_run, "NOWHERE": tmp_path / "nowhere"}.get(f, f) for f in flags]
    msg = one_line_error(capsys, train_transfer.main, transfer_argv(out, *flags, *QUICK_TRANSFER))
    assert all(n in msg for n in needles), msg
    assert not os.path.exists(out / "ckpt.pt")


def test_transfer_cli_freeze_beyond_layer_count(teacher_run, tmp_path):
    r = cli("train_transfer.py", "--init", teacher_run, "--freeze-d", 9, *TINY, *QUICK_TRANSFER, "--out", tmp_path / "o",
            cwd=tmp_path)
    line = assert_cli_one_line_error(r)
    assert line.startswith("error:") and "cannot freeze 9" in line and r.returncode == 2


def test_default_freezing_leaves_the_last_critic_block_and_freezing_every_block_is_refused(teacher_run, tmp_path, capsys):
    out = tmp_path / "default"
    train_transfer.main(transfer_argv(out, "--init", teacher_run, "--epochs", 1, "--iters-per-epoch", 1, "--n-critic", 1))
    s = load_summary(out)  # at 32x32 the critic has layer1-3 + output: the thesis' structure freezes layer1-2
    assert s["frozen_d"] == ["layer1", "layer2"] and s["frozen_g"] == ["layer1", "layer2"] and s["trainable_d"] > 0
    msg = one_line_error(capsys, train_transfer.main, transfer_argv(tmp_path / "all", "--init", teacher_run,
                                                                  "--freeze-d", 4, *QUICK_TRANSFER))
    assert "cannot freeze 4" in msg and "at least one must train" in msg
    assert not (tmp_path / "all").exists()  # a refused run leaves no folder behind


@pytest.mark.parametrize("size, frozen_d", [(32, 2), (64, 3), (128, 4), (256, 5)])
def test_default_freezing_is_the_thesis_structure_at_every_size(size, frozen_d):
    D, G = arch.Discriminator(img_size=size, width=0.0625), arch.Generator(img_size=size, width=0.0625)
    names = arch.freeze_layers(D, -2)  # train_transfer.py's default --freeze-d
    assert len(names) == frozen_d and arch.freezable_layers(D)[frozen_d:] == [f"layer{frozen_d + 1}", "output"]
    assert arch.freeze_layers(G, 2) == ["layer1", "layer2"]


# ============================================================================ knowledge distillation

def tiny_teacher(seed=0):
    """A teacher whose output depends on z like a trained one's: PyTorch's default initialisation and BatchNorm
    running statistics measured on 128 latent vectors; eval mode."""
    torch.manual_seed(seed)
    G = arch.Generator(img_size=SIZE, width=WIDTH)
    bns = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the statistics of this one batch
    with torch.no_grad():
        G.train()(torch.randn(128, 100, 1, 1))
    for m in bns:
        m.momentum = 0.1
    return G.eval()


def softplus64(x):
    return F.softplus(x.double())


@pytest.mark.parametrize("alpha", [0.0, 0.05, 0.5, 1.0])
def test_kd_loss_is_the_thesis_formula(alpha):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, generator=g) * 3
    student = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    teacher = torch.rand(6, 3, 8, 8, generator=g) * 2 - 1
    loss, adversarial, imitation = train_kd.kd_loss(logits, student, teacher, alpha)
    # BCE(sigmoid(l), 1) = -log sigmoid(l) = log(1 + exp(-l)); MSE = mean squared difference
    bce = torch.log1p(torch.exp(-logits.double())).mean()
    mse = ((student.double() - teacher.double()) ** 2).mean()
    torch.testing.assert_close(adversarial.double(), bce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(imitation.double(), mse, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), alpha * bce + (1 - alpha) * mse, rtol=1e-5, atol=1e-6)


def test_kd_loss_alpha_one_ignores_the_teacher_alpha_zero_ignores_the_discriminator():
    g = torch.Generator().manual_seed(1)
    logits = (torch.randn(5, generator=g) * 2).requires_grad_(True)
    student = torch.rand(5, 3, 8, 8, generator=g).requires_grad_(True)
    t1, t2 = torch.rand(5, 3, 8, 8, generator=g), torch.rand(5, 3, 8, 8, generator=g)
    l1 = train_kd.kd_loss(logits, student, t1, 1.0)[0]
    l2 = train_kd.kd_loss(logits, student, t2, 1.0)[0]
    assert torch.equal(l1, l2)
    l1.backward()
    assert student.grad is None or not student.grad.any()  # no pull towards the teacher
    assert logits.grad.abs().sum() > 0
    logits.grad = student.grad = None
    l3 = train_kd.kd_loss(logits, student, t1, 0.0)[0]
    l4 = train_kd.kd_loss(logits * 5 - 3, student, t1, 0.0)[0]
    assert torch.equal(l3, l4)
    l3.backward()
    assert logits.grad is None or not logits.grad.any()
    assert student.grad.abs().sum() > 0


def kd_models(seed):
    torch.manual_seed(seed)
    G = arch.GeneratorKD(img_size=SIZE, width=WIDTH).apply(arch.weights_init)
    D = arch.DCGANDiscriminator(img_size=SIZE, width=WIDTH).apply(arch.weights_init)
    return G, D


def student_update(G0, D, z, target, alpha):
    """One train_kd.student_step from a copy of G0; returns the student's new state."""
    G = copy.deepcopy(G0).train()
    opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.999))
    train_kd.student_step(G, D, opt, ENV.scaler(), G(z), target, alpha, ENV)
    return G.state_dict()


def same_state(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_student_step_alpha_one_is_pure_dcgan_alpha_zero_pure_imitation():
    G0, D1 = kd_models(0)
    _, D2 = kd_models(1)
    z = torch.randn(4, 100, 1, 1, generator=torch.Generator().manual_seed(2))
    t1, t2 = torch.rand(4, 3, SIZE, SIZE) * 2 - 1, torch.rand(4, 3, SIZE, SIZE) * 2 - 1
    d_before = copy.deepcopy(D1.state_dict())
    # alpha = 1: the teacher's images do not matter
    assert same_state(student_update(G0, D1, z, t1, 1.0), student_update(G0, D1, z, t2, 1.0))
    # alpha = 0: the discriminator does not matter
    assert same_state(student_update(G0, D1, z, t1, 0.0), student_update(G0, D2, z, t1, 0.0))
    # ... while in between both do (so the two checks above can fail)
    assert not same_state(student_update(G0, D1, z, t1, 0.5), student_update(G0, D1, z, t2, 0.5))
    assert not same_state(student_update(G0, D1, z, t1, 0.5), student_update(G0, D2, z, t1, 0.5))
    # the student step leaves the discriminator as it was: no update, no gradients, requires_grad restored
    assert same_state(D1.state_dict(), d_before)
    assert all(p.grad is None and p.requires_grad for p in D1.parameters())


def test_bce_is_computed_from_logits():
    # kd_loss: logits far beyond where sigmoid saturates in float32 (BCE on probabilities clamps log at -100
    # and has a zero gradient there)
    logits = torch.tensor([-1e4, -200.0, -30.0, 0.0, 50.0, 1e4], requires_grad=True)
    student, teacher = torch.zeros(6, 3, 4, 4), torch.ones(6, 3, 4, 4)
    loss, adversarial, imitation = train_kd.kd_loss(logits, student, teacher, 0.5)
    assert torch.isfinite(loss)
    torch.testing.assert_close(adversarial.double(), softplus64(-logits.detach()).mean(), rtol=1e-5, atol=1e-6)
    loss.backward()
    expected_grad = 0.5 * (torch.sigmoid(logits.detach().double()) - 1) / len(logits)
    assert torch.isfinite(logits.grad).all()
    torch.testing.assert_close(logits.grad.double(), expected_grad, rtol=1e-5, atol=1e-9)

    # discriminator_step: a discriminator whose logits are about +300 for every image
    G, D = kd_models(3)
    with torch.no_grad():
        D.output[0].bias.fill_(300.0)
    opt_d = torch.optim.Adam(D.parameters(), lr=1e-4, betas=(0.0, 0.999))
    real = torch.rand(4, 3, SIZE, SIZE) * 2 - 1
    fake = G.train()(torch.randn(4, 100, 1, 1))
    with torch.no_grad():
        d_real, d_fake = D(torch.cat([real, fake])).chunk(2)
    assert d_fake.min() > 200  # logits, not probabilities: forward stops before the Sigmoid
    expected = softplus64(-d_real).mean() + softplus64(d_fake).mean()  # BCE(., 1) + BCE(., 0)
    d_loss = train_kd.discriminator_step(D, opt_d, ENV.scaler(), real, fake, ENV)
    assert torch.isfinite(d_loss)
    torch.testing.assert_close(d_loss.double(), expected, rtol=1e-4, atol=1e-4)
    # the student's images were detached: the discriminator step gives the student no gradient
    assert all(p.grad is None for p in G.parameters())
    assert not torch.equal(D.output[0].bias, torch.full_like(D.output[0].bias, 300.0))  # D did step


# the short KD run: alpha 0, 2 epochs x 30 iterations, batch 16, lr 2e-3 takes MSE(student, teacher) on 64
# fixed latent vectors from the untrained student's ~0.142 (its output is ~0) to ~0.078 (measured): require < 0.7x
KD_RUN = ["--data", "demo:cats:64", "--width", str(WIDTH), "--device", "cpu", "--precision", "fp32", "--teacher-dtype", "fp32",
          "--batch-size", "16", "--epochs", "2",
          "--iters-per-epoch", "30", "--lr", "2e-3", "--alpha", "0"]


@pytest.fixture(scope="module")
def kd_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kd")
    teacher_path = tmp / "teacher.pt"
    torch.save(arch.generator_file(tiny_teacher()), teacher_path)
    teacher_bytes = teacher_path.read_bytes()
    out = tmp / "run"
    # what the loop feeds the teacher and the student, and the targets it hands to student_step
    calls = SimpleNamespace(teacher=[], student=[], targets=[])
    spy = MeterSpy(on_start=lambda models: models["G"].register_forward_hook(
        lambda m, inp, out: calls.student.append(inp[0].detach().clone())))
    loaded = []
    real_load_teacher, real_student_step = train_kd.load_teacher, train_kd.student_step

    def load_teacher(*args, **kwargs):
        teacher, config = real_load_teacher(*args, **kwargs)
        teacher.register_forward_hook(lambda m, inp, out: calls.teacher.append((inp[0].clone(), out.clone(), m.training)))
        loaded.append(teacher)
        return teacher, config

    def student_step(G, D, opt_g, scaler, fake, target, alpha, env, augment):
        calls.targets.append(target.detach().clone())
        return real_student_step(G, D, opt_g, scaler, fake, target, alpha, env, augment)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(harness, "MemoryMeter", spy)
        mp.setattr(train_kd, "load_teacher", load_teacher)
        mp.setattr(train_kd, "student_step", student_step)
        train_kd.main([*KD_RUN, "--teacher", str(teacher_path), "--out", str(out)])
    (rec,) = spy.runs
    (teacher,) = loaded
    return SimpleNamespace(out=out, teacher_path=teacher_path, teacher_bytes=teacher_bytes, teacher=teacher,
                           summary=load_summary(out), calls=calls, **vars(rec))


def test_kd_student_imitates_the_teacher_on_the_same_z(kd_run):
    calls = kd_run.calls
    steps = 2 * 30  # --epochs 2 --iters-per-epoch 30
    train_z = [z for z in calls.student if z.shape[0] == 16]  # (the other forwards render the 6 snapshot z)
    assert len(calls.teacher) == len(calls.targets) == len(train_z) == steps
    for z, (teacher_z, teacher_out, training), target in zip(train_z, calls.teacher, calls.targets):
        assert torch.equal(teacher_z, z)  # the teacher sees the student's latent vectors
        assert torch.equal(target, teacher_out)  # and the student is pulled towards exactly its output
        assert not training  # in eval mode: BatchNorm running statistics, as the teacher was trained
    assert not torch.equal(train_z[0], train_z[1])  # a fresh z every step


def test_kd_teacher_never_changes(kd_run):
    assert kd_run.teacher_path.read_bytes() == kd_run.teacher_bytes
    stored = torch.load(kd_run.teacher_path, weights_only=True)["state_dict"]
    after = kd_run.teacher.state_dict()  # BatchNorm running statistics included
    assert after.keys() == stored.keys()
    for k in stored:
        assert torch.equal(after[k], stored[k]), f"teacher {k} changed during distillation"
    assert not kd_run.teacher.training
    assert not any(p.requires_grad or p.grad is not None for p in kd_run.teacher.parameters())
    assert all(kd_run.teacher is not m for m in kd_run.models.values())
    teacher_ids = {id(p) for p in kd_run.teacher.parameters()}
    assert not teacher_ids & {id(p) for opt in kd_run.optimizers.values() for g in opt.param_groups for p in g["params"]}


def test_kd_run_lowers_mse_to_the_teacher(kd_run):
    z = torch.randn(64, 100, 1, 1, generator=torch.Generator().manual_seed(123))
    before = arch.GeneratorKD(img_size=SIZE, width=WIDTH)
    before.load_state_dict(kd_run.initial["G"])
    after, config = arch.load_model(kd_run.out / "generator.pt", kinds=("GeneratorKD",))
    assert config["img_size"] == SIZE and config["width"] == WIDTH
    teacher = tiny_teacher()
    with torch.no_grad():
        target = teacher.eval()(z)
        mse_before = F.mse_loss(before.eval()(z), target).item()
        mse_after = F.mse_loss(after.eval()(z), target).item()
    assert mse_after < 0.7 * mse_before, (mse_before, mse_after)
    records = [json.loads(line) for line in open(kd_run.out / "metrics.jsonl")]
    assert records[-1]["mse_teacher"] < records[0]["mse_teacher"]


def test_kd_summary_records_teacher_student_and_alpha(kd_run):
    s = kd_run.summary
    teacher = arch.Generator(img_size=SIZE, width=WIDTH)
    student = arch.GeneratorKD(img_size=SIZE, width=WIDTH)
    assert s["alpha"] == 0.0 and s["script"] == "train_kd"
    assert s["teacher"] == str(kd_run.teacher_path)
    assert s["params_teacher"] == arch.count_params(teacher)
    assert s["params_g"] == s["trainable_g"] == arch.count_params(student) < s["params_teacher"]
    assert s["teacher_mb"] == model_file_mb(teacher)
    assert s["student_mb"] == model_file_mb(student) < s["teacher_mb"]
    assert s["args"]["img_size"] == SIZE and s["args"]["nz"] == 100  # taken from the teacher


def test_load_teacher_accepts_run_dir_checkpoint_and_generator_file(teacher_run):
    expected = load_ckpt(teacher_run)["G_ema"]["state_dict"]  # the moving average: the better generator
    for path in (teacher_run, teacher_run / "ckpt.pt", teacher_run / "generator.pt"):
        teacher, config = train_kd.load_teacher(str(path), "cpu", None, None, dtype="fp32")
        assert config["kind"] == "Generator" and not teacher.training
        assert not any(p.requires_grad for p in teacher.parameters())
        state = teacher.state_dict()
        assert all(torch.equal(state[k], v) for k, v in expected.items())
    lean, _ = train_kd.load_teacher(str(teacher_run), "cpu", None, None)  # default: weights stored in bf16
    for name, p in lean.named_parameters():
        assert p.dtype == torch.bfloat16 and torch.equal(p, expected[name].to(torch.bfloat16)), name
    z = torch.randn(4, 100, 1, 1)
    with torch.no_grad():  # computed in fp32 from the rounded weights: close to the fp32 teacher
        torch.testing.assert_close(lean(z), teacher(z), atol=0.02, rtol=0)


def kd_bad_teacher(kind, tmp_path):
    path = tmp_path / f"{kind}.pt"
    torch.manual_seed(0)
    if kind == "generatorkd-file":
        torch.save(arch.generator_file(arch.GeneratorKD(img_size=SIZE, width=WIDTH)), path)
    elif kind == "generatorkd-state-dict":
        torch.save(arch.GeneratorKD(img_size=SIZE, width=WIDTH).state_dict(), path)
    elif kind == "discriminator-state-dict":
        torch.save(arch.Discriminator(img_size=SIZE, width=WIDTH).state_dict(), path)
    elif kind == "dcgan-discriminator-file":
        torch.save(arch.generator_file(arch.DCGANDiscriminator(img_size=SIZE, width=WIDTH)), path)
    elif kind == "garbage-bytes":
        path.write_bytes(b"\x00not a torch file\xff" * 50)
    elif kind == "empty-file":
        path.write_bytes(b"")
    elif kind == "torch-list":
        torch.save([1, 2, 3], path)
    elif kind == "dict-with-tensor-G":
        torch.save({"G": torch.zeros(3)}, path)
    return path


@pytest.mark.parametrize("kind, needle", [
    ("generatorkd-file", "GeneratorKD"),
    ("generatorkd-state-dict", "GeneratorKD"),
    ("discriminator-state-dict", "Discriminator"),
    ("dcgan-discriminator-file", "DCGANDiscriminator"),
    ("garbage-bytes", "not a PyTorch file"),
    ("empty-file", "is empty"),
    ("torch-list", "not a generator file"),
    ("dict-with-tensor-G", "cannot tell the architecture"),
])
def test_kd_wrong_teacher_is_one_line(kind, needle, tmp_path, capsys):
    path = kd_bad_teacher(kind, tmp_path)
    msg = one_line_error(capsys, train_kd.main, ["--teacher", path, "--data", "demo:cats:64", "--device", "cpu",
                                                 "--out", tmp_path / "o", *QUICK_KD])
    assert msg.startswith("error:") and str(path) in msg and needle in msg
    assert not os.path.exists(tmp_path / "o" / "ckpt.pt")


def test_kd_flag_errors_are_one_line(teacher_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default teacher is relative to the working directory
    base = ["--data", "demo:cats:64", "--device", "cpu", "--out", tmp_path / "o", *QUICK_KD]
    teacher = teacher_run / "generator.pt"
    for alpha in ("1.5", "-0.1", "nan"):
        msg = one_line_error(capsys, train_kd.main, [*base, "--teacher", teacher, "--alpha", alpha])
        assert "--alpha" in msg and "[0, 1]" in msg
    msg = one_line_error(capsys, train_kd.main, [*base, "--teacher", teacher, "--img-size", 64])
    assert "img_size=32" in msg and "img_size=64" in msg
    msg = one_line_error(capsys, train_kd.main, [*base, "--teacher", teacher, "--nz", 64])
    assert "nz=100" in msg and "nz=64" in msg
    msg = one_line_error(capsys, train_kd.main, [*base, "--teacher", tmp_path / "missing.pt"])
    assert "missing.pt" in msg and "--teacher" in msg
    msg = one_line_error(capsys, train_kd.main, base)  # no runs/wgan/generator.pt here
    assert train_kd.DEFAULT_TEACHER in msg and "--teacher" in msg and "train_wgan.py" in msg
    assert not os.path.exists(tmp_path / "o")


def test_kd_cli_missing_default_teacher(tmp_path):
    r = cli("train_kd.py", "--device", "cpu", "--data", "demo:cats:64", *QUICK_KD, "--out", tmp_path / "o", cwd=tmp_path)
    line = assert_cli_one_line_error(r)
    assert line.startswith("error:") and train_kd.DEFAULT_TEACHER in line and "--teacher" in line
    assert r.returncode == 2 and r.stdout == ""


# ---------------------------------------------------------------------------- transfer recipes

def test_freezing_from_the_image_side_trains_the_z_side_and_passes_gradients_through():
    G = arch.Generator(img_size=SIZE, width=WIDTH)
    names = arch.freeze_layers(G, 2, from_output=True)
    assert names == arch.freezable_layers(G)[-2:] == ["layer3", "final"]
    G.train()
    assert not G.layer3[1].training and G.layer1[1].training  # frozen BatchNorm keeps the teacher's statistics
    G(torch.randn(4, 100, 1, 1)).square().mean().backward()
    for name, p in G.named_parameters():
        if name.split(".")[0] in names:
            assert p.grad is None and not p.requires_grad
        else:  # the trainable z side gets its gradient through the frozen image side
            assert p.grad is not None and p.grad.abs().sum() > 0


def test_init_g_ema_starts_from_the_teachers_moving_average(teacher_run, tmp_path):
    out = tmp_path / "ema_init"
    train_transfer.main(transfer_argv(out, "--init", teacher_run, "--init-g", "ema", "--freeze-g", 2, "--freeze-d", 2,
                                      "--epochs", 1, "--iters-per-epoch", 1))
    teacher, run = load_ckpt(teacher_run), load_ckpt(out)
    frozen = [k for k in run["G"]["state_dict"] if k.startswith(("layer1.", "layer2."))]
    assert frozen and any(not torch.equal(teacher["G"]["state_dict"][k], teacher["G_ema"]["state_dict"][k])
                          for k in frozen)  # the two starting points differ, so the test can tell them apart
    for k in frozen:  # frozen blocks (fp32 storage) keep exactly the weights the run started from
        assert torch.equal(run["G"]["state_dict"][k], teacher["G_ema"]["state_dict"][k]), k
    assert load_summary(out)["init_g"] == "ema"


def test_init_g_ema_without_an_average_is_one_line(tmp_path, capsys):
    teacher = tmp_path / "no_ema"
    train_wgan.main(["--data", "demo:cats:64", *TINY, *FAST, "--epochs", "1", "--ema", "0", "--out", str(teacher)])
    line = one_line_error(capsys, train_transfer.main, transfer_argv(tmp_path / "t", "--init", teacher, "--init-g", "ema",
                                                                     *QUICK_TRANSFER))
    assert "--init-g ema" in line and "moving average" in line
    assert not (tmp_path / "t" / "ckpt.pt").exists()


def test_critic_warmup_takes_more_critic_steps_for_the_first_generator_updates(tmp_path):
    out = tmp_path / "warmup"
    train_wgan.main(["--data", "demo:cats:64", *TINY, "--batch-size", "8", "--n-critic", "2", "--iters-per-epoch", "3",
                     "--epochs", "1", "--warmup-iters", "2", "--warmup-n-critic", "3", "--out", str(out)])
    ckpt = load_ckpt(out)
    d_steps = {float(s["step"]) for s in ckpt["opt_d"]["state"].values()}
    g_steps = {float(s["step"]) for s in ckpt["opt_g"]["state"].values()}
    assert d_steps == {2 * 3 + 1 * 2} and g_steps == {3}  # 2 warm-up updates of 3 critic steps, then 1 of 2
