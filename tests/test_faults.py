"""Fault injection: SIGKILL at random moments and during writes, SIGTERM/SIGINT, a full disk, non-finite losses,
and a table of bad invocations of every user script and experiments.sh.

Training runs are tiny (16x16, width 0.125, 2 iterations per epoch) and start as forked children of this process
(`start`): torch is imported already, so a start costs ~0.3 s instead of a Python start-up, and the child is a
real process that SIGKILL, signals and resource limits act on. Bad invocations run in this process through each
script's own command-line entry point (runpy of the file as __main__, so its own error wrapper is what is tested).
"""
import collections
import contextlib
import errno
import glob
import hashlib
import io
import json
import os
import random
import re
import resource
import runpy
import shutil
import signal
import stat
import struct
import subprocess
import sys
import time
import traceback
import warnings
import zlib

import numpy as np
import pytest
import torch
import torchvision.utils  # noqa: F401  (imported here once: the forked children render snapshots with it)
from PIL import Image, PngImagePlugin  # noqa: F401  (same)

import arch
import compute_fid
import data
import harness
import train_kd
import train_transfer
import train_wgan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--img-size", "16", "--width", "0.125", "--nz", "8", "--batch-size", "4", "--iters-per-epoch", "2",
        "--n-critic", "1", "--data", "demo:cats:16", "--device", "cpu", "--threads", "1", "--precision", "fp32",
        "--save-every", "1", "--snapshot-every", "1", "--ema", "50"]
EPOCHS = 40  # of the reference run; the kill chain needs room for 12 kills that each make progress
N_KILLS = 12
TMP_FILE = re.compile(r".+\.tmp\d+$")  # what harness.atomic_write leaves when its process is killed
TALLY = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def summary_line(request):
    """One line at the end of the module: what was tried and what held."""
    yield
    t = TALLY
    line = (f"faults: {t['bad_tried']} bad inputs tried / {t['bad_clean']} clean; {t['kills']} kills survived "
            f"({t['kills_in_writes']} during writes) / {t['bitwise']} resumes bitwise equal "
            f"(of {t['compared']} compared)")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n{line}", flush=True)


# ----------------------------------------------------------------------------- child processes

def start(argv, log, patch=None, limit_file_size=None, main=None):
    """Fork a child that runs `train_wgan.py ARGV` (harness.run_main, as its __main__ does), or `main()`; stdout
    and stderr go to LOG.out / LOG.err. `patch()` runs in the child first (fault injection); `limit_file_size`:
    RLIMIT_FSIZE in bytes. Returns the child's pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        torch.set_num_threads(1)  # OpenMP threads do not survive fork: a parallel region would hang the child
        os.dup2(os.open(log + ".out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 1)
        os.dup2(os.open(log + ".err", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if limit_file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))
        if patch:
            patch()
        main() if main else harness.run_main(lambda: train_wgan.main(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 70
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def reap(pid, timeout=60):
    """Wait for the child; its exit status (negative: the signal that killed it)."""
    deadline = time.time() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} still running after {timeout} s")
        time.sleep(0.002)


def run_child(argv, log, **kw):
    """Start, wait; (exit status, stdout, stderr)."""
    code = reap(start(argv, log, **kw))
    return code, read(log + ".out"), read(log + ".err")


def read(path):
    with open(path, errors="replace") as f:
        return f.read()


def slow_writes(delay=0.03):
    """Child patch: every harness.atomic_write leaves half of its temp file on disk for `delay` s before writing
    the rest, so that kills land in the middle of writes (the result is the same file)."""
    real = harness.atomic_write

    def atomic_write(path, write):
        def slowly(tmp):
            write(tmp)
            with open(tmp, "rb") as f:
                full = f.read()
            with open(tmp, "wb") as f:
                f.write(full[: len(full) // 2])
            time.sleep(delay)
            with open(tmp, "wb") as f:
                f.write(full)
        return real(path, slowly)
    harness.atomic_write = atomic_write


def on_call(module, name, number, action):
    """Child patch: run `action()` at the start of the `number`-th call of module.name."""
    real, calls = getattr(module, name), [0]

    def wrapper(*args, **kwargs):
        calls[0] += 1
        if calls[0] == number:
            action()
        return real(*args, **kwargs)
    setattr(module, name, wrapper)


def send(sig):
    return lambda: os.kill(os.getpid(), sig)


# ----------------------------------------------------------------------------- checks

def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def tree(root):
    """Every folder and every file's sha256 under `root` (links and FIFOs by what they are: never opened)."""
    state = {}
    for folder, dirs, files in os.walk(root):
        for d in dirs:
            state[os.path.relpath(os.path.join(folder, d), root) + "/"] = "folder"
        for f in files:
            path = os.path.join(folder, f)
            mode = os.lstat(path).st_mode
            state[os.path.relpath(path, root)] = (sha256(path) if stat.S_ISREG(mode) else f"link to {os.readlink(path)}"
                                                 if stat.S_ISLNK(mode) else f"special {stat.S_IFMT(mode)}")
    return state


def temp_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs if TMP_FILE.match(f))


def tensors(obj, prefix=""):
    """Every tensor in a (nested) checkpoint, by path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in tensors(value, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in tensors(value, f"{prefix}/{i}").items()}
    return {}


def assert_same_training_state(path, ref_path):
    """G, D, G_ema and both optimizers of two checkpoints: torch.equal on every tensor, same epoch and step."""
    a, b = arch.read_file(path), arch.read_file(ref_path)
    assert (a["epoch"], a["iteration"], a["step"]) == (b["epoch"], b["iteration"], b["step"])
    for key in ("G", "D", "G_ema", "opt_g", "opt_d"):
        ta, tb = tensors(a[key]), tensors(b[key])
        assert ta.keys() == tb.keys() and ta, key
        different = [k for k in ta if not torch.equal(ta[k], tb[k])]
        assert not different, f"{path} differs from the uninterrupted run ({ref_path}) in {key}: {different[:3]}"


def assert_bitwise(path, ref_path):
    """assert_same_training_state, counted for the summary line."""
    TALLY["compared"] += 1
    assert_same_training_state(path, ref_path)
    TALLY["bitwise"] += 1


def logged_losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [(r["epoch"], r["d_loss"], r["wasserstein"], r["gp"], r["g_loss"]) for r in map(json.loads, f)]


def ckpt_epoch(path):
    return arch.read_file(path)["epoch"] if os.path.exists(path) else None


def last_line(err):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def assert_clean_error(code, err, prog, expected_code=2):
    """The house rule: no traceback, the last line is the one error line, the exit status says so."""
    assert "Traceback" not in err, err
    line = last_line(err)
    assert re.match(rf"({re.escape(prog)}( \w+)?: )?error: \S", line), f"last stderr line is not an error line: {err!r}"
    assert sum(bool(re.match(rf"({re.escape(prog)}( \w+)?: )?error:", ln)) for ln in err.splitlines()) == 1, err
    assert code == expected_code, f"exit status {code}, expected {expected_code}; stderr: {err!r}"


def call(function):
    """Run `function()` in this process as a command line would: (exit status, stdout, stderr). An uncaught
    exception is what Python would print: a traceback and status 1. Global state the scripts set (signal
    handlers, torch threads, warning hooks) is put back."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    threads, formatwarning = torch.get_num_threads(), warnings.formatwarning
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            function()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            err.write(e.code + "\n")
    except BaseException:
        err.write(traceback.format_exc())
        code = 1
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        torch.set_num_threads(threads)
        warnings.formatwarning = formatwarning
    return code, out.getvalue(), err.getvalue()


def cli(script, argv):
    """`python SCRIPT ARGV`, in this process: the file runs as __main__ (runpy), its own error handling included."""
    def run():
        saved = sys.argv
        sys.argv = [os.path.join(ROOT, script)] + argv
        try:
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        finally:
            sys.argv = saved
    return call(run)


# ----------------------------------------------------------------------------- the uninterrupted reference run

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted EPOCHS-epoch run (out/) and a copy of its checkpoint after every epoch (epoch_NNN.pt)."""
    root = tmp_path_factory.mktemp("reference")
    out, copies = root / "out", root / "ckpts"
    copies.mkdir()

    def keep_every_checkpoint():
        real = harness.atomic_write

        def atomic_write(path, write):
            real(path, write)
            if os.path.basename(path) == "ckpt.pt":
                shutil.copy(path, copies / f"epoch_{torch.load(path, weights_only=True)['epoch']:03d}.pt")
        harness.atomic_write = atomic_write

    code, _, err = run_child(TINY + ["--epochs", str(EPOCHS), "--out", str(out)], str(root / "log"),
                             patch=keep_every_checkpoint)
    assert code == 0, err
    assert len(os.listdir(copies)) == EPOCHS
    return {"out": str(out), "ckpt": lambda epoch: str(copies / f"epoch_{epoch:03d}.pt"), "root": str(root)}


def run_from(reference, tmp_path, epoch, name="out"):
    """A fresh run folder holding only the reference run's checkpoint after `epoch` (what --resume needs)."""
    out = tmp_path / name
    out.mkdir()
    shutil.copy(reference["ckpt"](epoch), out / "ckpt.pt")
    return str(out)


# ----------------------------------------------------------------------------- SIGKILL at random moments

def test_sigkill_at_random_moments_and_during_writes_then_resume_is_bitwise_equal(reference, tmp_path):
    out, log = str(tmp_path / "out"), str(tmp_path / "log")
    argv = TINY + ["--epochs", str(EPOCHS), "--out", out, "--resume"]
    ckpt = os.path.join(out, "ckpt.pt")
    rng = random.Random(12)
    targets = ["ckpt.pt", "snapshots/epoch_*.png", "metrics.jsonl", "generator.pt", "timeline.png"]
    newest = None  # epoch of the newest complete checkpoint on disk

    def started_right(stdout):  # from the newest complete checkpoint (2 steps per epoch), or afresh if none
        if newest is None:
            return "resumed" not in stdout and f"epoch 1/{EPOCHS}" in stdout
        return f"resumed {ckpt} at epoch {newest} + 0 iterations (step {2 * newest})" in stdout

    for attempt in range(N_KILLS):
        inode = os.stat(ckpt).st_ino if os.path.exists(ckpt) else None
        pid = start(argv, f"{log}{attempt}", patch=slow_writes)
        t0 = time.time()

        def wait_for(condition, what):
            while not condition():
                assert time.time() - t0 < 30, f"attempt {attempt}: no {what} after 30 s"
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pytest.fail(f"attempt {attempt} ended before {what}: {read(f'{log}{attempt}.err')}")
                time.sleep(0.001)

        if attempt == 0:  # anywhere in start-up or the first epoch
            time.sleep(rng.uniform(0, 0.6))
        elif attempt == 1:  # inside a checkpoint write (the first one, if attempt 0 wrote none)
            wait_for(lambda: os.path.exists(f"{ckpt}.tmp{pid}"), "checkpoint write")
        else:  # after this attempt has written a checkpoint (progress), at a random moment or inside a write
            wait_for(lambda: os.path.exists(ckpt) and os.stat(ckpt).st_ino != inode, "new checkpoint")
            if attempt % 2:
                pattern = os.path.join(out, f"{targets[attempt // 2 % len(targets)]}.tmp{pid}")
                wait_for(lambda: glob.glob(pattern), pattern)
            else:
                time.sleep(rng.uniform(0, 0.25))
        os.kill(pid, signal.SIGKILL)
        code = reap(pid)
        stdout, stderr = read(f"{log}{attempt}.out"), read(f"{log}{attempt}.err")
        assert code == -signal.SIGKILL, f"attempt {attempt} ended with {code} before the kill: {stderr}"
        assert "Traceback" not in stderr, stderr
        if attempt > 0:  # (attempts 1.. always get past the start before they are killed)
            assert started_right(stdout), f"after kill {attempt} the run did not continue from epoch {newest}: {stdout}"
            TALLY["kills"] += 1  # the previous kill is survived
        TALLY["kills_in_writes"] += any(name.endswith(f".tmp{pid}") for name in temp_files(out))
        # a kill leaves a complete checkpoint, the uninterrupted run's at the same epoch
        epoch = ckpt_epoch(ckpt)
        if epoch is not None and newest is not None and epoch > newest:
            assert_bitwise(ckpt, reference["ckpt"](epoch))  # written after a resume
        elif epoch is not None:
            assert_same_training_state(ckpt, reference["ckpt"](epoch))
        newest = epoch

    code, stdout, stderr = run_child(argv, f"{log}_final")
    assert code == 0, stderr
    assert started_right(stdout), stdout
    TALLY["kills"] += 1
    assert_bitwise(ckpt, os.path.join(reference["out"], "ckpt.pt"))
    generator, ref_generator = (arch.read_file(os.path.join(folder, "generator.pt")) for folder in (out, reference["out"]))
    for key in ("state_dict", "ema_state_dict"):
        assert all(torch.equal(v, ref_generator[key][k]) for k, v in generator[key].items()), key
    assert logged_losses(out) == logged_losses(reference["out"])  # every epoch once, with the same losses
    assert TALLY["kills_in_writes"] >= N_KILLS // 2 - 1, "too few kills landed inside writes to test them"
    # nothing half-written stays behind, anywhere in the run folder
    assert temp_files(out) == [], f"temp files of killed writers remain: {temp_files(out)}"


def test_kill_during_the_first_checkpoint_write_then_resume_leaves_no_temp_file(reference, tmp_path):
    """No checkpoint yet, so --resume starts afresh: the killed writer's temp file must still go."""
    out, log = str(tmp_path / "out"), str(tmp_path / "log")
    argv = TINY + ["--epochs", "2", "--out", out, "--resume"]
    pid = start(argv, log + "0", patch=slow_writes)
    t0 = time.time()
    while not os.path.exists(os.path.join(out, f"ckpt.pt.tmp{pid}")):
        assert time.time() - t0 < 30 and not os.waitpid(pid, os.WNOHANG)[0], read(log + "0.err")
        time.sleep(0.001)
    os.kill(pid, signal.SIGKILL)
    assert reap(pid) == -signal.SIGKILL
    assert not os.path.exists(os.path.join(out, "ckpt.pt"))
    code, stdout, stderr = run_child(argv, log + "1")
    assert code == 0, stderr
    assert_bitwise(os.path.join(out, "ckpt.pt"), reference["ckpt"](2))
    assert temp_files(out) == [], f"temp files of the killed writer remain after a fresh --resume: {temp_files(out)}"


def test_killed_createsamples_leaves_no_partial_folder_after_a_rerun(reference, tmp_path):
    import createsamples
    out, log = str(tmp_path / "samples"), str(tmp_path / "log")
    argv = ["--model", os.path.join(reference["out"], "generator.pt"), "--n", "40", "--device", "cpu",
            "--precision", "fp32", "--out", out]

    def slow_pngs():
        real = createsamples._save_png
        createsamples._save_png = lambda image, path: (real(image, path), time.sleep(0.02))
    pid = start(None, log + "0", patch=slow_pngs, main=lambda: createsamples.cli(argv))
    t0 = time.time()
    while sum(len(os.listdir(p)) for p in glob.glob(str(tmp_path / ".samples.partial-*"))) < 3:
        assert time.time() - t0 < 30 and not os.waitpid(pid, os.WNOHANG)[0], read(log + "0.err")
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    assert reap(pid) == -signal.SIGKILL
    assert not os.path.exists(out)  # never a folder that looks complete
    code = reap(start(None, log + "1", main=lambda: createsamples.cli(argv)))
    assert code == 0, read(log + "1.err")
    assert len(os.listdir(out)) == 40
    left = sorted(os.listdir(tmp_path))
    assert [n for n in left if ".partial-" in n] == [], f"the killed run's partial folder remains: {left}"


# ----------------------------------------------------------------------------- SIGTERM / SIGINT

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_mid_epoch_and_resume_is_bitwise_equal(reference, tmp_path, sig):
    out, log = str(tmp_path / "out"), str(tmp_path / "log")
    argv = TINY + ["--epochs", "3", "--out", out]
    # the signal arrives during step 3: epoch 2, iteration 1 of 2
    code, stdout, stderr = run_child(argv, log + "0", patch=lambda: on_call(train_wgan, "critic_step", 3, send(sig)))
    assert code == 128 + sig, stderr
    assert "Traceback" not in stderr
    assert f"{sig.name}: finishing the step, then checkpointing" in stderr
    assert last_line(stderr).startswith("stopped at epoch 2, iteration 1 (step 3)"), stderr
    state = arch.read_file(os.path.join(out, "ckpt.pt"))
    assert (state["epoch"], state["iteration"], state["step"]) == (1, 1, 3)  # mid-epoch
    assert temp_files(out) == []
    code, stdout, stderr = run_child(argv + ["--resume"], log + "1")
    assert code == 0, stderr
    assert "at epoch 1 + 1 iterations (step 3)" in stdout
    assert_bitwise(os.path.join(out, "ckpt.pt"), reference["ckpt"](3))


def test_second_sigterm_exits_at_once_without_a_checkpoint(reference, tmp_path):
    out, log = run_from(reference, tmp_path, 1), str(tmp_path / "log")
    before = sha256(os.path.join(out, "ckpt.pt"))
    argv = TINY + ["--epochs", "3", "--out", out, "--resume"]

    def two_signals():  # the first in the critic step, the second in the generator step of the same iteration
        on_call(train_wgan, "critic_step", 1, send(signal.SIGTERM))
        on_call(train_wgan, "generator_step", 1, send(signal.SIGTERM))
    code, stdout, stderr = run_child(argv, log + "0", patch=two_signals)
    assert code == 143, stderr
    assert "SIGTERM again: exiting without a checkpoint" in stderr
    assert "stopped at" not in stderr and "Traceback" not in stderr  # it did not finish the step
    assert sha256(os.path.join(out, "ckpt.pt")) == before
    code, stdout, stderr = run_child(argv, log + "1")
    assert code == 0, stderr
    assert_bitwise(os.path.join(out, "ckpt.pt"), reference["ckpt"](3))


# ----------------------------------------------------------------------------- a full disk

def test_file_size_limit_at_a_checkpoint_write_keeps_the_previous_checkpoint(reference, tmp_path):
    out, log = run_from(reference, tmp_path, 1), str(tmp_path / "log")
    ckpt = os.path.join(out, "ckpt.pt")
    before = sha256(ckpt)
    # more than metrics.jsonl, the snapshot and timeline PNGs need, less than a checkpoint: EFBIG at ckpt.pt
    limit = os.path.getsize(ckpt) // 2
    code, stdout, stderr = run_child(TINY + ["--epochs", "3", "--out", out, "--resume"], log, limit_file_size=limit)
    assert_clean_error(code, stderr, "train_wgan.py")
    assert last_line(stderr).startswith(f"error: cannot write {ckpt}: "), stderr
    assert sha256(ckpt) == before
    assert arch.read_file(ckpt)["epoch"] == 1
    assert temp_files(out) == []


def test_disk_full_in_the_middle_of_a_checkpoint_write(reference, tmp_path, monkeypatch):
    out = run_from(reference, tmp_path, 1)
    ckpt = os.path.join(out, "ckpt.pt")
    before = sha256(ckpt)
    real_save = torch.save

    def full_disk_save(obj, f, *args, **kwargs):  # half the file reaches the disk, then ENOSPC
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as out_file:
            out_file.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f)
    monkeypatch.setattr(harness.torch, "save", full_disk_save)
    code, _, stderr = call(lambda: harness.run_main(
        lambda: train_wgan.main(TINY + ["--epochs", "3", "--out", out, "--resume"])))
    assert_clean_error(code, stderr, "train_wgan.py")
    assert last_line(stderr) == f"error: cannot write {ckpt}: No space left on device"
    assert sha256(ckpt) == before
    assert temp_files(out) == []


def test_disk_full_while_writing_samples_leaves_no_folder_and_keeps_old_samples(world, tmp_path, monkeypatch):
    import createsamples
    real, calls = createsamples._save_png, [0]

    def save_png(image, path):  # the third image of each run meets a full disk, half written
        calls[0] += 1
        if calls[0] % 5 == 3:
            with open(path, "wb") as f:
                f.write(b"\x89PNG\r\n")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        real(image, path)
    monkeypatch.setattr(createsamples, "_save_png", save_png)
    argv = ["--model", f"{world}/run", "--n", "5", "--device", "cpu", "--precision", "fp32"]
    code, _, stderr = call(lambda: createsamples.cli(argv + ["--out", str(tmp_path / "new" / "samples")]))
    assert_clean_error(code, stderr, "createsamples.py")
    assert last_line(stderr).endswith("No space left on device"), stderr
    assert not glob.glob(str(tmp_path / "new" / "*")) and not glob.glob(str(tmp_path / "new" / ".*")), \
        os.listdir(tmp_path / "new")
    old = tmp_path / "old"
    shutil.copytree(f"{world}/samples_full", old / "samples")
    before = tree(old)
    code, _, stderr = call(lambda: createsamples.cli(argv + ["--out", str(old / "samples"), "--overwrite"]))
    assert_clean_error(code, stderr, "createsamples.py")
    assert tree(old) == before, "--overwrite with a full disk changed the old samples or left a partial folder"


# ----------------------------------------------------------------------------- non-finite losses

@pytest.mark.parametrize("resume_from, epoch, step", [(1, 2, 3), (None, 1, 1)],
                         ids=["after-a-checkpoint", "before-any-checkpoint"])
def test_nan_loss_stops_with_one_line_naming_epoch_and_step(reference, tmp_path, monkeypatch, resume_from, epoch, step):
    out = run_from(reference, tmp_path, resume_from) if resume_from else str(tmp_path / "out")
    ckpt = os.path.join(out, "ckpt.pt")
    before = sha256(ckpt) if resume_from else None
    real, calls = train_wgan.gradient_penalty, [0]

    def gradient_penalty(*args, **kwargs):  # one call per step (--n-critic 1): NaN in this process' first step
        calls[0] += 1
        gp = real(*args, **kwargs)
        return gp * float("nan") if calls[0] == 1 else gp
    monkeypatch.setattr(train_wgan, "gradient_penalty", gradient_penalty)
    code, _, stderr = call(lambda: harness.run_main(
        lambda: train_wgan.main(TINY + ["--epochs", "3", "--out", out] + (["--resume"] if resume_from else []))))
    assert_clean_error(code, stderr, "train_wgan.py")
    line = last_line(stderr)
    assert line.startswith(f"error: non-finite loss at epoch {epoch}, step {step} "), stderr
    if resume_from:
        assert sha256(ckpt) == before  # the last good checkpoint
        assert "ckpt.pt is kept" in line
    else:  # nothing to keep: the line must not send the user to a checkpoint that does not exist
        assert not os.path.exists(ckpt)
        assert "ckpt.pt is kept" not in line, f"the error line names a checkpoint that was never written: {line}"
    assert temp_files(out) == []


def test_lower_lr_after_a_nan_stop_takes_effect_on_resume(reference, tmp_path):
    """The non-finite-loss line says "lower --lr": resuming with a lower --lr must train with it."""
    out = run_from(reference, tmp_path, 1)
    code, _, stderr = call(lambda: harness.run_main(
        lambda: train_wgan.main(TINY + ["--epochs", "2", "--out", out, "--resume", "--lr", "1e-05"])))
    assert code == 0, stderr
    state = arch.read_file(os.path.join(out, "ckpt.pt"))
    used = {key: state[key]["param_groups"][0]["lr"] for key in ("opt_g", "opt_d")}
    assert used == {"opt_g": 1e-05, "opt_d": 1e-05}, f"--lr 1e-05 given with --resume, but training used {used}"


# ----------------------------------------------------------------------------- bad invocations

def bomb_png(path, side=20000):
    """A small PNG whose header claims side x side pixels: over PIL's decompression-bomb limit."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    rows = zlib.compress(b"\0" * (side + 1) * 4)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
                + chunk(b"IDAT", rows) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def world(reference, tmp_path_factory):
    """The files the bad invocations point at (paths as {w}/...), all hashed before and after each one."""
    w = tmp_path_factory.mktemp("world")
    shutil.copytree(reference["out"], w / "run")
    shutil.copytree(reference["out"], w / "other")
    shutil.copytree(reference["out"], w / "nockpt", ignore=shutil.ignore_patterns("ckpt.pt"))  # removed by its user
    (w / "empty.pt").write_bytes(b"")
    (w / "notes.txt").write_text("not a checkpoint\n")
    (w / "afile").write_text("a regular file where a folder is expected\n")
    (w / "fake.npz").write_text("not numpy\n")
    torch.manual_seed(0)
    G = arch.Generator(nz=8, img_size=16, width=0.125)
    with torch.no_grad():
        next(G.parameters()).fill_(float("nan"))
    torch.save(arch.generator_file(G), w / "nan_gen.pt")
    torch.save(arch.Discriminator(img_size=16, width=0.125).state_dict(), w / "critic.pt")
    torch.save(arch.generator_file(arch.Generator(nz=8, img_size=32, width=0.125)), w / "teacher32.pt")  # KD can use it
    for name in ("imgs", "imgs2", "samples_full"):
        (w / name).mkdir()
        for i in range(3):
            Image.new("RGB", (16, 16), (40 * i, 80, 120)).save(w / name / f"{i:05d}.png")
    (w / "bomb").mkdir()
    bomb_png(w / "bomb" / "00000.png")
    np.savez(w / "stats.npz", mu=np.zeros(4), sigma=np.eye(4))
    (w / "result.json").write_text("{}\n")
    # a finished demo study (summary.json per stage, its memory measured) whose samples/teacher is a file, not a folder
    study = w / "study"
    for stage in ("teacher", "full", "transfer", "kd_a0.05"):
        (study / stage).mkdir(parents=True)
        (study / stage / "summary.json").write_text('{"epochs": 2}\n')
        shutil.copy(w / "run" / "generator.pt", study / stage / "generator.pt")
        (study / "memory" / stage).mkdir(parents=True)
        (study / "memory" / stage / "summary.json").write_text('{"epochs": 1}\n')
    (study / "samples").mkdir()
    (study / "samples" / "teacher").write_text("not a folder\n")
    (study / "fid").mkdir()
    (study / "fid" / "settings.txt").write_text("n_samples=50 n_thesis=0 bootstrap=0 dims=64 kid=10/25 weights=default\n")
    (study / ".experiments.lock").write_text("")
    # a data folder with odd entries besides 4 images: a dangling link, a link loop, a FIFO (reading it would
    # block forever); and one with nothing else
    for name in ("odd", "odd_only"):
        (w / name).mkdir()
        os.symlink("nowhere.png", w / name / "dangling.png")
        os.symlink("loop.png", w / name / "loop.png")
        os.mkfifo(w / name / "p.png")
    for i in range(4):
        Image.new("RGB", (16, 16), (50 * i, 80, 120)).save(w / "odd" / f"{i:05d}.png")
    shutil.copytree(w / "imgs", w / "trunc")  # a PNG whose header reads fine and whose data is cut short
    cut = (w / "trunc" / "00001.png").read_bytes()
    (w / "trunc" / "00001.png").write_bytes(cut[:len(cut) // 2])
    # statistics: of 64 dims (an Inception size), with NaN mean or features, with a negative image count
    feats = np.random.RandomState(0).randn(8, 64)
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    np.savez(w / "stats64.npz", mu=mu, sigma=sigma, features=feats, n=8)
    np.savez(w / "nan_mu.npz", mu=np.full(64, np.nan), sigma=sigma, features=feats, n=8)
    np.savez(w / "nan_features.npz", mu=mu, sigma=sigma, features=np.where(feats > 2, np.nan, feats), n=8)
    np.savez(w / "negative_n.npz", mu=mu, sigma=sigma, n=-5)
    # a study whose teacher left a 0-byte snapshot (a disk that filled up)
    shutil.copytree(study, w / "study_snap")
    os.remove(w / "study_snap" / "samples" / "teacher")
    (w / "study_snap" / "teacher" / "snapshots").mkdir()
    (w / "study_snap" / "teacher" / "snapshots" / "epoch_000000.png").write_bytes(b"")
    # a transfer run (thesis freezing) of the reference run, 1 epoch
    argv = TINY + ["--epochs", "1", "--init", str(w / "run"), "--out", str(w / "transfer")]
    code, _, err = run_child(None, str(tmp_path_factory.mktemp("log") / "transfer"),
                             main=lambda: harness.run_main(lambda: train_transfer.main(argv)))
    assert code == 0, err
    # a run stopped by SIGTERM in the middle of epoch 2 (iteration 1 of 2)
    code, _, err = run_child(TINY + ["--epochs", "3", "--out", str(w / "mid")], str(tmp_path_factory.mktemp("log") / "mid"),
                             patch=lambda: on_call(train_wgan, "critic_step", 3, send(signal.SIGTERM)))
    assert code == 143, err
    return str(w)


T = TINY + ["--epochs", "2"]
NOT_KD = ("--n-critic", "--nz")  # train_kd.py has neither flag
TK = [a for i, a in enumerate(T) if a not in NOT_KD and T[i - 1] not in NOT_KD]
W, K, C, F, D, R = "train_wgan.py", "train_kd.py", "createsamples.py", "compute_fid.py", "data.py", "report.py"
S = ["--n", "2", "--device", "cpu"]  # createsamples.py
X = "experiments.sh"
TRANSFER = "train_transfer.py"
# (id, script, argv, a fragment the error line must hold); {w} is the world folder, {new} a path that does not exist
BAD = [
    ("wgan-lambda-gp-nan", W, T + ["--lambda-gp", "nan", "--out", "{new}"], "--lambda-gp"),
    ("wgan-betas-nan", W, T + ["--betas", "nan", "2", "--out", "{new}"], "--betas"),
    ("wgan-betas-2", W, T + ["--betas", "0", "2", "--out", "{new}"], "--betas"),
    ("wgan-img-size-huge", W, T + ["--img-size", "1048576", "--out", "{new}"], "--img-size"),
    ("wgan-lr-negative", W, T + ["--lr", "-1", "--out", "{new}"], "--lr"),
    ("wgan-epochs-0", W, T + ["--epochs", "0", "--out", "{new}"], "--epochs"),
    ("wgan-width-inf", W, T + ["--width", "inf", "--out", "{new}"], "--width"),
    ("wgan-threads-0", W, T + ["--threads", "0", "--out", "{new}"], "--threads"),
    ("wgan-device-tpu", W, T + ["--device", "tpu", "--out", "{new}"], "--device"),
    ("wgan-device-cuda7", W, T + ["--device", "cuda:7", "--out", "{new}"], "cuda"),
    ("wgan-missing-data", W, T + ["--data", "{w}/no_such_folder", "--out", "{new}"], "no_such_folder"),
    ("wgan-data-is-a-file", W, T + ["--data", "{w}/notes.txt", "--out", "{new}"], "notes.txt"),
    ("wgan-data-only-a-bomb", W, T + ["--data", "{w}/bomb", "--out", "{new}"], "exceeds limit"),
    ("wgan-bad-demo-spec", W, T + ["--data", "demo:unicorns", "--out", "{new}"], "unicorns"),
    ("wgan-batch-bigger-than-data", W, T + ["--batch-size", "999", "--out", "{new}"], "--batch-size"),
    ("wgan-diffaug-unknown", W, T + ["--diffaug", "rotate", "--out", "{new}"], "rotate"),
    ("wgan-eval-without-ref", W, T + ["--eval-every", "1", "--out", "{new}"], "--eval-ref"),
    ("wgan-text-file-as-checkpoint", W, T + ["--resume", "{w}/notes.txt", "--out", "{new}"], "notes.txt"),
    ("wgan-empty-checkpoint", W, T + ["--resume", "{w}/empty.pt", "--out", "{new}"], "empty.pt"),
    ("wgan-missing-checkpoint", W, T + ["--resume", "{w}/nope.pt", "--out", "{new}"], "nope.pt"),
    ("wgan-generator-file-as-checkpoint", W, T + ["--resume", "{w}/run/generator.pt", "--out", "{new}"], "generator.pt"),
    ("wgan-resume-other-run-into-a-run", W, T + ["--epochs", str(EPOCHS), "--resume", "{w}/other/ckpt.pt",
                                                 "--out", "{w}/run"], "another run"),
    ("wgan-resume-fewer-epochs", W, T + ["--epochs", "1", "--resume", "--out", "{w}/run"], "--epochs"),
    ("wgan-resume-other-width", W, T + ["--epochs", str(EPOCHS), "--width", "0.25", "--resume", "{w}/run/ckpt.pt",
                                        "--out", "{new}"], "width"),
    ("wgan-resume-mid-epoch-other-iters", W, T + ["--epochs", "3", "--iters-per-epoch", "3", "--resume",
                                                  "--out", "{w}/mid"], "iters-per-epoch"),
    ("wgan-existing-run-without-resume", W, T + ["--out", "{w}/run"], "--resume"),
    ("wgan-out-under-a-file", W, T + ["--out", "{w}/afile/run"], "afile"),
    ("transfer-freeze-without-init", TRANSFER, T + ["--out", "{new}"], "--init"),
    ("transfer-init-missing", TRANSFER, T + ["--init", "{w}/nope", "--out", "{new}"], "nope"),
    ("transfer-init-text-file", TRANSFER, T + ["--init", "{w}/notes.txt", "--out", "{new}"], "notes.txt"),
    ("transfer-freeze-too-many", TRANSFER, T + ["--init", "{w}/run", "--freeze-g", "99", "--out", "{new}"], "freeze"),
    ("transfer-init-other-width", TRANSFER, T + ["--init", "{w}/run", "--width", "0.25", "--out", "{new}"], "width"),
    ("transfer-init-without-critic", TRANSFER, T + ["--init", "{w}/run/generator.pt", "--out", "{new}"], "--init-d"),
    ("transfer-resume-wgan-checkpoint", TRANSFER, T + ["--freeze-g", "0", "--freeze-d", "0", "--epochs", str(EPOCHS),
                                                      "--resume", "{w}/run/ckpt.pt", "--out", "{new}"], "train_wgan"),
    ("kd-empty-teacher", K, TK + ["--teacher", "{w}/empty.pt", "--out", "{new}"], "empty.pt"),
    ("kd-text-teacher", K, TK + ["--teacher", "{w}/notes.txt", "--out", "{new}"], "notes.txt"),
    ("kd-missing-teacher", K, TK + ["--teacher", "{w}/nope.pt", "--out", "{new}"], "nope.pt"),
    ("kd-critic-as-teacher", K, TK + ["--teacher", "{w}/critic.pt", "--out", "{new}"], "Discriminator"),
    ("kd-nan-teacher", K, TK + ["--teacher", "{w}/nan_gen.pt", "--out", "{new}"], "non-finite"),
    ("kd-alpha-2", K, TK + ["--teacher", "{w}/run", "--alpha", "2", "--out", "{new}"], "--alpha"),
    ("kd-alpha-nan", K, TK + ["--teacher", "{w}/run", "--alpha", "nan", "--out", "{new}"], "--alpha"),
    ("kd-teacher-size-mismatch", K, TK + ["--teacher", "{w}/run", "--img-size", "32", "--out", "{new}"], "img_size"),
    ("kd-resume-wgan-checkpoint", K, TK + ["--teacher", "{w}/teacher32.pt", "--img-size", "32", "--epochs", str(EPOCHS), "--resume",
                                          "{w}/run/ckpt.pt", "--out", "{new}"], "train_wgan"),
    ("samples-nan-generator", C, ["--model", "{w}/nan_gen.pt", *S, "--out", "{new}"], "non-finite"),
    ("samples-nan-generator-into-new-folder", C, ["--model", "{w}/nan_gen.pt", "--n", "2", "--device", "cpu",
                                                  "--out", "{new}/a/b"], "non-finite"),
    ("samples-missing-model", C, ["--model", "{w}/nope.pt", *S, "--out", "{new}"], "nope.pt"),
    ("samples-text-model", C, ["--model", "{w}/notes.txt", *S, "--out", "{new}"], "notes.txt"),
    ("samples-critic-model", C, ["--model", "{w}/critic.pt", *S, "--out", "{new}"], "Discriminator"),
    ("samples-n-0", C, ["--model", "{w}/run", "--n", "0", "--out", "{new}"], "--n"),
    ("samples-out-not-empty", C, ["--model", "{w}/run", *S, "--out", "{w}/samples_full"], "--overwrite"),
    ("samples-out-is-a-file", C, ["--model", "{w}/run", *S, "--out", "{w}/notes.txt"], "notes.txt"),
    ("samples-out-under-a-file", C, ["--model", "{w}/run", *S, "--out", "{w}/afile/s"], "afile"),
    ("samples-grid-inside-out", C, ["--model", "{w}/run", *S, "--out", "{new}",
                                    "--grid", "{new}/grid.png"], "--grid"),
    ("samples-fp16-on-cpu", C, ["--model", "{w}/run", *S, "--precision", "fp16",
                                "--out", "{new}"], "fp16"),
    ("fid-save-stats-onto-existing", F, ["--save-stats", "{w}/imgs", "{w}/stats.npz"], "--overwrite"),
    ("fid-json-existing", F, ["{w}/imgs", "{w}/imgs2", "--json", "{w}/result.json"], "--overwrite"),
    ("fid-json-under-a-file", F, ["{w}/imgs", "{w}/imgs2", "--json", "{w}/afile/r.json"], "afile"),
    ("fid-decompression-bomb", F, ["--save-stats", "{w}/bomb", "{new}.npz"], "exceeds limit"),
    ("fid-decompression-bomb-into-new-folder", F, ["--save-stats", "{w}/bomb", "{new}/stats.npz"], "exceeds limit"),
    ("fid-missing-input-json-into-new-folder", F, ["{w}/no_such_folder", "{w}/imgs", "--json", "{new}/r.json"],
     "no_such_folder"),
    ("fid-missing-input", F, ["{w}/no_such_folder", "{w}/imgs"], "no_such_folder"),
    ("fid-three-inputs", F, ["{w}/imgs", "{w}/imgs2", "{w}/imgs"], "two inputs"),
    ("fid-save-stats-not-npz", F, ["--save-stats", "{w}/imgs", "{new}.txt"], ".npz"),
    ("fid-text-file-as-stats", F, ["{w}/fake.npz", "{w}/imgs"], "fake.npz"),
    ("fid-missing-weights", F, ["--save-stats", "{w}/imgs", "{new}.npz", "--weights", "{w}/nope.pth"], "nope.pth"),
    ("fid-text-weights", F, ["--save-stats", "{w}/imgs", "{new}.npz", "--weights", "{w}/notes.txt"], "notes.txt"),
    ("data-prepare-into-a-file", D, ["prepare", "{w}/imgs", "{w}/notes.txt", "--size", "16"], "notes.txt"),
    ("data-prepare-missing-source", D, ["prepare", "{w}/no_such_folder", "{new}", "--size", "16"], "no_such_folder"),
    ("data-prepare-size-7", D, ["prepare", "{w}/imgs", "{new}", "--size", "7"], "size"),
    ("data-prepare-bomb-only", D, ["prepare", "{w}/bomb", "{new}", "--size", "16"], "exceeds limit"),
    ("data-prepare-bomb-into-new-folder", D, ["prepare", "{w}/bomb", "{new}/sub", "--size", "16"], "exceeds limit"),
    ("data-demo-into-non-empty", D, ["demo", "{w}/imgs", "--n", "2", "--size", "16"], "imgs"),
    ("data-demo-n-0", D, ["demo", "{new}", "--n", "0", "--size", "16"], "--n"),
    ("data-info-missing", D, ["info", "{w}/no_such_folder", "--no-cache"], "no_such_folder"),
    ("report-missing-folder", R, ["{w}/no_such_folder"], "no_such_folder"),
    ("report-folder-without-study", R, ["{w}/imgs", "--out", "{new}"], "imgs"),
    ("report-out-under-a-file", R, ["{w}/study", "--out", "{w}/afile/report"], "afile"),
    ("report-bad-alphas", R, ["{w}/study", "--alphas", "x y", "--out", "{new}"], "--alphas"),
    ("study-unknown-flag", X, ["--bogus"], "--bogus"),
    ("study-size-not-a-number", X, ["--size", "abc", "--out", "{new}"], "abc"),
    ("study-fid-dims-100", X, ["--fid-dims", "100", "--out", "{new}"], "100"),
    ("study-alpha-2", X, ["--alphas", "2", "--out", "{new}"], "alpha"),
    ("study-epochs-kd-0", X, ["--epochs-kd", "0", "--out", "{new}"], "EPOCHS_KD"),
    ("study-flag-without-value", X, ["--size"], "--size"),
    ("study-missing-data", X, ["--data1", "{w}/no_such_folder", "--out", "{new}"], "no_such_folder"),
    ("study-missing-weights", X, ["--weights", "{w}/nope.pth", "--out", "{new}"], "nope.pth"),
    ("study-out-under-a-file", X, ["--out", "{w}/afile/study"], "afile"),
    ("study-samples-folder-is-a-file", X, ["--demo", "--alphas", "0.05", "--epochs-teacher", "2", "--epochs-transfer",
                                           "2", "--epochs-kd", "2", "--n-samples", "50", "--fid-dims", "64",
                                           "--kid-subsets", "10", "--kid-subset-size", "25", "--out", "{w}/study"],
     "samples/teacher"),
    # odd data folders, evaluation inputs, seeds, sizes, resumed flags ({x}: random FID Inception weights)
    ("data-folder-of-odd-entries-only", D, ["info", "{w}/odd_only", "--no-cache"], "no images"),
    ("wgan-eval-ref-is-a-text-file", W, T + ["--eval-every", "1", "--eval-ref", "{w}/notes.txt", "--out", "{new}"],
     "notes.txt"),
    ("wgan-eval-ref-of-no-inception-size", W, T + ["--eval-every", "1", "--eval-ref", "{w}/stats.npz", "--out", "{new}"],
     "4-dim"),
    ("wgan-eval-ref-nan", W, T + ["--eval-every", "1", "--eval-ref", "{w}/nan_mu.npz", "--out", "{new}"], "NaN"),
    ("wgan-eval-n-1", W, T + ["--eval-every", "1", "--eval-ref", "{w}/stats64.npz", "--eval-n", "1", "--eval-weights",
                              "{x}/inception.pth", "--out", "{new}"], "--eval-n"),
    ("wgan-eval-weights-missing", W, T + ["--eval-every", "1", "--eval-ref", "{w}/stats64.npz", "--eval-weights",
                                          "{w}/nope.pth", "--out", "{new}"], "--eval-weights {w}/nope.pth"),
    ("wgan-seed-over-2-64", W, T + ["--seed", "99999999999999999999", "--out", "{new}"], "--seed"),
    ("wgan-seed-negative", W, T + ["--seed", "-1", "--out", "{new}"], "--seed"),
    ("kd-seed-2-32", K, TK + ["--teacher", "{w}/teacher32.pt", "--seed", "4294967296", "--out", "{new}"], "--seed"),
    ("samples-seed-2-64", C, ["--model", "{w}/run", *S, "--seed", "18446744073709551616", "--out", "{new}/s"], "--seed"),
    ("fid-seed-2-32", F, ["{w}/stats64.npz", "{w}/stats64.npz", "--seed", "4294967296"], "--seed"),
    ("wgan-demo-too-many-images", W, T + ["--data", "demo:cats:1000000000000", "--out", "{new}"], "memory"),
    ("wgan-width-100000", W, T + ["--width", "100000", "--out", "{new}"], "memory"),
    ("transfer-width-100000", TRANSFER, T + ["--freeze-g", "0", "--freeze-d", "0", "--width", "100000", "--out", "{new}"],
     "memory"),
    ("kd-width-100000", K, TK + ["--teacher", "{w}/teacher32.pt", "--img-size", "32", "--width", "100000",
                                 "--out", "{new}"], "memory"),
    ("data-demo-too-many-images", D, ["demo", "{new}", "--n", "1000000000000", "--size", "16"], "memory"),
    ("kd-teacher-of-16-px", K, TK + ["--teacher", "{w}/run", "--out", "{new}"], "32x32"),
    ("wgan-resume-finished-run-into-new-out", W, T + ["--epochs", str(EPOCHS), "--resume", "{w}/run/ckpt.pt",
                                                      "--out", "{new}"], "nothing to train"),
    ("wgan-resume-other-seed", W, T + ["--epochs", str(EPOCHS + 1), "--seed", "5", "--resume", "{w}/run/ckpt.pt",
                                       "--out", "{new}"], "--seed"),
    ("wgan-resume-beta1-from-0", W, T + ["--epochs", str(EPOCHS + 1), "--betas", "0.5", "0.9", "--resume",
                                         "{w}/run/ckpt.pt", "--out", "{new}"], "--betas"),
    ("transfer-resume-other-freeze-g", TRANSFER, T + ["--init", "{w}/run", "--freeze-g", "1", "--resume",
                                                      "--out", "{w}/transfer"], "--freeze-g 1 differs"),
    ("transfer-resume-other-freeze-d", TRANSFER, T + ["--init", "{w}/run", "--freeze-d", "1", "--resume",
                                                      "--out", "{w}/transfer"], "--freeze-d 1 differs"),
    ("transfer-resume-other-init", TRANSFER, T + ["--init", "{w}/other", "--resume", "--out", "{w}/transfer"], "--init"),
    ("samples-grid-is-out", C, ["--model", "{w}/run", *S, "--out", "{new}", "--grid", "{new}"], "--grid"),
    ("samples-grid-is-a-folder", C, ["--model", "{w}/run", *S, "--out", "{new}", "--grid", "{w}/imgs"], "--grid"),
    ("fid-nan-mean", F, ["{w}/nan_mu.npz", "{w}/stats64.npz"], "NaN"),
    ("fid-nan-features", F, ["{w}/nan_features.npz", "{w}/stats64.npz"], "NaN"),
    ("fid-negative-n", F, ["{w}/negative_n.npz", "{w}/stats64.npz"], "n = -5"),
    ("fid-json-is-save-stats", F, ["{w}/imgs", "{w}/imgs2", "--json", "{new}.npz", "--save-stats", "{new}.npz"],
     "same file"),
    # a user's slips: an empty path, an --out inside the image folder it trains on, a huge epoch
    ("wgan-data-empty", W, T + ["--data", "", "--out", "{new}"], "empty"),
    ("data-info-empty", D, ["info", "", "--no-cache"], "empty"),
    ("wgan-out-inside-data", W, T + ["--data", "{w}/imgs", "--out", "{w}/imgs/run"], "inside --data"),
    ("kd-out-inside-data", K, TK + ["--teacher", "{w}/teacher32.pt", "--img-size", "32", "--data", "{w}/imgs", "--out", "{w}/imgs/kd"],
     "inside --data"),
    ("wgan-iters-per-epoch-huge", W, T + ["--iters-per-epoch", "1000000000000", "--out", "{new}"], "--iters-per-epoch"),
    ("wgan-width-not-a-number", W, T + ["--width", "abc", "--out", "{new}"], "invalid float value: 'abc'"),
    ("samples-model-empty", C, ["--model", "", *S, "--out", "{new}"], "--model is empty"),
    ("study-width-not-a-number", X, ["--demo", "--width", "abc", "--out", "{new}"], "WIDTH"),
    ("study-lr-negative", X, ["--demo", "--lr", "-1", "--out", "{new}"], "LR"),
    ("study-precision-fp64", X, ["--demo", "--precision", "fp64", "--out", "{new}"], "PRECISION"),
    ("wgan-out-empty", W, T + ["--out", ""], "--out is empty"),
    ("data-demo-into-empty-path", D, ["demo", "", "--n", "2", "--size", "16", "--overwrite"], "DST is empty"),
    ("wgan-resume-a-run-without-its-ckpt", W, T + ["--epochs", str(EPOCHS + 1), "--resume", "--out", "{w}/nockpt"],
     "no ckpt.pt"),
    ("fid-truncated-png-names-the-file", F, ["{w}/trunc", "{w}/imgs", "--dims", "64", "--weights", "{x}/inception.pth"],
     "00001.png"),
]

# odd inputs that are not errors: (id, script, argv, exit status, a fragment the output must hold); nothing changes
# outside {new}, no traceback, and a non-zero status is one error line as above
ODD = [
    ("wgan-data-with-dangling-link-loop-fifo", W, T + ["--epochs", "1", "--data", "{w}/odd", "--out", "{new}"], 0,
     "p.png (not a regular file)"),
    ("data-info-with-dangling-link-loop-fifo", D, ["info", "{w}/odd", "--no-cache", "--size", "16"], 0,
     "dangling.png (dangling link)"),
    ("fid-folder-with-dangling-link-loop-fifo", F, ["{w}/odd", "{w}/imgs", "--dims", "64", "--weights",
                                                    "{x}/inception.pth", "--num-workers", "0"], 0, "'p.png'"),
    ("report-zero-byte-snapshot", R, ["{w}/study_snap", "--out", "{new}"], 0, "epoch_000000.png: cannot read it"),
    ("wgan-resume-other-data-is-noted", W, T + ["--epochs", str(EPOCHS + 1), "--data", "demo:dogs:16", "--resume",
                                                "{w}/run/ckpt.pt", "--out", "{new}"], 0,
     "note: --data demo:dogs:16 (checkpoint: demo:cats:16) applied"),
    ("wgan-resume-fp16-from-fp32-is-noted", W, T + ["--epochs", str(EPOCHS + 1), "--precision", "fp16", "--resume",
                                                    "{w}/run/ckpt.pt", "--out", "{new}"], 0,
     "note: --precision fp16 (checkpoint: fp32) applied (the fp16 loss scale starts afresh)"),
    ("kd-student-follows-a-32-px-teacher", K, TK + ["--teacher", "{w}/teacher32.pt", "--img-size", "32", "--epochs", "1",
                                                    "--out", "{new}"], 0,
     "student: 32x32, nz 8, width 0.125 (--nz from the teacher)"),
]


def invoke(script, argv, tmp_path):
    """`python SCRIPT ARGV` (experiments.sh in bash, the rest in this process): (exit status, stdout, stderr)."""
    if script == X:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDY_")}
        env.update(PYTHON=sys.executable, GANOPT_CACHE=str(tmp_path / "cache"))
        p = subprocess.run(["bash", os.path.join(ROOT, X)] + argv, capture_output=True, text=True, env=env, timeout=600)  # a hang guard
        return p.returncode, p.stdout, p.stderr
    cache = ["--cache-dir", str(tmp_path / "cache")] if script in (W, K, TRANSFER) else []
    return cli(script, argv + cache)


@pytest.fixture(scope="module")
def extras(tmp_path_factory):
    """Files too large to hash around every invocation ({x}/...): random FID Inception weights (no download)."""
    x = tmp_path_factory.mktemp("extras")
    torch.manual_seed(0)
    torch.save(compute_fid.fid_inception_v3_arch().state_dict(), x / "inception.pth")
    return str(x)


@pytest.mark.parametrize("script, argv, fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_invocation_is_one_line_exit_2_and_changes_nothing(world, extras, tmp_path, script, argv, fragment):
    TALLY["bad_tried"] += 1
    new = str(tmp_path / "new_out")
    argv = [a.format(w=world, x=extras, new=new) for a in argv]
    fragment = fragment.format(w=world)
    before = tree(world)
    code, _, stderr = invoke(script, argv, tmp_path)
    assert_clean_error(code, stderr, script)
    assert fragment in last_line(stderr), f"the error line does not name {fragment!r}: {last_line(stderr)!r}"
    after = tree(world)
    if argv[0] == "--demo":  # the study computes the real images' statistics before it reaches the broken stage
        after = {k: v for k, v in after.items() if k in before or not k.startswith(("study/real", "study/fid/"))}
    assert after == before, "files changed under the folders involved"
    leftovers = [p for p in glob.glob(new + "*")]
    assert leftovers == [], f"a refused run left {leftovers}"
    TALLY["bad_clean"] += 1


@pytest.mark.parametrize("script, argv, status, fragment", [b[1:] for b in ODD], ids=[b[0] for b in ODD])
def test_odd_input_is_said_in_one_line_and_changes_nothing(world, extras, tmp_path, script, argv, status, fragment):
    TALLY["bad_tried"] += 1
    new = str(tmp_path / "new_out")
    argv = [a.format(w=world, x=extras, new=new) for a in argv]
    before = tree(world)
    code, stdout, stderr = invoke(script, argv, tmp_path)
    assert "Traceback" not in stderr, stderr
    assert code == status, f"exit status {code}, expected {status}: {stderr}"
    said = [ln for ln in (stdout + stderr).splitlines() if fragment in ln]
    assert len(said) == 1, f"no single line says {fragment!r}: {stdout + stderr}"
    assert tree(world) == before, "files changed under the folders involved"
    if os.path.isdir(new):
        assert not os.path.exists(os.path.join(new, data.LOCK_NAME)), "the run left its lock file"
    TALLY["bad_clean"] += 1


# ----------------------------------------------------------------------------- one writer per folder, and more

def slow(module, name, seconds):
    """Child patch: every call of module.name takes `seconds` longer (so that a second writer meets the first)."""
    def patch():
        real = getattr(module, name)
        setattr(module, name, lambda *a, **k: (time.sleep(seconds), real(*a, **k))[1])
    return patch


def wait_for_lock(path, pid, log):
    """Until `path` (a lock file) names process `pid`."""
    t0 = time.time()
    while not (os.path.exists(path) and read(path).strip() == str(pid)):
        assert time.time() - t0 < 60 and not os.waitpid(pid, os.WNOHANG)[0], read(log + ".err")
        time.sleep(0.01)


def test_two_writers_of_one_folder_one_is_refused_and_nothing_mixes(world, tmp_path):
    import createsamples
    TALLY["bad_tried"] += 1
    # training: two runs of one --out with different seeds; the second is refused naming the first's PID
    out, log = str(tmp_path / "run"), str(tmp_path / "log")
    first = start(TINY + ["--epochs", "2", "--seed", "1", "--out", out], log + "1", patch=slow(train_wgan, "critic_step", 0.2))
    wait_for_lock(os.path.join(out, data.LOCK_NAME), first, log + "1")
    code, _, err = run_child(TINY + ["--epochs", "2", "--seed", "2", "--out", out, "--resume"], log + "2")
    assert_clean_error(code, err, "train_wgan.py")
    assert f"being written by another process (PID {first})" in last_line(err), err
    assert reap(first) == 0, read(log + "1.err")
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["args"]["seed"] == 1
    assert [r[0] for r in logged_losses(out)] == [1, 2]  # one run's epochs, once each
    assert not os.path.exists(os.path.join(out, data.LOCK_NAME))  # released at the end
    # samples: the second run (another model) is refused and the first one's images are all there
    samples = str(tmp_path / "samples")
    argv = ["--model", os.path.join(world, "run"), "--n", "12", "--device", "cpu", "--precision", "fp32", "--out", samples]
    first = start(None, log + "3", patch=slow(createsamples, "_save_png", 0.05), main=lambda: createsamples.cli(argv))
    wait_for_lock(str(tmp_path / ".samples.lock"), first, log + "3")
    code, _, err = cli(C, ["--model", os.path.join(world, "other"), "--n", "3", "--device", "cpu", "--out", samples])
    assert_clean_error(code, err, C)
    assert f"PID {first}" in last_line(err), err
    assert reap(first) == 0, read(log + "3.err")
    assert sorted(os.listdir(samples)) == [f"{i:05d}.png" for i in range(12)]
    assert not os.path.exists(tmp_path / ".samples.lock")
    # data.py demo into one folder
    dst = str(tmp_path / "demo")
    first = start(None, log + "4", patch=slow(data, "_write_file", 0.05),
                  main=lambda: data.main(["demo", dst, "--n", "12", "--size", "16"]))
    wait_for_lock(os.path.join(dst, data.LOCK_NAME), first, log + "4")
    code, _, err = cli(D, ["demo", dst, "--n", "3", "--size", "16", "--domain", "dogs"])
    assert_clean_error(code, err, D)
    assert f"PID {first}" in last_line(err), err
    assert reap(first) == 0, read(log + "4.err")
    assert sorted(os.listdir(dst)) == [f"{i:05d}.png" for i in range(12)]
    TALLY["bad_clean"] += 1


def test_a_lock_left_by_a_killed_writer_is_taken_over(tmp_path):
    TALLY["bad_tried"] += 1
    dead = subprocess.Popen(["true"])
    dead.wait()  # a process that is gone
    dead = dead.pid
    out = tmp_path / "run"
    out.mkdir()
    (out / data.LOCK_NAME).write_text(f"{dead}\n")
    code, stdout, err = run_child(TINY + ["--epochs", "1", "--out", str(out)], str(tmp_path / "log"))
    assert code == 0, err
    assert f"was left by process {dead}, which is gone: taken over" in err, err
    assert os.path.isfile(out / "ckpt.pt") and not (out / data.LOCK_NAME).exists()
    dst = tmp_path / "demo"
    dst.mkdir()
    (dst / data.LOCK_NAME).write_text(f"{dead}\n")
    code, _, err = cli(D, ["demo", str(dst), "--n", "2", "--size", "16"])  # not "not empty": only our leftover
    assert code == 0 and "taken over" in err, err
    assert sorted(os.listdir(dst)) == ["00000.png", "00001.png"]
    TALLY["bad_clean"] += 1


def test_evaluation_without_weights_offline_is_one_line_before_training(world, tmp_path, monkeypatch):
    TALLY["bad_tried"] += 1
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # an empty hub cache

    def offline(*args, **kwargs):
        raise OSError(errno.ENETUNREACH, "Network is unreachable")
    monkeypatch.setattr(compute_fid.torch.hub, "download_url_to_file", offline)
    out = tmp_path / "out"
    code, stdout, err = cli(W, T + ["--eval-every", "1", "--eval-ref", os.path.join(world, "stats64.npz"),
                                    "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    assert_clean_error(code, err, W)
    assert "--eval-weights" in last_line(err) and "Network is unreachable" in last_line(err), err
    assert "epoch" not in stdout and not out.exists()  # before the first epoch, nothing written
    TALLY["bad_clean"] += 1


def test_an_evaluation_error_during_training_is_one_line(world, extras, tmp_path, monkeypatch):
    """compute_fid's own errors (here: features gone NaN) reach the user through run_main as one line."""
    TALLY["bad_tried"] += 1

    def broken(*args, **kwargs):
        raise compute_fid.UserError("the Inception features hold NaN or Inf values (broken network weights?)")
    monkeypatch.setattr(compute_fid, "image_features", broken)
    code, _, err = call(lambda: harness.run_main(lambda: train_wgan.main(
        T + ["--epochs", "1", "--eval-every", "1", "--eval-ref", os.path.join(world, "stats64.npz"), "--eval-n", "4",
             "--eval-weights", os.path.join(extras, "inception.pth"), "--out", str(tmp_path / "out"),
             "--cache-dir", str(tmp_path / "cache")])))
    assert_clean_error(code, err, W)
    assert last_line(err).startswith("error: evaluation: the Inception features hold NaN"), err
    assert not (tmp_path / "out" / data.LOCK_NAME).exists()  # released on the way out
    TALLY["bad_clean"] += 1


def test_ctrl_c_during_prepare_leaves_the_folder_as_it_was(world, tmp_path, monkeypatch):
    TALLY["bad_tried"] += 1
    dst = tmp_path / "dst"
    shutil.copytree(os.path.join(world, "imgs2"), dst)
    (dst / "notes.txt").write_text("mine\n")
    before = tree(str(dst))
    real, calls = Image.Image.save, [0]

    def interrupted(image, *args, **kwargs):  # Ctrl-C while the third PNG is being written
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(image, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "save", interrupted)
    code, _, err = cli(D, ["prepare", os.path.join(world, "odd"), str(dst), "--size", "16", "--overwrite"])
    assert calls[0] >= 3, "the interrupt was not reached"  # (PNGs are encoded on a few threads)
    assert code == 130 and last_line(err) == "interrupted" and "Traceback" not in err, err
    assert tree(str(dst)) == before  # the old PNGs, no new or partial one, no temp file, no lock
    TALLY["bad_clean"] += 1


def test_a_copied_train_kd_without_demo_py_names_the_file(world, tmp_path, monkeypatch):
    TALLY["bad_tried"] += 1
    monkeypatch.setitem(sys.modules, "demo", None)  # `import demo` fails as in a folder without demo.py
    code, _, err = cli(K, TK + ["--teacher", os.path.join(world, "teacher32.pt"), "--img-size", "32",
                                "--data", "demo:cats:16", "--out", str(tmp_path / "kd")])
    assert_clean_error(code, err, K)
    assert "needs demo.py" in last_line(err), err
    assert not (tmp_path / "kd").exists()
    TALLY["bad_clean"] += 1


def test_kd_student_follows_the_teachers_size_width_and_latent(world, tmp_path):
    TALLY["bad_tried"] += 1
    out = str(tmp_path / "kd")
    argv = ["--teacher", os.path.join(world, "teacher32.pt"), "--data", "demo:cats:16", "--batch-size", "4",
            "--iters-per-epoch", "1", "--epochs", "1", "--device", "cpu", "--threads", "1", "--precision", "fp32",
            "--out", out, "--cache-dir", str(tmp_path / "cache")]
    code, stdout, err = cli(K, argv)
    assert code == 0, err
    assert "student: 32x32, nz 8, width 0.125 (--img-size, --nz, --width from the teacher)" in stdout, stdout
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    assert {k: summary["args"][k] for k in ("width", "img_size", "nz")} == {"width": 0.125, "img_size": 32, "nz": 8}
    assert summary["params_g"] == arch.count_params(arch.GeneratorKD(nz=8, img_size=32, width=0.125))
    assert "(None: the teacher's) (default: None)" in " ".join(train_kd.build_parser().format_help().split())
    TALLY["bad_clean"] += 1


def test_other_betas_on_resume_are_applied(reference, tmp_path):
    TALLY["bad_tried"] += 1
    out = run_from(reference, tmp_path, 1)
    code, stdout, stderr = call(lambda: harness.run_main(
        lambda: train_wgan.main(TINY + ["--epochs", "2", "--out", out, "--resume", "--betas", "0.0", "0.5"])))
    assert code == 0, stderr
    assert "note: --betas 0.0 0.5 (checkpoint: 0.0 0.9) applied" in stdout, stdout
    state = arch.read_file(os.path.join(out, "ckpt.pt"))
    used = {key: tuple(state[key]["param_groups"][0]["betas"]) for key in ("opt_g", "opt_d")}
    assert used == {"opt_g": (0.0, 0.5), "opt_d": (0.0, 0.5)}, f"--betas 0 0.5 given with --resume, but training used {used}"
    TALLY["bad_clean"] += 1


def test_a_cut_line_in_metrics_jsonl_is_left_out_on_resume(reference, tmp_path):
    """A metrics.jsonl cut short or edited by hand: the resumed run warns once, keeps the good lines, goes on."""
    TALLY["bad_tried"] += 1
    out = run_from(reference, tmp_path, 1)
    with open(os.path.join(reference["out"], "metrics.jsonl")) as f:
        first = f.readline()
    with open(os.path.join(out, "metrics.jsonl"), "w") as f:
        f.write(first + '[1, 2]\n{"epoch": 2, "st')
    code, stdout, err = call(lambda: harness.run_main(
        lambda: train_wgan.main(TINY + ["--epochs", "2", "--out", out, "--resume"])))
    assert code == 0 and "Traceback" not in err, err
    assert [ln for ln in err.splitlines() if "metrics.jsonl: 2 unreadable line(s) left out" in ln], err
    with open(os.path.join(out, "metrics.jsonl")) as f:
        lines = f.readlines()
    assert lines[0] == first and [json.loads(ln)["epoch"] for ln in lines] == [1, 2]
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["final"]["images"] == json.loads(lines[1])["images"]
    TALLY["bad_clean"] += 1


def test_a_summary_with_values_of_the_wrong_type_is_shown_as_missing(world, tmp_path):
    """report.py on a hand-edited or foreign summary.json (a string where a number belongs): its cells are —."""
    TALLY["bad_tried"] += 1
    study = tmp_path / "study"
    shutil.copytree(os.path.join(world, "study"), study)
    (study / "teacher" / "summary.json").write_text('{"epochs": 2, "sec_per_epoch": "fast", "args": "x", '
                                                    '"peak_mem_mb": "big", "steps": [1]}\n')
    code, stdout, err = cli(R, [str(study), "--out", str(tmp_path / "report")])
    assert code == 0 and "Traceback" not in err, err
    row = next(ln for ln in (tmp_path / "report" / "report.md").read_text().splitlines() if ln.startswith("| model 1"))
    assert "fast" not in row and "big" not in row, row
    TALLY["bad_clean"] += 1


def test_a_copied_snapshot_with_another_name_is_left_out_of_the_timelines(world, tmp_path):
    TALLY["bad_tried"] += 1
    study = tmp_path / "study"
    shutil.copytree(os.path.join(world, "study"), study)
    (study / "teacher" / "snapshots").mkdir()
    for name in ("epoch_000000.png", "epoch_000000 (1).png", "epoch_last.png"):
        Image.new("RGB", (16, 4), (200, 80, 40)).save(study / "teacher" / "snapshots" / name)
    code, stdout, err = cli(R, [str(study), "--out", str(tmp_path / "report")])
    assert code == 0 and "Traceback" not in err, err
    assert (tmp_path / "report" / "timelines.png").is_file()
    TALLY["bad_clean"] += 1


def test_a_dead_runs_later_snapshots_leave_the_timeline(tmp_path):
    """Killed before its first checkpoint at epoch 3, then resumed (afresh) with --epochs 2: epochs 0-2 only."""
    TALLY["bad_tried"] += 1
    out, log = str(tmp_path / "out"), str(tmp_path / "log")
    argv = TINY + ["--save-every", "10", "--out", out, "--resume"]
    # the 7th critic step is in epoch 4: the snapshots of epochs 0-3 are written, no checkpoint
    code, _, err = run_child(argv + ["--epochs", "5"], log + "0",
                             patch=lambda: on_call(train_wgan, "critic_step", 7, send(signal.SIGKILL)))
    assert code == -signal.SIGKILL and not os.path.exists(os.path.join(out, "ckpt.pt")), err
    assert len(os.listdir(os.path.join(out, "snapshots"))) == 4
    code, _, err = run_child(argv + ["--epochs", "2"], log + "1")
    assert code == 0, err
    assert "taken over" in err, err  # the killed run's lock
    assert sorted(os.listdir(os.path.join(out, "snapshots"))) == [f"epoch_{e:06d}.png" for e in range(3)]
    with Image.open(os.path.join(out, "timeline.png")) as timeline, \
            Image.open(os.path.join(out, "snapshots", "epoch_000000.png")) as row:
        assert timeline.height == 3 * row.height  # three rows, not the dead run's four
    assert [r[0] for r in logged_losses(out)] == [1, 2]
    TALLY["bad_clean"] += 1


def test_a_newline_in_a_file_name_stays_in_its_row_of_sources_txt(world, tmp_path):
    TALLY["bad_tried"] += 1
    src = tmp_path / "src"
    shutil.copytree(os.path.join(world, "imgs"), src)
    shutil.copy(src / "00000.png", src / "two\nlines.png")
    code, _, err = cli(D, ["prepare", str(src), str(tmp_path / "dst"), "--size", "16"])
    assert code == 0, err
    rows = (tmp_path / "dst" / "sources.txt").read_text().splitlines()
    assert len(rows) == 4 and all(len(r.split("\t")) == 2 for r in rows), rows
    assert rows[3] == "00003.png\ttwo\\nlines.png"
    TALLY["bad_clean"] += 1
