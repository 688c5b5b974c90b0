"""compute_fid.py: the two metrics against closed forms and reference code, and the whole pipeline against pytorch-fid.

No network, no GPU, no real Inception weights: the network is pytorch-fid's FID Inception architecture with
seeded random weights, saved to a file and passed by --weights; TORCH_HOME points at an empty temp folder so
nothing can silently use a hub cache file. Few, tiny images: Inception on CPU costs ~0.1 s per image, and the
end-to-end tests use 192-dim features (--dims 192: the first two blocks only, and a 192x192 instead of a
2048x2048 matrix square root, which alone takes ~20 s on 2 cores); the full 2048-dim network is compared with
pytorch-fid's block by block in test_our_wrapper_equals_pytorch_fid_inceptionv3.
"""
import ast
import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import urllib.error
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid import fid_score
from pytorch_fid import inception as pfi

import compute_fid as cf
from compute_fid import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 8  # images per folder
DIMS = 192  # features for the end-to-end tests (see the module docstring)


@pytest.fixture(scope="module", autouse=True)
def no_hub_cache(tmp_path_factory):
    """An empty torch hub for the whole module (module-scoped so it is set before the module-scoped fixtures)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(tmp_path_factory.mktemp("torch_home")))
        yield


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random-weight FID Inception state dict file. Kaiming-normal convs keep activations O(1) through the
    ~100 layers (PyTorch's default init shrinks them towards 0, which would make every FID ~0)."""
    torch.manual_seed(0)
    net = cf.fid_inception_v3_arch()
    for mod in net.modules():
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("weights") / "random_inception.pth"
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.fixture(scope="module")
def model(weights):
    return cf.load_inception(weights, dims=DIMS, device="cpu")


def write_images(folder, n, size, seed, brightness=0.5, ext="png"):
    """n smooth random colour images (blurred noise around `brightness`)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.RandomState(seed)
    w, h = size
    for i in range(n):
        small = rng.uniform(-0.3, 0.3, size=(4, 4, 3)) + brightness
        img = Image.fromarray((np.clip(small, 0, 1) * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR)
        noise = rng.randint(-20, 21, size=(h, w, 3))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=int) + noise, 0, 255).astype(np.uint8))
        img.save(os.path.join(folder, f"{i:03d}.{ext}"))
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    a = write_images(root / "a", N, (32, 32), seed=1, brightness=0.35)
    b = write_images(root / "b", N, (48, 40), seed=2, brightness=0.65, ext="jpg")
    mixed = root / "mixed"
    write_images(mixed / "x", 2, (32, 32), seed=3)
    write_images(mixed / "y", 2, (24, 40), seed=4)
    for sub in ("x", "y"):  # flatten to 000_x.png, 000_y.png, 001_x.png, ...: the sizes alternate in file order
        for name in os.listdir(mixed / sub):
            os.rename(mixed / sub / name, mixed / f"{name[:3]}_{sub}.png")
        os.rmdir(mixed / sub)
    empty = root / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    return dict(a=a, b=b, mixed=str(mixed), empty=str(empty), root=root)


def run_cli(*args, script=os.path.join(ROOT, "compute_fid.py")):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, script, *map(str, args)], capture_output=True, text=True,
                          cwd=os.path.dirname(script), env=env, timeout=600)


@pytest.fixture(scope="module")
def cli(folders, weights, tmp_path_factory):
    """One real CLI run: a vs b with --json and --save-stats of b, by a copy of the script alone in a folder
    (standalone: nothing of the project, e.g. harness.py, is importable from there)."""
    alone = tmp_path_factory.mktemp("alone")
    script = shutil.copy(os.path.join(ROOT, "compute_fid.py"), alone)
    out = folders["root"] / "out"
    proc = run_cli(folders["a"], folders["b"], "--weights", weights, "--device", "cpu", "--dims", DIMS,
                   "--json", out / "r.json", "--save-stats", out / "b.npz", script=script)
    assert proc.returncode == 0, proc.stderr
    with open(out / "r.json") as f:
        result = json.load(f)
    return dict(proc=proc, result=result, b_npz=str(out / "b.npz"))


# ----------------------------------------------------------------------------- Fréchet distance

def test_frechet_matches_closed_form_for_diagonal_gaussians():
    rng = np.random.RandomState(0)
    d = 16
    m1, m2 = rng.randn(d), rng.randn(d)
    s1, s2 = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    expected = np.sum((m1 - m2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert cf.frechet_distance(m1, np.diag(s1), m2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)
    assert cf.frechet_distance(m1, np.diag(s1), m1, np.diag(s1)) == pytest.approx(0, abs=1e-9)


def test_frechet_equals_pytorch_fid_on_random_features():
    rng = np.random.RandomState(1)
    x, y = rng.randn(200, 32), rng.randn(150, 32) * 1.3 + 0.2
    (m1, s1), (m2, s2) = cf.statistics(x), cf.statistics(y)
    assert np.array_equal(s1, np.cov(x, rowvar=False)) and np.array_equal(m1, x.mean(0))
    assert cf.frechet_distance(m1, s1, m2, s2) == fid_score.calculate_frechet_distance(m1, s1, m2, s2)
    assert cf.frechet_distance(m1, s1, m2, s2) > 0.5


# ----------------------------------------------------------------------------- KID

def mmd2_unbiased_reference(x, y, degree=3, coef0=1.0):
    """Straight from the definition, with loops: mean k over distinct pairs within each set, minus 2 x mean across."""
    gamma = 1.0 / x.shape[1]

    def k(u, v):
        return (gamma * float(np.dot(u, v)) + coef0) ** degree

    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_matches_loop_reference_on_full_sets():
    rng = np.random.RandomState(2)
    x, y = rng.randn(12, 5), rng.randn(12, 5) + 0.5
    ref = mmd2_unbiased_reference(x, y)
    for precompute in (False, True):  # one subset = the whole set (a permutation of it: same MMD)
        mean, std = cf.kid(x, y, subsets=3, subset_size=12, precompute=precompute)
        assert mean == pytest.approx(ref, rel=1e-10)
        assert std == pytest.approx(0, abs=1e-12)


def test_kid_subsets_same_with_and_without_precomputed_kernels():
    rng = np.random.RandomState(3)
    x, y = rng.randn(40, 8), rng.randn(30, 8) * 1.2
    a = cf.kid(x, y, subsets=20, subset_size=10, seed=5, precompute=False)
    b = cf.kid(x, y, subsets=20, subset_size=10, seed=5, precompute=True)
    assert a == pytest.approx(b, rel=1e-10)
    assert a[1] > 0  # proper subsets do vary
    # the first subset pair, by hand: RandomState(seed), x rows then y rows, as torch-fidelity draws them
    rng = np.random.RandomState(5)
    i, j = rng.choice(40, 10, replace=False), rng.choice(30, 10, replace=False)
    one = cf.kid(x, y, subsets=1, subset_size=10, seed=5)[0]
    assert one == pytest.approx(mmd2_unbiased_reference(x[i], y[j]), rel=1e-10)


def test_kid_is_near_zero_for_identical_sets_and_positive_for_shifted():
    rng = np.random.RandomState(4)
    x = np.abs(rng.randn(300, 64))  # pool3 features are >= 0 too
    y = np.abs(rng.randn(300, 64))
    same = cf.kid(x, x, subsets=20, subset_size=300)[0]  # whole sets: exactly -2/m (mean k(x,x) - mean k(x,x'))
    same_dist = cf.kid(x, y, subsets=20, subset_size=100)[0]  # unbiased: ~0 for two samples of one distribution
    shifted = cf.kid(x, x + 0.5, subsets=20, subset_size=100)[0]
    assert shifted > 1
    assert abs(same) < 0.01 * shifted and abs(same_dist) < 0.01 * shifted


def test_kid_needs_two_images_per_side():
    with pytest.raises(UserError, match="at least 2"):
        cf.kid(np.ones((1, 4)), np.ones((5, 4)))


# ----------------------------------------------------------------------------- file listing

def test_listing_and_subsample_follow_pytorch_fid(folders, tmp_path):
    for name in ("b.PNG", "c.txt", "a.webp", "d.jpeg"):
        (tmp_path / name).write_bytes(b"")
    # pytorch-fid: lower-case extensions only, sorted
    assert [p.name for p in cf.list_images(tmp_path)] == ["a.webp", "d.jpeg"]
    files = cf.list_images(folders["a"])
    sub = cf.subsample(files, 5, seed=3)
    chosen = np.random.RandomState(3).choice(len(files), 5, replace=False)
    assert sub == [files[i] for i in sorted(chosen)]
    assert cf.subsample(files, 5, seed=4) != sub
    assert cf.subsample(files, 100, seed=3) == files
    assert cf._resolve(folders["a"], max_images=5, seed=3) == ("folder", sub)


def test_batches_never_mix_sizes_and_match_pytorch_fid_for_one_size(folders):
    files = cf.list_images(folders["mixed"])
    batches = cf.size_batches(files, 50)
    sizes = [{Image.open(files[i]).size for i in b} for b in batches]
    assert all(len(s) == 1 for s in sizes) and sorted(i for b in batches for i in b) == list(range(len(files)))
    assert cf.size_batches(cf.list_images(folders["a"]), 3) == [[0, 1, 2], [3, 4, 5], [6, 7]]


# ----------------------------------------------------------------------------- the network

def test_load_inception_equals_pytorch_fids_public_class_with_our_weights(model, weights, monkeypatch):
    """pytorch-fid's own InceptionV3, built as pytorch-fid builds it (fid_inception_v3 returning a net that holds
    the same weights), has the same modules under the same names and gives bit-identical features, for the first
    and the last block."""
    ours = {dims: cf.load_inception(weights, dims=dims) for dims in (64, 2048)}
    net = cf.fid_inception_v3_arch()
    net.load_state_dict(torch.load(weights, weights_only=True))
    monkeypatch.setattr(pfi, "fid_inception_v3", lambda: net)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for dims, ours in ours.items():
            theirs = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]]).eval()
            assert [(n, type(m)) for n, m in ours.named_modules()][1:] == [(n, type(m)) for n, m in theirs.named_modules()][1:]
            assert list(ours.state_dict()) == list(theirs.state_dict())
            assert torch.equal(ours(x)[0], theirs(x)[0])
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_arch_helper_is_pytorch_fids_fid_inception_v3(monkeypatch):
    """fid_inception_v3_arch (load_inception fills it) = pytorch-fid's fid_inception_v3 minus the download:
    pytorch-fid loads its state dict strictly into its own network, module for module of the same types."""
    ours = cf.fid_inception_v3_arch()
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *args, **kwargs: ours.state_dict())
    theirs = pfi.fid_inception_v3()
    assert [(n, type(m)) for n, m in ours.named_modules()] == [(n, type(m)) for n, m in theirs.named_modules()]


def test_imports_nothing_of_the_project():
    """Standalone: only the standard library, torch, numpy, scipy, PIL and pytorch_fid (the CLI fixture also
    runs a copy of the script alone in a folder)."""
    allowed = {"torch", "numpy", "scipy", "PIL", "pytorch_fid", "torchvision"}
    tree = ast.parse(open(os.path.join(ROOT, "compute_fid.py")).read())
    names = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    names |= {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert names - allowed <= set(sys.stdlib_module_names), names - allowed - set(sys.stdlib_module_names)


def test_help_shows_defaults_and_the_kid_rule(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")  # no wrapping inside the phrases looked for
    with pytest.raises(SystemExit) as e:
        cf.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "(default: 50)" in out and "min(1000, smaller set // 2)" in out and "--overwrite" in out
    assert "Examples:\n    python compute_fid.py" in out  # the epilog keeps its line breaks


# ----------------------------------------------------------------------------- end to end

def test_cli_prints_fid_kid_and_writes_json(cli, weights):
    out = cli["proc"].stdout
    assert "FID: " in out and "KID: " in out and "±" in out
    r = cli["result"]
    for key in ("fid", "kid_mean", "kid_std", "n_a", "n_b", "a", "b", "dims", "weights", "max_images", "seed"):
        assert key in r
    assert r["n_a"] == r["n_b"] == N and r["dims"] == DIMS and r["fid"] > 0 and r["kid_mean"] > 0
    assert r["weights"] == os.path.abspath(weights)  # --weights was used, not a hub file
    assert f"FID: {r['fid']:.3f}" in out
    with np.load(cli["b_npz"]) as f:
        assert set(f.files) >= {"mu", "sigma", "features", "n"} and int(f["n"]) == N
        assert f["features"].shape == (N, DIMS) and f["sigma"].shape == (DIMS, DIMS)


def test_fid_equals_pytorch_fids_own_pipeline(cli, folders, weights, monkeypatch):
    """pytorch-fid's calculate_fid_given_paths (its listing, model, batching, stats) with the same random weights."""
    net = cf.fid_inception_v3_arch()
    net.load_state_dict(torch.load(weights, weights_only=True))
    monkeypatch.setattr(pfi, "fid_inception_v3", lambda: net)
    theirs = fid_score.calculate_fid_given_paths([folders["a"], folders["b"]], 50, "cpu", DIMS, num_workers=0)
    assert cli["result"]["fid"] == pytest.approx(theirs, rel=1e-6)


def test_cached_npz_gives_same_fid_and_kid_as_folder(cli, folders, model):
    r = cf.compute(folders["a"], cli["b_npz"], model=model, device="cpu", dims=DIMS)
    assert r["fid"] == pytest.approx(cli["result"]["fid"], rel=1e-6)
    assert r["kid_mean"] == pytest.approx(cli["result"]["kid_mean"], rel=1e-6)
    assert r["n_b"] == N


def test_fid_of_folder_with_itself_is_about_zero(cli, folders, model):
    r = cf.compute(folders["a"], folders["a"], model=model, device="cpu", dims=DIMS, kid_subset_size=N)
    assert abs(r["fid"]) < 1e-3 * cli["result"]["fid"]
    # KID of a set with itself is not exactly 0: over whole sets it is -2/m (mean k(x,x) - mean k(x,x')), small
    # next to a real difference but only ~1/m of it at m = 8
    assert abs(r["kid_mean"]) < 0.05 * cli["result"]["kid_mean"]


def test_channels_last_gives_the_same_features_up_to_rounding(cli, folders, weights):
    fast = cf.load_inception(weights, dims=DIMS, channels_last=True)
    feats = cf.get_activations(folders["b"], fast, device="cpu", num_workers=0)
    with np.load(cli["b_npz"]) as f:
        np.testing.assert_allclose(feats, f["features"], rtol=1e-4, atol=1e-5)
    assert cli["result"]["channels_last"] is True  # the command line's default


def test_mixed_sizes_work_and_match_one_image_batches(folders, model):
    files = cf.list_images(folders["mixed"])
    ours = cf.get_activations(folders["mixed"], model, batch_size=50, device="cpu", num_workers=0)
    with pytest.raises(RuntimeError):  # what pytorch-fid does with this folder at its default batch size
        fid_score.get_activations(files, model, batch_size=50, dims=DIMS, device="cpu", num_workers=0)
    single = fid_score.get_activations(files, model, batch_size=1, dims=DIMS, device="cpu", num_workers=0)
    np.testing.assert_allclose(ours, single, rtol=1e-4, atol=1e-5)


def test_save_stats_pytorch_fid_form_and_npz_interop(cli, folders, weights, tmp_path):
    out = tmp_path / "b2.npz"
    cf.main(["--save-stats", folders["b"], str(out), "--weights", weights, "--device", "cpu", "--dims", str(DIMS)])
    with np.load(out) as mine, np.load(cli["b_npz"]) as theirs:
        np.testing.assert_allclose(mine["features"], theirs["features"], rtol=1e-6, atol=1e-7)
    # pytorch-fid reads our file ...
    mu, sigma = fid_score.compute_statistics_of_path(str(out), None, 50, DIMS, "cpu")
    with np.load(out) as f:
        assert np.array_equal(mu, f["mu"]) and np.array_equal(sigma, f["sigma"])
        # ... and we read pytorch-fid's (mu/sigma only): FID yes, KID reported unavailable
        pf = tmp_path / "pytorch_fid_style.npz"
        np.savez_compressed(pf, mu=f["mu"], sigma=f["sigma"])
    r = cf.compute(str(out), str(pf), device="cpu", dims=DIMS)  # no folder: no model needed
    assert abs(r["fid"]) < 1e-3 * cli["result"]["fid"]
    assert r["kid_mean"] is None and "unavailable" in r["kid_note"] and "unavailable" in cf.report(r)
    small = tmp_path / "dims64.npz"
    np.savez(small, mu=np.zeros(64), sigma=np.eye(64))
    with pytest.raises(UserError, match="different dimensions"):
        cf.compute(str(out), str(small), device="cpu", dims=DIMS)


# ----------------------------------------------------------------------------- user errors

@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "garbage.pth").write_bytes(b"this is not a checkpoint")
    torch.save({"fc.weight": torch.zeros(3, 3)}, d / "wrong_keys.pth")
    np.savez(d / "no_mu.npz", features=np.zeros((3, 4)))
    return d


@pytest.mark.parametrize("case", ["missing_folder", "empty_folder", "garbage_weights", "wrong_keys", "npz_no_mu"])
def test_user_errors_are_one_line(case, folders, weights, bad_files, capsys):
    """In-process: main() turns a UserError into one line and exit 2 itself (a subprocess each would cost ~5 s)."""
    args, expected = {
        "missing_folder": ([folders["a"], folders["root"] / "nope", "--weights", weights], "no such"),
        "empty_folder": ([folders["a"], folders["empty"], "--weights", weights], "no images"),
        "garbage_weights": ([folders["a"], folders["b"], "--weights", bad_files / "garbage.pth"], "not a PyTorch"),
        "wrong_keys": ([folders["a"], folders["b"], "--weights", bad_files / "wrong_keys.pth"], "FID Inception"),
        "npz_no_mu": ([bad_files / "no_mu.npz", folders["b"], "--weights", weights], "'mu'"),
    }[case]
    assert expected in one_line_error(capsys, *args)


def one_line_error(capsys, *args):
    """Run main(args) in-process; it must exit 2 with exactly one stderr line `error: ...`, returned (a `note:`
    line before it is fine: the FID of a statistics file with itself has singular covariances)."""
    with pytest.raises(SystemExit) as e:
        cf.main([*map(str, args), "--device", "cpu"])
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("note: ")]
    assert e.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_user_error_from_the_real_script_is_one_line_without_traceback(folders, bad_files):
    proc = run_cli(folders["a"], bad_files / "garbage.pth", "--device", "cpu")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {bad_files / 'garbage.pth'}: neither an image folder "
                                                "nor a .npz statistics file"]


def test_missing_hub_weights_and_no_network_says_where_to_put_the_file(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected = cf.hub_weights_path()
    assert expected.startswith(os.environ["TORCH_HOME"])  # never the real ~/.cache one
    with pytest.raises(UserError) as e:
        cf.load_inception(None)
    msg = str(e.value)
    assert expected in msg and "--weights" in msg and "\n" not in msg
    assert not os.path.exists(expected)


# ----------------------------------------------------------------------------- odd images, outputs that are never half written

def test_16bit_png_reads_as_its_8bit_twin_where_pytorch_fid_sees_white(tmp_path, model):
    rng = np.random.RandomState(5)
    grey = [rng.randint(0, 256, size=(24, 32)).astype(np.uint8) for _ in range(2)]
    for i, g in enumerate(grey):
        os.makedirs(tmp_path / "8bit", exist_ok=True)
        os.makedirs(tmp_path / "16bit", exist_ok=True)
        Image.fromarray(g, "L").save(tmp_path / "8bit" / f"{i}.png")
        Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "16bit" / f"{i}.png")  # 0..255 -> 0..65535
    with Image.open(tmp_path / "16bit" / "0.png") as im:
        assert im.mode in cf.MODES_16BIT
    theirs = fid_score.ImagePathDataset([tmp_path / "16bit" / "0.png"])[0]  # pytorch-fid: convert('RGB') clips
    assert np.mean(np.asarray(theirs) == 255) > 0.99
    eight = cf.get_activations(tmp_path / "8bit", model, num_workers=0)
    sixteen = cf.get_activations(tmp_path / "16bit", model, num_workers=0)
    assert np.array_equal(eight, sixteen)


def png_header(width, height):
    """A PNG file of just a signature, an IHDR chunk claiming width x height, and IEND: a few dozen bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [100_000, 10_000])  # PIL: over 179 Mpx an error, over 89 Mpx a warning
def test_decompression_bomb_header_is_one_line_naming_the_file(side, tmp_path, folders, capsys, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(png_header(side, side))
    monkeypatch.setattr(cf, "load_inception", lambda *a, **k: pytest.fail("the model must not be needed"))
    line = one_line_error(capsys, folders["a"], tmp_path)
    assert str(tmp_path / "bomb.png") in line and "decompression bomb" in line


@pytest.fixture
def npz_pair(cli, tmp_path):
    """Two statistics files: a CLI run on them needs no Inception at all (fast)."""
    a = tmp_path / "a.npz"
    shutil.copy(cli["b_npz"], a)
    return str(a), cli["b_npz"]


def test_existing_outputs_are_refused_before_any_work_unless_overwrite(npz_pair, folders, tmp_path, capsys,
                                                                      monkeypatch):
    out = tmp_path / "r.json"
    out.write_text("earlier result")
    monkeypatch.setattr(cf, "load_inception", lambda *a, **k: pytest.fail("checked too late"))
    assert "exists; pass --overwrite" in one_line_error(capsys, *npz_pair, "--json", out)
    npz = tmp_path / "old.npz"
    npz.write_bytes(b"earlier statistics")
    assert str(npz) in one_line_error(capsys, folders["a"], folders["b"], "--save-stats", npz)
    assert str(npz) in one_line_error(capsys, "--save-stats", folders["b"], npz)
    assert out.read_text() == "earlier result" and npz.read_bytes() == b"earlier statistics"
    cf.main([*npz_pair, "--json", str(out), "--overwrite"])
    assert json.loads(out.read_text())["n_a"] == N
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "old.npz", "r.json"]  # no temp file left behind


def test_unwritable_output_folder_is_one_line_before_any_work(npz_pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cf, "load_inception", lambda *a, **k: pytest.fail("checked too late"))
    monkeypatch.setattr(cf, "frechet_distance", lambda *a: pytest.fail("checked too late"))
    (tmp_path / "plain_file").write_text("")
    line = one_line_error(capsys, *npz_pair, "--json", tmp_path / "plain_file" / "sub" / "r.json")
    assert "is a file, not a folder" in line
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    try:
        if os.access(readonly, os.W_OK):  # root ignores the mode bits: pretend, as a read-only mount would say
            monkeypatch.setattr(os, "access", lambda path, mode: os.path.abspath(path) != str(readonly))
        line = one_line_error(capsys, *npz_pair, "--json", readonly / "r.json")
        assert f"cannot write {readonly / 'r.json'}" in line and "permission" in line
    finally:
        readonly.chmod(0o755)
    assert os.listdir(readonly) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EFBIG])
def test_failed_write_is_one_line_and_keeps_the_old_file(code, npz_pair, cli, tmp_path, capsys, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    out = tmp_path / "r.json"
    out.write_text("earlier result")
    monkeypatch.setattr(json, "dump", full_disk)
    line = one_line_error(capsys, *npz_pair, "--json", out, "--overwrite")
    assert line == f"error: cannot write {out}: {os.strerror(code)}"
    assert out.read_text() == "earlier result"
    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(UserError, match=os.strerror(code)):
        cf.save_stats(tmp_path / "s.npz", cf.load_stats(cli["b_npz"]))
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "r.json"]  # neither a partial file nor a temp file


# ----------------------------------------------------------------------------- KID subsets, progress, warnings, images in memory

def test_kid_default_subset_size_gives_a_spread_at_500_vs_500():
    rng = np.random.RandomState(6)
    x, y = np.abs(rng.randn(500, 16)), np.abs(rng.randn(500, 16)) + 0.1
    assert cf.default_kid_subset_size(500, 500) == 250
    assert cf.default_kid_subset_size(5000, 3000) == 1000 and cf.default_kid_subset_size(3, 10) == 2
    mean, std = cf.kid(x, y)
    assert std > 0.05 * abs(mean) > 0
    assert (mean, std) == cf.kid(x, y, subset_size=250)
    assert cf.kid(x, y, subsets=5, subset_size=1000)[1] == pytest.approx(0, abs=1e-12)  # whole sets: no spread


def test_progress_every_tenth_or_every_ten_seconds(capsys, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(cf.time, "monotonic", lambda: clock[0])
    meter = cf.Progress(1000, "b: ")
    for done in range(10, 1001, 10):  # 1% steps, no time passing: the first step, then each 10%
        meter.update(done)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "b: 10/1000 images (1%), 0 s" and lines[-1] == "b: 1000/1000 images (100%), 0 s"
    assert len(lines) == 11
    meter = cf.Progress(1000, "b: ")
    for done in range(10, 51, 10):  # slow images: a line every 10 s although under 10% is done
        clock[0] += 11
        meter.update(done)
    assert len(capsys.readouterr().err.splitlines()) == 5


def test_feature_extraction_prints_progress_lines(folders, model, capsys):
    cf.get_activations(folders["a"], model, batch_size=2, num_workers=0, progress="a: ")
    lines = capsys.readouterr().err.splitlines()  # batches of 2 of 8 images: every batch is past another 10%
    assert [line.split(" images")[0] for line in lines] == [f"a: {k}/{N}" for k in range(2, N + 1, 2)]
    assert lines[-1].startswith(f"a: {N}/{N} images (100%), ") and lines[-1].endswith(" s")
    cf.folder_stats(cf.list_images(folders["a"]), model, num_workers=0, quiet=True)  # --quiet: silent
    assert capsys.readouterr().err == ""


def test_singular_covariance_warning_becomes_one_note_line(capsys):
    rng = np.random.RandomState(0)
    x, y = rng.rand(10, 64), rng.rand(10, 64) + 0.1
    x[:, :5] = 0  # constant features: a singular covariance that SciPy notices
    (m1, s1), (m2, s2) = cf.statistics(x), cf.statistics(y)
    value = cf.frechet_distance(m1, s1, m2, s2)
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("note: a covariance is singular")
    assert "LinAlgWarning" not in err and "sqrtm" not in err
    assert value == fid_score.calculate_frechet_distance(m1, s1, m2, s2)


def test_pytorch_fids_singular_product_message_becomes_the_note(capsys, monkeypatch):
    import scipy.linalg
    real_sqrtm = scipy.linalg.sqrtm

    def sqrtm(a, disp=True):  # the first try fails (non-finite), as for a singular product
        return (np.full_like(a, np.nan), np.inf) if disp is False else real_sqrtm(a)
    monkeypatch.setattr(scipy.linalg, "sqrtm", sqrtm)
    rng = np.random.RandomState(1)
    (m1, s1), (m2, s2) = cf.statistics(rng.randn(50, 8)), cf.statistics(rng.randn(50, 8))
    value = cf.frechet_distance(m1, s1, m2, s2)
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "adds 1e-6 to the diagonals" in err
    assert value == pytest.approx(fid_score.calculate_frechet_distance(m1, s1, m2, s2), rel=1e-12)


# ----------------------------------------------------------------------------- API for the training harness

def test_image_features_of_tensors_equal_features_of_their_pngs(tmp_path, model):
    images = torch.randint(0, 256, (5, 3, 24, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for i, img in enumerate(images):
        Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    from_files = cf.get_activations(tmp_path, model, batch_size=2, num_workers=0)
    from_tensor = cf.image_features(images, model, batch_size=2)
    assert from_tensor.dtype == np.float32 and from_tensor.shape == (5, DIMS)
    np.testing.assert_allclose(from_tensor, from_files, rtol=0, atol=1e-6)
    with pytest.raises(UserError, match="uint8"):
        cf.image_features(images.float() / 255, model)


def test_score_of_features_equals_compute_against_the_npz(cli, folders, model):
    feats = cf.get_activations(folders["a"], model, num_workers=0)
    ref = cf.load_stats(cli["b_npz"])
    r = cf.score(feats, ref)
    assert set(r) == {"fid", "kid_mean", "kid_std"}
    assert r["fid"] == pytest.approx(cli["result"]["fid"], rel=1e-6)
    assert r["kid_mean"] == pytest.approx(cli["result"]["kid_mean"], rel=1e-6)
    assert r["kid_std"] == pytest.approx(cli["result"]["kid_std"], rel=1e-6) and r["kid_std"] > 0
    assert cf.score(feats, dict(ref, features=None))["kid_mean"] is None


def test_max_images_of_an_npz_equals_the_same_subset_of_the_folder(cli, folders, model):
    """FID@M from cached N-image statistics: the same rows as `--max-images M` of the folder's files."""
    m = N // 2
    from_npz = cf.compute(folders["a"], cli["b_npz"], model=model, device="cpu", dims=DIMS, max_images=m)
    from_folder = cf.compute(folders["a"], folders["b"], model=model, device="cpu", dims=DIMS, max_images=m)
    assert from_npz["n_b"] == from_folder["n_b"] == m
    assert from_npz["fid"] == pytest.approx(from_folder["fid"], rel=1e-4)
    assert from_npz["fid"] != pytest.approx(cli["result"]["fid"], rel=1e-3)  # a subset, not the whole file


def test_bootstrap_std_is_the_spread_of_resampled_fids():
    rng = np.random.RandomState(0)
    a = dict(features=rng.randn(200, 8), mu=None, sigma=None)
    mu, sigma = cf.statistics(rng.randn(200, 8) * 1.5 + 0.5)
    b = dict(mu=mu, sigma=sigma)
    std = cf.bootstrap_fid(a, b, rounds=30, seed=1)
    # the same resamples by hand, each FID with pytorch-fid's matrix square root
    r = np.random.RandomState(1)
    values = [cf.frechet_distance(*cf.statistics(a["features"][r.randint(0, 200, 200)]), mu, sigma) for _ in range(30)]
    assert std == pytest.approx(np.std(values, ddof=1), rel=1e-6) and std > 0
    # more images, less noise
    big = dict(features=rng.randn(3200, 8))
    assert cf.bootstrap_fid(big, b, rounds=30, seed=1) < std / 2
