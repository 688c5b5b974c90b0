"""The CUDA paths: every training script (a few steps, --resume, CUDA memory figures), createsamples.py, bf16 and
fp16 steps, pinned-memory batches, CUDA RNG state in checkpoints and exact resume on the same GPU.

Marked `cuda` and skipped without a GPU: run them with `pytest -m cuda` (bench_cuda.sh does)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import createsamples
import data
import train_kd
import train_transfer
import train_wgan

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--img-size", "32", "--width", "0.125", "--batch-size", "4", "--iters-per-epoch", "2", "--device", "cuda",
        "--snapshot-every", "1"]
ARGS = {"wgan": ["--n-critic", "2", "--data", "demo:cats:16"], "transfer": ["--n-critic", "2", "--data", "demo:dogs:16"],
        "kd": ["--data", "demo:cats:16"]}

def train(script, out, *extra, teacher=None):
    argv = [*TINY, *ARGS[script], "--out", str(out), *map(str, extra)]
    if script == "transfer":
        train_transfer.main(argv + ["--init", str(teacher)])
    elif script == "kd":
        train_kd.main(argv + ["--teacher", str(teacher)])
    else:
        train_wgan.main(argv)


def summary(out):
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def final_losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        record = [json.loads(line) for line in f if line.strip()][-1]
    return [v for k, v in record.items() if k in ("d_loss", "wasserstein", "gp", "g_loss", "bce_g", "mse_teacher")]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda") / "wgan"
    train("wgan", out, "--epochs", 1)
    return out


@pytest.mark.parametrize("script", ["wgan", "transfer", "kd"])
def test_training_script_on_cuda_resumes_and_records_cuda_memory(script, teacher, tmp_path):
    out = tmp_path / script
    train(script, out, "--epochs", 1, teacher=teacher)
    train(script, out, "--epochs", 2, "--resume", teacher=teacher)
    s = summary(out)
    assert s["device"].startswith("cuda") and s["epochs"] == 2
    assert s["peak_mem_kind"] == "cuda_max_memory_allocated" and s["peak_mem_mb"] > 0
    assert s["peak_tensor_mb"] > 0
    assert np.isfinite(final_losses(out)).all()
    assert os.path.isfile(out / "generator.pt")


def test_checkpoint_holds_the_cuda_rng_state(teacher):
    ckpt = torch.load(teacher / "ckpt.pt", map_location="cpu", weights_only=True)
    states = ckpt["ranks"][0]["rng"]["cuda"]
    assert len(states) == torch.cuda.device_count()
    assert all(isinstance(s, torch.Tensor) and s.dtype == torch.uint8 and s.numel() > 0 for s in states)


# a run in its own process with deterministic kernels (cuBLAS needs its workspace setting before it starts)
DETERMINISTIC = ("import sys, torch; torch.use_deterministic_algorithms(True); torch.backends.cudnn.benchmark = False; "
                 "import harness, train_wgan; harness.run_main(lambda: train_wgan.main(sys.argv[1:]))")


def train_deterministic(out, *extra):
    env = dict(os.environ, CUBLAS_WORKSPACE_CONFIG=":4096:8", PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", DETERMINISTIC, *TINY, *ARGS["wgan"], "--out", str(out),
                          *map(str, extra)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


def test_resume_is_exact_on_the_same_gpu(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_deterministic(a, "--epochs", 3)
    train_deterministic(b, "--epochs", 1)
    train_deterministic(b, "--epochs", 3, "--resume")
    ca, cb = (torch.load(p / "ckpt.pt", map_location="cpu", weights_only=True) for p in (a, b))
    assert ca["step"] == cb["step"] == 6
    for key in ("G", "D", "G_ema"):
        for k, v in ca[key]["state_dict"].items():
            assert torch.equal(v, cb[key]["state_dict"][k]), (key, k)
    assert torch.equal(ca["ranks"][0]["rng"]["cuda"][0], cb["ranks"][0]["rng"]["cuda"][0])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_wgan_low_precision_steps_on_cuda(precision, tmp_path):
    train("wgan", tmp_path / "w", "--epochs", 1, "--precision", precision)
    assert summary(tmp_path / "w")["precision"] == precision
    assert np.isfinite(final_losses(tmp_path / "w")).all()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_kd_low_precision_steps_on_cuda(precision, teacher, tmp_path):
    train("kd", tmp_path / "k", "--epochs", 1, "--precision", precision, teacher=teacher)
    assert summary(tmp_path / "k")["precision"] == precision
    assert np.isfinite(final_losses(tmp_path / "k")).all()
    ckpt = torch.load(tmp_path / "k" / "ckpt.pt", map_location="cpu", weights_only=True)
    if precision == "fp16":  # the loss scales resume too
        assert ckpt["scaler_g"]["scale"] > 0 and ckpt["scaler_d"]["scale"] > 0


def test_createsamples_on_cuda_matches_cpu(teacher, tmp_path):
    from PIL import Image
    for device in ("cuda", "cpu"):
        createsamples.main(["--model", str(teacher), "--n", "6", "--batch-size", "4", "--device", device,
                            "--precision", "fp32", "--out", str(tmp_path / device)])
    names = sorted(os.listdir(tmp_path / "cuda"))
    assert names == sorted(os.listdir(tmp_path / "cpu")) and len(names) == 6
    load = lambda d: np.stack([np.asarray(Image.open(tmp_path / d / n), dtype=np.int16) for n in names])  # noqa: E731
    diff = np.abs(load("cuda") - load("cpu"))
    # the same latents; only the devices' float rounding (TF32 convolutions by default) may move a level or two
    assert diff.mean() < 1.0 and diff.max() <= 16


def test_pinned_memory_batches_on_cuda_equal_the_cpu_ones(monkeypatch):
    dataset = data.load_dataset("demo:cats:16", 32, verbose=False)
    pinned = []
    pin = torch.Tensor.pin_memory
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t, *a: pinned.append(1) or pin(t, *a))
    on_cuda, on_cpu = (data.InfiniteBatches(dataset, 4, device, seed=3, flip=True) for device in ("cuda", "cpu"))
    for _ in range(5):  # past one pass of the 16 images
        x, y = next(on_cuda), next(on_cpu)
        assert x.device.type == "cuda" and x.dtype == torch.float32
        assert torch.equal(x.cpu(), y)
    assert len(pinned) == 5


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step_in_backward_on_cuda_trains_as_the_step_after_backward(precision, tmp_path):
    """The default in one process (each parameter's Adam step inside backward) against --no-step-in-backward on
    the GPU: the same weights to float tolerance (CUDA kernels need not repeat bit for bit), less peak memory."""
    runs = {}
    for flag in ("--step-in-backward", "--no-step-in-backward"):
        out = tmp_path / flag.strip("-")
        torch.manual_seed(0)
        train("wgan", out, "--epochs", 2, "--precision", precision, flag)
        runs[flag] = (torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False), summary(out))
    (inside, s_in), (after, s_after) = runs["--step-in-backward"], runs["--no-step-in-backward"]
    assert s_in["args"]["step_in_backward"] is True and s_after["args"]["step_in_backward"] is False
    for net in ("G", "D"):
        for key, value in after[net]["state_dict"].items():
            if value.is_floating_point():
                torch.testing.assert_close(inside[net]["state_dict"][key], value, rtol=1e-3, atol=1e-4, msg=f"{net}.{key}")
    assert s_in["peak_tensor_parts_mb"]["grads"] < s_after["peak_tensor_parts_mb"]["grads"] or \
        s_in["peak_tensor_mb"] <= s_after["peak_tensor_mb"]
