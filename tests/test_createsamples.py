"""createsamples.py: exact N, seeding, batch-size independence, PNG round trip, every model file kind, the
output-folder rules and one-line errors. Tiny 32x32 generators at width 1/8, so the file runs in seconds."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import arch
import common
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
    randn(nz) of a CPU torch.Generator seeded with `seed`, through G in eval mode, rounded by to_uint8."""
    g = torch.Generator().manual_seed(seed)
    z = torch.stack([torch.randn(G.config["nz"], generator=g) for _ in range(n)]).view(n, -1, 1, 1)
    with torch.no_grad():
        return common.to_uint8(G.eval()(z))


def read_pngs(folder):
    names = sorted(os.listdir(folder))
    return names, torch.stack([torch.from_numpy(np.array(Image.open(os.path.join(folder, f)))).permute(2, 0, 1)
                               for f in names])


def cli(*args, cwd=ROOT):
    return subprocess.run([sys.executable, SCRIPT, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


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


# ----------------------------------------------------------------------------- model files, PNG round trip

def _generator_file(path, G):
    common.save_generator(path, G, epoch=3, script="train_wgan")


def _checkpoint(path, G):
    D = arch.Discriminator(img_size=32, width=0.125)
    torch.save({"format": common.CHECKPOINT_FORMAT, "script": "train_wgan", "epoch": 3, "step": 75,
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
                        "--out", str(out), "--device", "cpu"])
    names, images = read_pngs(out)
    assert len(names) == 7
    assert torch.equal(images, expected(G, 7, seed=5))  # lossless, correctly rounded, from these very weights
    assert capsys.readouterr().out == f"wrote 7 images (32x32) from {tmp_path / 'g.pt'} to {out}\n"


def test_default_out_and_grid(tmp_path, monkeypatch):
    G = tiny()
    common.save_generator(tmp_path / "teacher.pt", G)
    monkeypatch.chdir(tmp_path)
    createsamples.main(["--model", "teacher.pt", "--n", "7", "--batch-size", "3", "--grid", "prev/grid.png",
                        "--grid-n", "4", "--device", "cpu"])
    names, images = read_pngs(tmp_path / "samples" / "teacher")
    assert len(names) == 7
    grid = np.array(Image.open(tmp_path / "prev" / "grid.png"))
    assert grid.shape == (2 + 2 * 34, 2 + 2 * 34, 3)  # 4 images of 32 px, 2 per row, 2 px padding
    for i in range(4):  # tile i is sample i, row-major
        r, c = 2 + 34 * (i // 2), 2 + 34 * (i % 2)
        assert np.array_equal(grid[r:r + 32, c:c + 32], images[i].permute(1, 2, 0).numpy()), i


def test_grid_inside_out_is_refused(tmp_path):
    with pytest.raises(common.UserError, match="inside --out"):
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


# ----------------------------------------------------------------------------- the folder rules, through the CLI

def test_refuses_non_empty_folder_then_overwrite_replaces_only_samples(tmp_path):
    common.save_generator(tmp_path / "g.pt", tiny())
    out = tmp_path / "s"
    out.mkdir()
    for i in range(10):  # an older, larger set
        (out / f"{i:05d}.png").write_bytes(b"old")
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)

    r = cli("--model", tmp_path / "g.pt", "--n", 7, "--batch-size", 3, "--out", out, "--device", "cpu")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error:") and "--overwrite" in r.stderr
    assert r.stdout == ""
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.pt", "s"]  # no partial folder either

    r = cli("--model", tmp_path / "g.pt", "--n", 7, "--batch-size", 3, "--out", out, "--device", "cpu", "--overwrite")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"wrote 7 images (32x32) from {tmp_path / 'g.pt'} to {out}"
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
    (d / "garbage.pt").write_bytes(os.urandom(1000))
    common.save_generator(d / "g.pt", tiny())
    return d


@pytest.mark.parametrize("args,says", [
    (["--model", "{d}/critic.pt"], "Discriminator"),
    (["--model", "{d}/garbage.pt"], "cannot read"),
    (["--model", "{d}/missing.pt"], "no such file"),
    (["--model", "{d}/g.pt", "--n", "0"], "positive"),
    (["--model", "{d}/g.pt", "--device", "gpu7"], "--device"),
], ids=["discriminator", "garbage", "missing", "n0", "device"])
def test_bad_inputs_fail_in_one_line(bad_files, tmp_path, args, says):
    r = cli(*[a.format(d=bad_files) for a in args], "--out", tmp_path / "s")
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "error:" in r.stderr and says in r.stderr, r.stderr
    assert not (tmp_path / "s").exists() and list(tmp_path.iterdir()) == []
