"""data.py and demo.py: decoding, face crop, caching, demo data, batches (ranks, resume), CLI and its writes.
Tiny images made in tmp_path; CPU only."""
import errno
import io
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import data
import demo
from data import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def save(path, arr, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.asarray(arr, np.uint8)).save(path, **kw)
    return str(path)


def noise(seed, h=24, w=24):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def data_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, data.DataWarning)]


def load_recording(*args, **kw):
    """load_dataset, returning (dataset, the DataWarning messages it emitted)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = data.load_dataset(*args, verbose=False, **kw)
    return ds, data_warnings(record)


# ----------------------------------------------------------------------------- files and decoding

def test_list_images_is_recursive_sorted_and_case_insensitive(tmp_path):
    for name in ["b.JPG", "a.png", "sub/c.jpeg", "sub/deep/d.WebP", "e.TIFF"]:
        save(str(tmp_path / name), noise(0, 4, 4), format="PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "b.JPG.cat").write_text("1 1 1")
    got = [os.path.relpath(p, tmp_path) for p in data.list_images(tmp_path)]
    assert got == ["a.png", "b.JPG", "e.TIFF", "sub/c.jpeg", "sub/deep/d.WebP"]


def test_missing_empty_and_non_folder_are_user_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_dataset(str(tmp_path / "nope"), 32, cache_dir=False, verbose=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="no images .* found in .*empty"):
        data.list_images(tmp_path / "empty")
    with pytest.raises(DataError, match="is not a folder"):
        data.list_images(tmp_path / "empty" / "readme.txt")


def test_png_named_jpg_is_decoded_by_content(tmp_path):
    pixels = noise(1)
    path = save(str(tmp_path / "really_a_png.jpg"), pixels, format="PNG")
    img = data.load_image(path)
    assert img.mode == "RGB" and np.array_equal(np.asarray(img), pixels)  # lossless: decoded as PNG, not JPEG


def _mode_cases():
    la = np.zeros((2, 2, 2), np.uint8)
    la[0, 0] = (100, 255)
    la[0, 1] = (100, 0)  # fully transparent: composited on black
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 128]]], np.uint8)
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putdata([0, 1])
    return [
        ("L", Image.fromarray(np.full((2, 2), 77, np.uint8), "L"), "PNG", [[[77] * 3] * 2] * 2),
        ("LA", Image.fromarray(la, "LA"), "PNG", [[[100] * 3, [0] * 3], [[0] * 3, [0] * 3]]),
        ("RGBA", Image.fromarray(rgba, "RGBA"), "PNG", [[[200, 100, 50], [100, 50, 25]]]),
        ("P", pal, "PNG", [[[255, 0, 0], [0, 0, 255]]]),
        ("P-GIF", pal, "GIF", [[[255, 0, 0], [0, 0, 255]]]),
        ("CMYK", Image.fromarray(np.array([[[0, 0, 0, 0], [255, 0, 0, 0]]], np.uint8), "CMYK"), "TIFF",
         [[[255, 255, 255], [0, 255, 255]]]),
        ("I;16", Image.fromarray(np.array([[65535, 32896, 0]], np.uint16)), "PNG", [[[255] * 3, [128] * 3, [0] * 3]]),
    ]


@pytest.mark.parametrize("mode,img,fmt,expected", _mode_cases(), ids=[c[0] for c in _mode_cases()])
def test_other_modes_come_out_rgb_with_the_right_values(tmp_path, mode, img, fmt, expected):
    path = str(tmp_path / f"x.{fmt.lower()}")
    img.save(path, format=fmt)
    with Image.open(path) as raw:
        assert raw.mode != "RGB"  # the case really exercises a conversion
    out = data.load_image(path)
    assert out.mode == "RGB"
    got, want = np.asarray(out).astype(int), np.array(expected)
    assert got.shape == want.shape and np.abs(got - want).max() <= 1  # alpha_composite rounds


def _bad_files(folder):
    (folder / "garbage.jpg").write_bytes(b"this is not an image" * 20)
    buf = io.BytesIO()
    Image.fromarray(noise(9, 64, 64)).save(buf, format="JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])


@pytest.mark.parametrize("cache", [False, True], ids=["memory", "cached"])
def test_corrupt_and_truncated_files_are_skipped_with_one_warning(tmp_path, cache):
    folder = tmp_path / "imgs"
    good = {f"ok{i}.png": noise(i) for i in range(3)}
    for name, px in good.items():
        save(str(folder / name), px)
    _bad_files(folder)
    cache_dir = str(tmp_path / "cache") if cache else False
    ds, msgs = load_recording(str(folder), 24, cache_dir=cache_dir)
    assert len(msgs) == 1 and "skipped 2 of 5" in msgs[0] and "\n" not in msgs[0]
    assert "garbage.jpg" in msgs[0] and "truncated.jpg" in msgs[0]
    assert [os.path.basename(p) for p in ds.paths] == sorted(good)
    assert ds.images.shape == (3, 3, 24, 24)
    for i, name in enumerate(sorted(good)):  # the holes left by the bad files are gone, order kept
        assert np.array_equal(ds.images[i], good[name].transpose(2, 0, 1))
    if cache:  # a warm load says the same thing again, without decoding
        ds2, msgs2 = load_recording(str(folder), 24, cache_dir=cache_dir)
        assert msgs2 == msgs and np.array_equal(ds2.images, ds.images)


def test_folder_with_only_unreadable_files_is_user_error(tmp_path):
    _bad_files(tmp_path)
    with pytest.raises(DataError, match="none of the 2 images"):
        data.load_dataset(str(tmp_path), 32, cache_dir=str(tmp_path / "cache"), verbose=False)
    assert not os.path.exists(tmp_path / "cache") or not os.listdir(tmp_path / "cache")  # no litter


# ----------------------------------------------------------------------------- crops and resizing

def test_cat_face_box_extends_squares_and_clips():
    # bbox x 30..50, y 40..55 -> +10 px: (20, 30, 60, 65), w 40 h 35 -> square 40 from the top-left corner
    assert data.cat_face_box([(30, 40), (50, 55), (40, 45)], 200, 100) == (20, 30, 60, 70)
    # runs past the right edge: x 170..200 (clipped), y 0..60 -> side 60, slid left to fit
    assert data.cat_face_box([(180, 10), (195, 50)], 200, 100) == (140, 0, 200, 60)
    # wider than the image is tall: shrunk to the shorter side, top-left anchored
    assert data.cat_face_box([(10, 5), (90, 45)], 100, 50) == (0, 0, 50, 50)
    with pytest.raises(ValueError):
        data.cat_face_box([(500, 500), (600, 600)], 100, 100)


def test_cat_landmarks_crop_exactly_the_face(tmp_path):
    img = np.zeros((90, 120, 3), np.uint8)
    img[:] = (0, 0, 255)
    img[20:60, 50:90] = (255, 0, 0)  # the "face": a red 40x40 square at x 50..89, y 20..59
    path = save(str(tmp_path / "cats" / "00000001.png"), img)
    pts = [(60, 30), (80, 30), (70, 40), (60, 50), (80, 50), (65, 35), (75, 35), (70, 45), (70, 50)]
    with open(path + ".cat", "w") as f:  # the Cat Dataset format: count, then x y pairs (trailing space)
        f.write("9 " + " ".join(f"{x} {y}" for x, y in pts) + " ")
    red = np.broadcast_to(np.array([255, 0, 0], np.uint8), (40, 40, 3))
    assert np.array_equal(data.load_and_preprocess(path, 40), red)  # box (50, 20, 90, 60): all red, no resize
    assert not np.array_equal(data.load_and_preprocess(path, 40, cat_crop=False)[..., 2], 0)  # blue shows
    ds, _ = load_recording(str(tmp_path / "cats"), 40, cache_dir=False)
    assert np.array_equal(ds.images[0], red.transpose(2, 0, 1))


def test_preprocess_center_crops_and_resizes():
    img = np.zeros((40, 60, 3), np.uint8)
    img[:, 10:50] = noise(3, 40, 40)
    img[:, :10], img[:, 50:] = 255, 255
    out = data.preprocess(Image.fromarray(img), 40)
    assert out.dtype == np.uint8 and np.array_equal(out, img[:, 10:50])  # middle square, untouched
    small = data.preprocess(Image.fromarray(img), 16)
    assert small.shape == (16, 16, 3)
    assert abs(small.astype(float).mean() - img[:, 10:50].mean()) < 8  # antialiased: the mean survives


def test_small_images_are_upsampled_with_one_warning(tmp_path):
    for i in range(3):
        save(str(tmp_path / f"small{i}.png"), noise(i, 16, 16))
    save(str(tmp_path / "big.png"), noise(5, 64, 64))
    ds, msgs = load_recording(str(tmp_path), 32, cache_dir=False)
    assert len(msgs) == 1 and "3 of 4" in msgs[0] and "upsampled" in msgs[0]
    assert ds.images.shape == (4, 3, 32, 32)


def test_items_are_float_in_minus_one_one(tmp_path):
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, 16:] = 255
    img[0, 0] = (51, 102, 204)
    save(str(tmp_path / "a.png"), img)
    ds, _ = load_recording(str(tmp_path), 32, cache_dir=False)
    x = ds[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(x[:, 0, 0], torch.tensor([51, 102, 204]) / 127.5 - 1)
    assert (ds.name, ds.size, len(ds)) == (tmp_path.name, 32, 1)


# ----------------------------------------------------------------------------- cache

def test_cache_hits_and_a_changed_file_invalidates_it(tmp_path, monkeypatch):
    folder = tmp_path / "imgs"
    paths = [save(str(folder / f"{i}.png"), noise(i)) for i in range(3)]
    monkeypatch.setenv("GANOPT_CACHE", str(tmp_path / "cache"))  # the default cache_dir
    cold, _ = load_recording(str(folder), 24)
    files = sorted(os.listdir(tmp_path / "cache"))
    assert [os.path.splitext(f)[1] for f in files] == [".json", ".npy"]  # one array + its metadata, no temp files

    def no_decoding(*a, **k):
        raise AssertionError("a warm load must not decode images")
    monkeypatch.setattr(data, "load_cropped", no_decoding)
    warm, _ = load_recording(str(folder), 24)
    assert isinstance(warm.images, np.memmap) and np.array_equal(warm.images, cold.images)
    assert warm.paths == cold.paths == paths
    batch = next(data.InfiniteBatches(warm, 3, "cpu", flip=True))  # batches straight off the read-only memmap
    assert batch.shape == (3, 3, 24, 24) and batch.abs().max() <= 1

    monkeypatch.undo()
    new_pixels = 255 - noise(1)
    save(paths[1], new_pixels)
    st = os.stat(paths[1])
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    fresh, _ = load_recording(str(folder), 24, cache_dir=str(tmp_path / "cache"))
    assert np.array_equal(fresh.images[1], new_pixels.transpose(2, 0, 1))
    assert np.array_equal(fresh.images[0], cold.images[0])
    assert len([f for f in os.listdir(tmp_path / "cache") if f.endswith(".npy")]) == 2  # a new key
    other, _ = load_recording(str(folder), 16, cache_dir=str(tmp_path / "cache"))  # size is in the key too
    assert other.images.shape == (3, 3, 16, 16)


# ----------------------------------------------------------------------------- demo data

def test_demo_is_deterministic_and_the_domains_differ():
    cats, _ = load_recording("demo:cats:256", 32)
    again = demo.make_demo("cats", 256, 32)
    assert cats.images.dtype == np.uint8 and np.array_equal(cats.images, again)
    assert np.array_equal(demo.make_demo("cats", 8, 32), again[:8])  # demo:cats:8 is a prefix
    dogs = demo.make_demo("dogs", 256, 32)
    gap = np.abs(cats.images.mean(0) - dogs.mean(0))  # mean images, 0..255
    assert gap.mean() > 8 and gap.max() > 50
    assert cats.images.std(axis=0).mean() > 20  # and the images vary within a domain
    assert (cats.name, cats.paths, len(cats)) == ("demo-cats", [], 256)
    assert len(data.load_dataset("demo:dogs", 32, verbose=False)) == demo.DEMO_DEFAULT_N


@pytest.mark.parametrize("size", demo.DEMO_SIZES)
def test_demo_works_at_every_supported_size(size):
    for domain in demo.DEMO_DOMAINS:
        x = demo.make_demo(domain, 2, size)
        assert x.shape == (2, 3, size, size) and x.dtype == np.uint8 and x.std() > 20


def test_demo_is_simple_a_plain_background_and_few_fur_colours():
    """The demo must be easy for a small GAN on a CPU: a near-plain background, a handful of fur colours."""
    for domain in demo.DEMO_DOMAINS:
        x = demo.make_demo(domain, 256, 32).astype(int)
        corners = x[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]  # (n, 3, 4): always background
        assert np.ptp(corners, axis=0).max() <= 25 and np.ptp(corners, axis=2).max() <= 2
        fur = x[:, :, 11, 16] / 255  # the forehead: one of three fur colours, a little lighter or darker
        palette = demo._FUR[domain]
        nearest = [np.argmin([np.ptp(f / p) for p in palette]) for f in fur]
        assert all(np.ptp(f / palette[k]) < 0.03 for f, k in zip(fur, nearest)) and set(nearest) == {0, 1, 2}


def test_bad_specs_and_sizes_are_user_errors():
    with pytest.raises(DataError, match="demo:cats, demo:dogs"):
        data.load_dataset("demo:horses", 32)
    for spec in ["demo:cats:0", "demo:cats:many", "demo:cats:4:5"]:
        with pytest.raises(DataError, match="demo"):
            data.load_dataset(spec, 32)
    for size in [0, -64, 4, 4096, 64.0, "64", True]:
        with pytest.raises(DataError, match="size"):
            data.load_dataset("demo:cats:4", size)


# ----------------------------------------------------------------------------- batches

def test_infinite_batches_resume_bitwise_with_flips():
    ds = data.load_dataset("demo:dogs:10", 16, verbose=False)
    run = data.InfiniteBatches(ds, 4, "cpu", seed=7, flip=True)
    for _ in range(3):
        next(run)
    state = run.state_dict()
    assert all(type(v) is int for v in state.values())
    expected = [next(run) for _ in range(5)]  # crosses two pass boundaries (10 images, 2 batches per pass)

    resumed = data.InfiniteBatches(ds, 4, "cpu", seed=0, flip=True)
    resumed.load_state_dict(state)  # the seed comes with the state
    for want in expected:
        assert torch.equal(next(resumed), want)

    # the flips are real: every sample is an image or its mirror, and some are mirrored
    images = torch.stack([ds[i] for i in range(len(ds))])
    flipped = 0
    for batch in expected:
        assert batch.shape == (4, 3, 16, 16) and batch.dtype == torch.float32
        for x in batch:
            plain = (images == x).flatten(1).all(1).any()
            mirrored = (images.flip(-1) == x).flatten(1).all(1).any()
            assert plain or mirrored
            flipped += int(mirrored and not plain)
    assert flipped > 0


def test_infinite_batches_passes_are_permutations():
    ds = data.load_dataset("demo:cats:10", 16, verbose=False)
    ids = {ds.images[i].tobytes(): i for i in range(len(ds))}
    it = data.InfiniteBatches(ds, 4, "cpu", seed=3)

    def index(batch):
        u8 = ((batch + 1) * 127.5).round().to(torch.uint8).numpy()
        return [ids[x.tobytes()] for x in u8]

    passes = [[i for _ in range(2) for i in index(next(it))] for _ in range(3)]
    for p in passes:  # 8 distinct images per pass: the 2 left over are dropped, not carried over
        assert len(set(p)) == 8
    assert passes[0] != passes[1]
    other = data.InfiniteBatches(ds, 4, "cpu", seed=4)
    assert index(next(other)) + index(next(other)) != passes[0]
    with pytest.raises(DataError, match="batch size 11"):
        data.InfiniteBatches(ds, 11, "cpu")


def ranks(ds, world_size, batch_size, **kw):
    return [data.InfiniteBatches(ds, batch_size, "cpu", rank=r, world_size=world_size, **kw) for r in range(world_size)]


def as_bytes(batch):
    return {x.numpy().tobytes() for x in batch}


def test_ranks_draw_disjoint_shares_whose_union_is_the_one_rank_pass():
    ds = data.load_dataset("demo:cats:12", 16, verbose=False)
    one = data.InfiniteBatches(ds, 12, "cpu", seed=5, flip=True)
    two, three = ranks(ds, 2, 6, seed=5, flip=True), ranks(ds, 3, 2, seed=5, flip=True)
    for _ in range(3):  # three passes
        whole = as_bytes(next(one))
        halves = [as_bytes(next(r)) for r in two]
        thirds = [set.union(*(as_bytes(next(r)) for _ in range(2))) for r in three]
        assert len(whole) == 12 and halves[0].isdisjoint(halves[1]) and halves[0] | halves[1] == whole
        assert sum(map(len, thirds)) == 12 and set.union(*thirds) == whole  # flips included: the same draws
    odd = ranks(data.load_dataset("demo:cats:11", 16, verbose=False), 2, 5)
    assert [r.share for r in odd] == [5, 5]  # 11 images: every rank gets 5, so all ranks make the same steps
    with pytest.raises(DataError, match="batch size 7 must be between 1 and 6 .12 images .* shared by 2 ranks"):
        data.InfiniteBatches(ds, 7, "cpu", rank=0, world_size=2)
    for rank, world in [(2, 2), (-1, 2), (0, 0)]:
        with pytest.raises(DataError, match="rank"):
            data.InfiniteBatches(ds, 2, "cpu", rank=rank, world_size=world)


def test_one_rank_keeps_the_order_and_state_of_before():
    """world_size=1 draws exactly what the single-process iterator drew, and loads its states (no world_size)."""
    ds = data.load_dataset("demo:dogs:10", 16, verbose=False)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(data._mix(7, 0))).numpy()
    flips = (torch.rand(10, generator=torch.Generator().manual_seed(data._mix(7, 0, 1))) < 0.5).numpy()
    x = np.array(ds.images[perm[:4]])
    x[flips[:4]] = x[flips[:4], :, :, ::-1]
    first = next(data.InfiniteBatches(ds, 4, "cpu", seed=7, flip=True))
    assert torch.equal(first, data.uint8_to_float(torch.from_numpy(x)))
    it = data.InfiniteBatches(ds, 4, "cpu")
    it.load_state_dict({"seed": 7, "epoch": 0, "pos": 4, "n": 10})  # a state saved before ranks existed
    assert torch.equal(next(it), data.uint8_to_float(torch.from_numpy(ds.images[perm[4:8]])))


def test_rank_resume_is_exact_and_a_state_moves_to_another_world_size():
    ds = data.load_dataset("demo:cats:24", 16, verbose=False)
    run = ranks(ds, 2, 4, seed=3, flip=True)[1]
    for _ in range(2):
        next(run)
    state = run.state_dict()
    expected = [next(run) for _ in range(4)]  # 3 batches per pass and rank: crosses a pass boundary
    resumed = data.InfiniteBatches(ds, 4, "cpu", rank=1, world_size=2, flip=True)
    resumed.load_state_dict(state)
    assert all(torch.equal(next(resumed), want) for want in expected)

    single = data.InfiniteBatches(ds, 4, "cpu", flip=True)
    single.load_state_dict(state)  # saved by 2 ranks at 8 of their 12 images each: the same pass, 16 of 24 done
    assert (single.epoch, single.pos) == (0, 16)
    quad = ranks(ds, 4, 2, flip=True)[3]
    quad.load_state_dict(state)
    assert (quad.epoch, quad.pos) == (0, 4) and next(quad).shape == (2, 3, 16, 16)


# ----------------------------------------------------------------------------- command line

def start_cli(*args):
    return subprocess.Popen([sys.executable, os.path.join(ROOT, "data.py"), *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


IMPORTS = """
import sys, data
assert not {"common", "demo"} & set(sys.modules), "data.py imports only what real data needs"
data.load_dataset("demo:cats:2", 16, verbose=False)
assert "demo" in sys.modules
"""


def test_cli_prepare_writes_pngs_and_refuses_a_bad_path(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for name in ["b.jpg", "a.png", "sub/c.png"]:
        save(str(src / name), noise(len(name), 40, 30), format="PNG")  # b.jpg is really a PNG
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    (tmp_path / "file").write_text("a regular file, so nothing can be created below it (tests run as root)")
    # all at once: each process spends most of its time importing torch
    good = start_cli("prepare", str(src), str(dst), "--size", "16")
    bad = start_cli("prepare", str(tmp_path / "missing"), str(tmp_path / "out"), "--size", "16")
    unwritable = [start_cli("prepare", str(src), str(tmp_path / "file" / "out"), "--size", "16"),
                  start_cli("demo", str(tmp_path / "file" / "demo"), "--n", "2")]
    imports = subprocess.Popen([sys.executable, "-c", IMPORTS], cwd=ROOT, text=True, stderr=subprocess.PIPE)
    (_, good_err), (_, bad_err) = good.communicate(timeout=120), bad.communicate(timeout=120)
    for p in unwritable:
        err = p.communicate(timeout=120)[1].strip()
        assert p.returncode == 2 and err.count("\n") == 0, err
        assert err.startswith("error: cannot write to the output folder") and "Not a directory" in err
    assert imports.wait(timeout=120) == 0, imports.stderr.read()

    assert good.returncode == 0, good_err
    assert "warning: skipped 1 of 4" in good_err and "broken.jpg" in good_err
    # sorted source order: a.png, b.jpg, broken.jpg (skipped: its number is unused), sub/c.png
    assert sorted(os.listdir(dst)) == ["00000.png", "00001.png", "00003.png", "sources.txt"]
    assert (dst / "sources.txt").read_text().splitlines()[1] == "00001.png\tb.jpg"
    for f in ["00000.png", "00001.png", "00003.png"]:
        with Image.open(dst / f) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (16, 16))
    expected = data.load_and_preprocess(str(src / "sub" / "c.png"), 16)
    assert np.array_equal(np.asarray(Image.open(dst / "00003.png")), expected)

    assert bad.returncode == 2 and "Traceback" not in bad_err
    lines = bad_err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0], bad_err
    assert not (tmp_path / "out").exists()  # nothing created for a bad source

    with pytest.raises(DataError, match="not empty"):  # same code path in-process: refuses to clobber
        data.main(["prepare", str(src), str(dst), "--size", "16"])
    with pytest.warns(data.DataWarning, match="broken.jpg"):
        data.main(["prepare", str(src), str(dst), "--size", "8", "--overwrite", "--no-cat-crop"])
    assert sorted(os.listdir(dst)) == ["00000.png", "00001.png", "00003.png", "sources.txt"]
    with Image.open(dst / "00000.png") as im:
        assert im.size == (8, 8)


def test_cli_demo_and_info_in_process(tmp_path, capsys):
    data.main(["demo", str(tmp_path / "d"), "--domain", "dogs", "--n", "3", "--size", "32"])
    names = sorted(os.listdir(tmp_path / "d"))
    assert names == ["00000.png", "00001.png", "00002.png"]
    want = demo.make_demo("dogs", 3, 32)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "d" / names[2])), want[2].transpose(1, 2, 0))
    data.main(["info", str(tmp_path / "d"), "--size", "32", "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert "3 at 32x32" in out and "mean RGB" in out
    with pytest.raises(DataError, match="not empty"):
        data.main(["demo", str(tmp_path / "d"), "--n", "2"])


def test_outputs_are_checked_before_any_work_and_refusals_leave_nothing(tmp_path, monkeypatch):
    src = tmp_path / "src"
    save(str(src / "a.png"), noise(0))
    monkeypatch.setattr(data, "load_cropped", lambda *a: pytest.fail("decoded before checking the output"))
    monkeypatch.setattr(demo, "make_demo", lambda *a: pytest.fail("rendered before checking the output"))

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(data.tempfile, "TemporaryFile", read_only)
    for argv in (["prepare", str(src), "OUT", "--size", "16"], ["demo", "OUT"]):
        out = tmp_path / "new" / "deeper" / "out"
        with pytest.raises(DataError, match=f"^cannot write to the output folder {out}: Read-only file system$"):
            data.main([str(out) if a == "OUT" else a for a in argv])
        assert sorted(os.listdir(tmp_path)) == ["src"]  # the folders it made are gone again
    (tmp_path / "kept").mkdir()
    with pytest.raises(DataError, match="Read-only"):
        data.main(["demo", str(tmp_path / "kept")])
    assert (tmp_path / "kept").is_dir()  # a folder that was there stays


def test_a_failed_write_is_one_error_naming_the_file_and_leaves_no_temp_files(tmp_path, monkeypatch):
    src = tmp_path / "src"
    for i in range(3):
        save(str(src / f"{i}.png"), noise(i))

    def disk_full(self, fp, *args, **kwargs):
        fp.write(b"half a PNG")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Image.Image, "save", disk_full)
    with pytest.raises(DataError, match=r"^cannot write .*out.0000\d\.png: No space left on device$"):
        data.main(["prepare", str(src), str(tmp_path / "out"), "--size", "16"])
    assert not (tmp_path / "out").exists()  # made by the failed run, so removed
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "00000.png").write_bytes(b"an earlier result")
    with pytest.raises(DataError, match="No space left on device"):
        data.main(["demo", str(tmp_path / "old"), "--n", "3", "--size", "16", "--overwrite"])
    # no temp file or half-written PNG left behind, and the earlier result is still there
    assert os.listdir(tmp_path / "old") == ["00000.png"]
    assert (tmp_path / "old" / "00000.png").read_bytes() == b"an earlier result"
    monkeypatch.undo()

    with warnings.catch_warnings(record=True) as record:  # an unwritable cache only costs time
        warnings.simplefilter("always")
        ds = data.load_dataset(str(src), 16, cache_dir=str(src / "0.png" / "cache"), verbose=False)
    msgs = data_warnings(record)
    assert ds.cache_file is None and len(ds) == 3
    assert np.array_equal(ds.images[2], data.load_and_preprocess(str(src / "2.png"), 16).transpose(2, 0, 1))
    assert len(msgs) == 1 and "\n" not in msgs[0] and msgs[0].startswith("cannot write") and "uncached" in msgs[0]
