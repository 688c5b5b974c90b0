"""createsamples.py and arch's model-file readers: exact N, seeding, batch-size independence, PNG round trip, every
model file kind, EMA vs raw weights, bf16, progress, the output-folder rules and one-line errors (bad files,
non-finite weights, disk full). Tiny 32x32 generators at width 1/8, so the file runs in seconds."""
import argparse
import errno
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import arch
import createsamples

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "createsamples.py")


def tiny(kind="Generator", seed=0):
    """A small generator that behaves like a trained one in eval mode: PyTorch's default initialisation (the
    DCGAN one makes an untrained generator's output almost independent of z) and BatchNorm running statistics
    measured on 128 latent vectors (the fresh ones, mean 0 and variance 1, would blow the activations up)."""
    torch.manual_seed(seed)
    G = arch.MODELS[kind](img_size=32, width=0.125)
    bns = [m for m in G.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: the running statistics become those of this one batch
    with torch.no_grad():
        G.train()(torch.randn(128, G.config["nz"], 1, 1))
    for m in bns:
        m.momentum = 0.1
    return G.eval()


def expected(G, n, seed):
    """What the PNGs must hold, computed independently of createsamples: image i comes from the i-th
    randn(nz) of a CPU torch.Generator seeded with `seed`, through G in eval mode, rounded to uint8."""
    g = torch.Generator().manual_seed(seed)
    z = torch.stack([torch.randn(G.config["nz"], generator=g) for _ in range(n)]).view(n, -1, 1, 1)
    with torch.no_grad():
        return ((G.eval()(z) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def save_generator(path, G, ema=None, **extra):
    torch.save(arch.generator_file(G, ema, **extra), path)


def read_pngs(folder):
    names = sorted(os.listdir(folder))
    return names, torch.stack([torch.from_numpy(np.array(Image.open(os.path.join(folder, f)))).permute(2, 0, 1)
                               for f in names])


def cli(*args, cwd=ROOT):
    """The real command line, in a fresh process (slow: used where the process itself matters)."""
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


def run(capsys, *args):
    """createsamples.cli in this process: (exit status, stdout, stderr). An uncaught exception fails the test."""
    try:
        createsamples.cli([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(folder):
    """Names and bytes of everything in `folder`: to show a refused run changed nothing."""
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))}


# ----------------------------------------------------------------------------- generation

def test_exactly_n_images_named_in_order(tmp_path):
    out = tmp_path / "s"
    size = createsamples.write_samples(tiny(), 7, out, batch_size=3)
    assert size == (32, 32)
    names, images = read_pngs(out)
    assert names == [f"{i:05d}.png" for i in range(7)]
    assert images.shape == (7, 3, 32, 32) and images.dtype == torch.uint8
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # the temporary folder is gone


def test_seed_is_deterministic_and_seeds_differ():
    G = tiny()
    a = createsamples.generate(G, 5, seed=1, batch_size=2)
    assert torch.equal(a, createsamples.generate(G, 5, seed=1, batch_size=2))
    b = createsamples.generate(G, 5, seed=2, batch_size=2)
    assert (a != b).float().mean() > 0.5
    # and not just a permutation of the same images: every image of seed 2 is new
    assert all(not torch.equal(b[i], a[j]) for i in range(5) for j in range(5))


def test_eval_mode_is_independent_of_batch_size_and_n():
    G = tiny("GeneratorKD")
    ref = createsamples.generate(G, 7, seed=3, batch_size=7)
    for bs in (1, 2, 3, 100):
        assert torch.equal(createsamples.generate(G, 7, seed=3, batch_size=bs), ref), bs
    assert torch.equal(createsamples.generate(G, 4, seed=3, batch_size=3), ref[:4])  # --n 4 = first 4 of --n 7
    assert len({img.numpy().tobytes() for img in ref}) == 7  # 7 different images, not one repeated


def test_train_mode_uses_batch_statistics_and_leaves_the_model_alone():
    G = tiny()
    G.train()
    before = {k: v.clone() for k, v in G.state_dict().items()}
    ev = createsamples.generate(G, 8, seed=0, batch_size=4)
    tr4 = createsamples.generate(G, 8, seed=0, batch_size=4, train_mode=True)
    tr2 = createsamples.generate(G, 8, seed=0, batch_size=2, train_mode=True)
    assert not torch.equal(ev, tr4) and not torch.equal(tr4, tr2)  # batch statistics, which depend on the batch
    # the last batch is topped up to full size: n=5 in batches of 4 gives the same 5th image as n=8
    assert torch.equal(createsamples.generate(G, 5, seed=0, batch_size=4, train_mode=True), tr4[:5])
    assert G.training  # mode restored
    for k, v in G.state_dict().items():  # running statistics (and num_batches_tracked) untouched
        assert torch.equal(v, before[k]), k


def test_bf16_on_cpu_is_close_to_fp32_and_batch_size_independent(tmp_path, capsys):
    G = tiny(seed=4)
    fp32 = createsamples.generate(G, 16, seed=0, batch_size=16)
    bf16 = createsamples.generate(G, 16, seed=0, batch_size=16, precision="bf16")
    diff = (fp32.float() - bf16.float()).abs()
    # bf16 keeps 8 bits of mantissa: measured here mean 0.23, max 2 levels of 255 over 4 tiny generators. The
    # tolerance (mean < 1 level, max <= 8) is far below what a wrong model or wrong rounding gives (tens).
    assert 0 < diff.mean() < 1.0 and diff.max() <= 8, (diff.mean(), diff.max())  # > 0: autocast did run in bf16
    assert torch.equal(createsamples.generate(G, 16, seed=0, batch_size=3, precision="bf16"), bf16)
    save_generator(tmp_path / "g.pt", G)
    code, out, err = run(capsys, "--model", tmp_path / "g.pt", "--n", 16, "--out", tmp_path / "s",
                         "--device", "cpu", "--precision", "bf16")
    assert code == 0, err
    assert "bf16 on cpu" in out.splitlines()[0]
    assert torch.equal(read_pngs(tmp_path / "s")[1], bf16)


def test_auto_precision_follows_the_measured_cpu_speed(monkeypatch):
    cpu = torch.device("cpu")
    for speedup, want in [(0.06, "fp32"), (1.0, "fp32"), (2.5, "bf16")]:  # emulated bf16 is ~17x slower
        monkeypatch.setattr(arch, "bf16_speedup", lambda s=speedup: s)
        assert createsamples.pick_precision("auto", cpu) == want, speedup
    assert createsamples.pick_precision("fp32", cpu) == "fp32"
    assert createsamples.pick_precision("bf16", cpu) == "bf16"


def test_progress_lines_on_stderr(tmp_path, capsys):
    save_generator(tmp_path / "g.pt", tiny())
    code, out, err = run(capsys, "--model", tmp_path / "g.pt", "--n", 20, "--batch-size", 2, "--out", tmp_path / "s",
                         "--device", "cpu", "--precision", "fp32")
    assert code == 0, err
    lines = err.splitlines()
    assert [line.split(" images")[0] for line in lines] == [f"{i}/20" for i in range(2, 21, 2)]  # every 10%
    assert lines[-1].startswith("20/20 images (100%), ") and "images/s" in lines[-1]
    assert out.splitlines()[-1] == f"wrote 20 images (32x32) from {tmp_path / 'g.pt'} to {tmp_path / 's'}"


# ----------------------------------------------------------------------------- model files, PNG round trip

def _generator_file(path, G):
    save_generator(path, G, epoch=3, script="train_wgan")


def _checkpoint(path, G):
    D = arch.Discriminator(img_size=32, width=0.125)
    torch.save({"format": arch.CHECKPOINT_FORMAT, "script": "train_wgan", "epoch": 3, "step": 75,
                "G": {"config": dict(G.config), "state_dict": G.state_dict()},
                "D": {"config": dict(D.config), "state_dict": D.state_dict()}}, path)


def _raw_state_dict(path, G):
    torch.save(G.state_dict(), path)  # as the thesis code saved its models


@pytest.mark.parametrize("kind,save", [("Generator", _generator_file), ("Generator", _checkpoint),
                                       ("Generator", _raw_state_dict), ("GeneratorKD", _raw_state_dict),
                                       ("GeneratorKD", _generator_file)],
                         ids=["generator_file", "checkpoint", "raw_G", "raw_GeneratorKD", "GeneratorKD_file"])
def test_model_files_and_png_round_trip(tmp_path, capsys, kind, save):
    G = tiny(kind, seed=7)
    save(tmp_path / "g.pt", G)
    out = tmp_path / "s"
    createsamples.main(["--model", str(tmp_path / "g.pt"), "--n", "7", "--batch-size", "3", "--seed", "5",
                        "--out", str(out), "--device", "cpu", "--precision", "fp32"])
    names, images = read_pngs(out)
    assert len(names) == 7
    assert torch.equal(images, expected(G, 7, seed=5))  # lossless, correctly rounded, from these very weights
    assert capsys.readouterr().out.splitlines() == [
        f"{tmp_path / 'g.pt'}: {kind} 32x32, raw weights (the file has no EMA weights), fp32 on cpu",
        f"wrote 7 images (32x32) from {tmp_path / 'g.pt'} to {out}"]


def test_ema_weights_by_default_raw_with_flag(tmp_path, capsys):
    raw, ema = tiny(seed=1), tiny(seed=2)  # two different weight sets: which one made the images shows
    averaged = torch.optim.swa_utils.AveragedModel(ema, use_buffers=True)  # what a harness may keep
    save_generator(tmp_path / "g.pt", raw, averaged, epoch=3)
    ckpt = {"format": arch.CHECKPOINT_FORMAT, "G": {"config": dict(raw.config), "state_dict": raw.state_dict()},
            "G_ema": {"config": dict(ema.config), "state_dict": ema.state_dict()}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    want = {"ema": expected(ema, 6, seed=0), "raw": expected(raw, 6, seed=0)}
    assert not torch.equal(want["ema"], want["raw"])
    for name in ("g.pt", "ckpt.pt"):
        for flags, kind in [((), "ema"), (("--raw",), "raw")]:
            out = tmp_path / f"s_{name}_{kind}"
            code, stdout, err = run(capsys, "--model", tmp_path / name, "--n", 6, "--out", out, "--device", "cpu", "--precision", "fp32", *flags)
            assert code == 0, err
            assert f"{'EMA' if kind == 'ema' else 'raw'} weights, fp32 on cpu" in stdout.splitlines()[0], stdout
            assert torch.equal(read_pngs(out)[1], want[kind]), (name, kind)
    model, _ = arch.load_model(tmp_path / "g.pt")
    assert model.weights_kind == "ema"
    assert arch.load_model(tmp_path / "g.pt", ema=False)[0].weights_kind == "raw"


def test_run_directory_means_its_generator(tmp_path, monkeypatch, capsys):
    G = tiny()
    (tmp_path / "runs" / "model1").mkdir(parents=True)
    save_generator(tmp_path / "runs" / "model1" / "generator.pt", G)
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "--model", "runs/model1", "--n", 3, "--device", "cpu", "--precision", "fp32")
    assert code == 0, err
    assert torch.equal(read_pngs(tmp_path / "samples" / "model1")[1], expected(G, 3, seed=0))


def test_default_out_and_grid(tmp_path, monkeypatch):
    G = tiny()
    save_generator(tmp_path / "teacher.pt", G)
    monkeypatch.chdir(tmp_path)
    createsamples.main(["--model", "teacher.pt", "--n", "7", "--batch-size", "3", "--grid", "prev/grid.png",
                        "--grid-n", "4", "--device", "cpu", "--precision", "fp32"])
    names, images = read_pngs(tmp_path / "samples" / "teacher")
    assert len(names) == 7
    assert os.listdir(tmp_path / "prev") == ["grid.png"]  # no temp file left beside it
    grid = np.array(Image.open(tmp_path / "prev" / "grid.png"))
    assert grid.shape == (2 + 2 * 34, 2 + 2 * 34, 3)  # 4 images of 32 px, 2 per row, 2 px padding
    assert (grid[:2] == 255).all() and (grid[:, 34:36] == 255).all()  # white padding
    for i in range(4):  # tile i is sample i, row-major
        r, c = 2 + 34 * (i // 2), 2 + 34 * (i % 2)
        assert np.array_equal(grid[r:r + 32, c:c + 32], images[i].permute(1, 2, 0).numpy()), i


def test_grid_inside_out_is_refused(tmp_path):
    with pytest.raises(createsamples.UserError, match="inside --out"):
        createsamples.write_samples(tiny(), 3, tmp_path / "s", grid=tmp_path / "s" / "grid.png")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("existing", [False, True], ids=["new_out", "overwrite"])
def test_interrupted_run_leaves_no_output(tmp_path, monkeypatch, existing):
    out = tmp_path / "s"
    if existing:  # --overwrite: the old set must survive until the new one is complete
        out.mkdir()
        (out / "00000.png").write_bytes(b"old")
    calls = []

    def crash_on_second_batch(tensor, path):
        calls.append(path)
        if len(calls) == 4:
            raise KeyboardInterrupt
        real_save(tensor, path)

    real_save = createsamples._save_png
    monkeypatch.setattr(createsamples, "_save_png", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        createsamples.write_samples(tiny(), 7, out, batch_size=3, overwrite=existing)
    assert len(calls) == 4  # it did write three images before the interruption...
    assert [p.name for p in tmp_path.iterdir()] == (["s"] if existing else [])  # ...but no partial folder remains
    if existing:
        assert snapshot(out) == {"00000.png": b"old"}  # and the old set is untouched


@pytest.mark.parametrize("existing", [False, True], ids=["new_out", "overwrite"])
def test_disk_full_is_one_line_and_leaves_no_trace(tmp_path, monkeypatch, capsys, existing):
    save_generator(tmp_path / "g.pt", tiny())
    out = tmp_path / "s"
    if existing:
        out.mkdir()
        for i in range(3):
            (out / f"{i:05d}.png").write_bytes(b"old")
        (out / "notes.txt").write_text("keep me")
    before = snapshot(out) if existing else None
    calls = []

    def disk_fills_up(image, path):
        calls.append(path)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write() on a full disk raises it
        real_save(image, path)

    real_save = createsamples._save_png
    monkeypatch.setattr(createsamples, "_save_png", disk_fills_up)
    flags = ["--overwrite"] if existing else []
    code, stdout, err = run(capsys, "--model", tmp_path / "g.pt", "--n", 8, "--batch-size", 2, "--out", out,
                            "--device", "cpu", "--precision", "fp32", *flags)
    assert code == 2 and len(calls) == 5
    assert err.splitlines()[-1] == f"error: cannot write {out / '00004.png'}: No space left on device"
    assert all(" images (" in line for line in err.splitlines()[:-1])  # the rest are progress lines
    assert sorted(p.name for p in tmp_path.iterdir()) == (["g.pt", "s"] if existing else ["g.pt"])  # no temp folder
    if existing:
        assert snapshot(out) == before


# ----------------------------------------------------------------------------- the folder rules, through the CLI

def test_refuses_non_empty_folder_then_overwrite_replaces_only_samples(tmp_path):
    save_generator(tmp_path / "g.pt", tiny())
    out = tmp_path / "s"
    out.mkdir()
    for i in range(10):  # an older, larger set
        (out / f"{i:05d}.png").write_bytes(b"old")
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)

    r = cli("--model", tmp_path / "g.pt", "--n", 7, "--batch-size", 3, "--out", out, "--device", "cpu", "--precision", "fp32")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error:") and "--overwrite" in r.stderr
    assert r.stdout == ""
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt", "s"]  # no partial folder either

    r = cli("--model", tmp_path / "g.pt", "--n", 7, "--batch-size", 3, "--out", out, "--device", "cpu", "--precision", "fp32", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == f"wrote 7 images (32x32) from {tmp_path / 'g.pt'} to {out}"
    assert sorted(os.listdir(out)) == [f"{i:05d}.png" for i in range(7)] + ["notes.txt"]  # exactly 7 samples
    assert (out / "notes.txt").read_text() == "keep me"
    (out / "notes.txt").unlink()
    assert torch.equal(read_pngs(out)[1], expected(tiny(), 7, seed=0))


def test_existing_empty_folder_is_used(tmp_path):
    (tmp_path / "s").mkdir()
    createsamples.write_samples(tiny(), 2, tmp_path / "s")
    assert sorted(os.listdir(tmp_path / "s")) == ["00000.png", "00001.png"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    torch.save(arch.Discriminator(img_size=32, width=0.125).state_dict(), d / "critic.pt")
    (d / "random.pt").write_bytes(os.urandom(1000))
    (d / "empty.pt").write_bytes(b"")
    (d / "text.pt").write_text("epoch 10: FID 42.0\n")
    (d / "run").mkdir()  # a folder that is no run directory
    save_generator(d / "g.pt", tiny())
    data = (d / "g.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])  # as a copy interrupted half-way
    torch.save({"args": argparse.Namespace(lr=1e-4)}, d / "namespace.pt")  # an object weights_only refuses
    G = tiny()
    with torch.no_grad():
        G.layer2[0].weight[0, 0, 0, 0] = float("nan")
        G.layer3[1].running_var[0] = float("inf")
    save_generator(d / "diverged.pt", tiny(), G)  # EMA weights diverged: --raw would work, the default not
    save_generator(d / "diverged_raw.pt", G)
    return d


@pytest.mark.parametrize("args,says", [
    (["--model", "{d}/critic.pt"], "critic.pt holds a Discriminator, expected Generator or GeneratorKD"),
    (["--model", "{d}/random.pt"], "random.pt is not a PyTorch file"),
    (["--model", "{d}/text.pt"], "text.pt is not a PyTorch file"),
    (["--model", "{d}/empty.pt"], "empty.pt is empty (0 bytes)"),
    (["--model", "{d}/truncated.pt"], "truncated.pt is truncated or corrupt"),
    (["--model", "{d}/namespace.pt"], "namespace.pt holds objects other than tensors and plain data (refused for safety)"),
    (["--model", "{d}/run"], "run is a directory without a generator.pt"),
    (["--model", "{d}/missing.pt"], "missing.pt: no such file"),
    (["--model", "{d}/diverged.pt"], "diverged.pt holds non-finite weights (NaN/Inf in layer2.0.weight, "
                                     "layer3.1.running_var): the run that wrote it diverged"),
    (["--model", "{d}/diverged_raw.pt", "--raw"], "diverged_raw.pt holds non-finite weights (NaN/Inf in layer2.0"),
    (["--model", "{d}/g.pt", "--n", "0"], "positive"),
    (["--model", "{d}/g.pt", "--device", "gpu7"], "--device"),
    (["--model", "{d}/g.pt", "--precision", "fp16", "--device", "cpu"], "--precision fp16 needs a CUDA device"),
], ids=["discriminator", "random", "text", "empty", "truncated", "refused_object", "not_a_run_dir", "missing",
        "non_finite_ema", "non_finite_raw", "n0", "device", "fp16_cpu"])
def test_bad_inputs_fail_in_one_line(bad_files, tmp_path, capsys, args, says):
    code, out, err = run(capsys, *[a.format(d=bad_files) for a in args], "--out", tmp_path / "s")
    assert code == 2
    assert err.count("\n") == 1 and "error:" in err and says in err, err
    assert out == ""
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_diverged_file_through_the_real_command_line(bad_files, tmp_path):
    r = cli("--model", bad_files / "diverged.pt", "--out", tmp_path / "s", "--device", "cpu", "--precision", "fp32")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr and "non-finite weights" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []
    r = cli("--model", bad_files / "diverged.pt", "--raw", "--n", 2, "--out", tmp_path / "s", "--device", "cpu", "--precision", "fp32")
    assert r.returncode == 0 and "raw weights" in r.stdout, r.stderr  # the raw weights are still usable


def test_read_file_refuses_a_folder(tmp_path):
    with pytest.raises(arch.ModelFileError, match="is a directory, not a model file"):
        arch.read_file(tmp_path)
