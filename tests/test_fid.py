"""compute_fid.py: the two metrics against closed forms and reference code, and the whole pipeline against pytorch-fid.

No network, no GPU, no real Inception weights: the network is pytorch-fid's FID Inception architecture with
seeded random weights, saved to a file and passed by --weights; TORCH_HOME points at an empty temp folder so
nothing can silently use a hub cache file. Few, tiny images: Inception on CPU costs ~0.1 s per image, and the
end-to-end tests use 192-dim features (--dims 192: the first two blocks only, and a 192x192 instead of a
2048x2048 matrix square root, which alone takes ~20 s on 2 cores); the full 2048-dim network is compared with
pytorch-fid's block by block in test_our_wrapper_equals_pytorch_fid_inceptionv3.
"""
import json
import os
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_fid import fid_score
from pytorch_fid import inception as pfi

import common
import compute_fid as cf
from common import UserError

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


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "compute_fid.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def cli(folders, weights):
    """One real CLI run: a vs b with --json and --save-stats of b."""
    out = folders["root"] / "out"
    proc = run_cli(folders["a"], folders["b"], "--weights", weights, "--device", "cpu", "--dims", DIMS,
                   "--json", out / "r.json", "--save-stats", out / "b.npz")
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

def test_our_wrapper_equals_pytorch_fid_inceptionv3(model, weights, monkeypatch):
    """Same module tree and forward as pytorch-fid's InceptionV3 when its fid_inception_v3 returns our net."""
    net = cf.fid_inception_v3_arch()
    net.load_state_dict(torch.load(weights, weights_only=True))
    monkeypatch.setattr(pfi, "fid_inception_v3", lambda: net)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for dims in (64, 2048):
            theirs = pfi.InceptionV3([pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]]).eval()
            ours = cf.FIDInceptionV3(net, dims).eval()
            assert [k for k in ours.state_dict()] == [k for k in theirs.state_dict()]
            assert torch.equal(ours(x)[0], theirs(x)[0])
    assert not any(p.is_meta for p in model.parameters()) and not any(p.requires_grad for p in model.parameters())


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
    r = cf.compute(folders["a"], folders["a"], model=model, device="cpu", dims=DIMS)
    assert abs(r["fid"]) < 1e-3 * cli["result"]["fid"]
    # KID of a set with itself is not exactly 0: over whole sets it is -2/m (mean k(x,x) - mean k(x,x')), small
    # next to a real difference but only ~1/m of it at m = 8
    assert abs(r["kid_mean"]) < 0.05 * cli["result"]["kid_mean"]


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
    """In-process through common.run_main, as the script runs main() (a subprocess each would cost ~5 s of imports)."""
    args, expected = {
        "missing_folder": ([folders["a"], folders["root"] / "nope", "--weights", weights], "no such"),
        "empty_folder": ([folders["a"], folders["empty"], "--weights", weights], "no images"),
        "garbage_weights": ([folders["a"], folders["b"], "--weights", bad_files / "garbage.pth"], "not a PyTorch"),
        "wrong_keys": ([folders["a"], folders["b"], "--weights", bad_files / "wrong_keys.pth"], "FID Inception"),
        "npz_no_mu": ([bad_files / "no_mu.npz", folders["b"], "--weights", weights], "'mu'"),
    }[case]
    with pytest.raises(SystemExit) as e:
        common.run_main(lambda: cf.main([*map(str, args), "--device", "cpu"]))
    assert e.value.code != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines


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
