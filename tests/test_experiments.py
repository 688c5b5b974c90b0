"""experiments.sh end to end: the --demo study runs, fills every cell of Tables 3.1-3.3, draws the figures, and a
second run skips every stage.

FID uses random-weight Inception (saved here and passed by --weights; TORCH_HOME points at an empty temp
folder so the hub cache is never read or downloaded), so the numbers are meaningless: the test checks the chain.
About 1-3 minutes on 2 CPU cores (the --demo settings).
"""
import csv
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch

import compute_fid as cf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments.sh")
KD = ["kd_a0.3", "kd_a0.05", "kd_a0.01", "kd_a0.001"]
MODELS = ["teacher", "full", "transfer"] + KD
STAGES = (["real1", "fid/ref_data1.npz", "real2", "fid/ref_data2.npz"]  # first: --eval-every needs them
          + [s for m in MODELS for s in (m, f"memory/{m}")]  # each trained, then its training memory measured
          + [f"samples/{m}" for m in MODELS] + [f"fid/gen_{m}.npz" for m in MODELS]
          + ["fid/teacher.json", "fid/teacher_vs_data2.json", "fid/full.json", "fid/transfer.json"]
          + [f for k in KD for f in (f"fid/{k}.json", f"fid/{k}_vs_teacher.json")])


def env_for(tmp):
    """This environment without the study's settings (experiments.sh reads STUDY_<NAME>): they come from flags only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDY_")}
    env.update(TORCH_HOME=str(tmp / "torch_home"), PYTHON=sys.executable, GANOPT_CACHE=str(tmp / "cache"))
    return env


def study_settings():
    """The names experiments.sh picks from STUDY_<NAME> (its `pick NAME` lines, and DEMO)."""
    with open(SCRIPT, encoding="utf-8") as f:
        names = re.findall(r"^pick ([A-Z0-9_]+)", f.read(), flags=re.M)
    return names + ["DEMO"]


def test_the_study_runs_here_without_the_callers_settings(monkeypatch, tmp_path):
    names = study_settings()
    assert {"DATA1", "SIZE", "EPOCHS_KD", "PRESET", "DEMO"} <= set(names)
    for name in names:
        monkeypatch.setenv(f"STUDY_{name}", "bogus")
    env = env_for(tmp_path)
    assert not [k for k in env if k.startswith("STUDY_")]
    bad = subprocess.run(["bash", SCRIPT, "--size", "abc", "--out", str(tmp_path / "o")], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=30)
    # a STUDY_ setting left in would stop it first (DEMO is checked before SIZE)
    assert bad.returncode == 2 and "SIZE must be a positive integer, got 'abc'" in bad.stderr, bad.stderr


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Run the demo study twice; returns (out dir, first run, second run)."""
    tmp = tmp_path_factory.mktemp("study")
    torch.manual_seed(0)
    net = cf.fid_inception_v3_arch()
    for mod in net.modules():  # kaiming: activations stay O(1) through the net, so FIDs are not all ~0
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    weights = tmp / "random_inception.pth"
    torch.save(net.state_dict(), weights)
    out = tmp / "study out"  # a space in the path: every path in the script is quoted
    # the demo chain, shortened: the full --demo (minutes) is for people; this checks every stage and cell
    cmd = ["bash", SCRIPT, "--demo", "--out", str(out), "--weights", str(weights), "--device", "cpu",
           "--epochs-teacher", "2", "--epochs-transfer", "2", "--epochs-kd", "1", "--iters-per-epoch", "2",
           "--n-samples", "50", "--threads", "1"]
    env = env_for(tmp)
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    return out, first, second


def stage_lines(stdout):
    return [ln for ln in stdout.splitlines() if ln.startswith("[stage] ")]


def table_rows(md):
    return [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| model |")
            and not ln.startswith("| method |")]


def test_first_run_runs_every_stage_in_order(study):
    _, first, _ = study
    lines = stage_lines(first.stdout)
    assert lines == [f"[stage] {s}: running" for s in STAGES] + ["[stage] report: running"]
    assert "study done in" in first.stdout


def test_stage_layout(study):
    out = study[0]
    for m in MODELS:
        for name in ("summary.json", "generator.pt", "ckpt.pt", "timeline.png"):
            assert (out / m / name).is_file(), f"{m}/{name}"
        assert len(list((out / "samples" / m).glob("*.png"))) == 50
        assert (out / "fid" / f"{m}.json").is_file()
    for name in ["ref_data1.npz", "ref_data2.npz"] + [f"gen_{m}.npz" for m in MODELS]:
        assert (out / "fid" / name).is_file()
    assert len(list((out / "real1").glob("*.png"))) == 50


def test_report_has_every_cell_filled(study):
    out = study[0]
    md = (out / "report" / "report.md").read_text(encoding="utf-8")
    for title in ("Table 3.1", "Table 3.2", "Table 3.3"):
        assert f"### {title}" in md
    rows = table_rows(md)
    assert len(rows) == 4 + 4 + 3  # Table 3.1 also scores the untouched teacher on data 2
    for row in rows[4:]:
        assert "—" not in row, row
    assert "### Warnings" not in md
    for name in ("table3_2.csv", "table3_3.csv"):
        with open(out / "report" / name, newline="", encoding="utf-8") as f:
            data = list(csv.reader(f))
        assert len(data) > 1 and all(cell != "" for row in data for cell in row), name
    with open(out / "report" / "table3_1.csv", newline="", encoding="utf-8") as f:
        models = [r for r in csv.DictReader(f) if r["updates"]]  # the trained models (not the untouched row)
    assert len(models) == 3
    for r in models:
        for key in ("fid", "kid_mean", "peak_tensor_mb", "sec_per_update", "trainable_params"):
            assert r[key] != "", (r["model"], key)
    # the demo's settings are stated, and the models are the ones trained here
    assert "64-dim Inception features, 50 generated vs 50 reference images" in md
    assert re.search(r"\| model 1 \(teacher, data 1\) \| 4 \| ", md)  # 2 epochs of 2 generator updates


def test_figures(study):
    from PIL import Image
    report_dir = study[0] / "report"
    with Image.open(report_dir / "timelines.png") as im:
        # first band: teacher, full, transfer; second band: the four KD runs; 6 fixed vectors of 32 px each
        assert im.width >= 4 * 6 * 32 and im.height >= 2 * 3 * 32
    for m in MODELS:
        with Image.open(report_dir / f"grid_{m}.png") as im:
            assert im.size == (6 * 34 + 2, 6 * 34 + 2)


def test_each_memory_stage_reruns_its_command_for_three_iterations_without_evaluations(study):
    out, first, _ = study
    commands = [shlex.split(ln[4:]) for ln in first.stdout.splitlines() if ln.startswith("  $ ")]
    measured = [c for c in commands if "/memory/" in c[-1]]
    assert len(measured) == len(MODELS)
    for m, cmd in zip(MODELS, measured):
        assert cmd[-8:] == ["--epochs", "1", "--iters-per-epoch", "3", "--snapshot-every", "1", "--out", f"{out}/memory/{m}"]
        assert "--eval-every" not in cmd and "--resume" not in cmd
        trained = [c for c in commands if c[-3:] == ["--out", f"{out}/{m}", "--resume"]]
        assert len(trained) == 1
        end = trained[0].index("--eval-every") if "--eval-every" in trained[0] else trained[0].index("--epochs")
        assert cmd[:end] == trained[0][:end]  # the same script and flags
        with open(out / "memory" / m / "summary.json") as f:
            summary = json.load(f)
        assert summary["epochs"] == 1 and summary["peak_tensor_mb"] > 0
    rows = list(csv.DictReader(open(out / "report" / "table3_1.csv")))
    with open(out / "memory" / "transfer" / "summary.json") as f:
        transfer = json.load(f)["peak_tensor_mb"]
    row = next(r for r in rows if "thesis' freezing" in r["model"])
    assert float(row["peak_tensor_mb"]) == pytest.approx(transfer, rel=0.01)  # the report reads memory/


def test_second_run_skips_every_stage(study):
    _, _, second = study
    lines = stage_lines(second.stdout)
    assert len(lines) == len(STAGES) + 1
    for stage, line in zip(STAGES, lines):
        assert line.startswith(f"[stage] {stage}: done, skipping"), line
    assert lines[-1] == "[stage] report: running"
    assert "train_wgan.py" not in second.stdout and "compute_fid.py" not in second.stdout


def test_another_size_or_width_on_the_same_out_is_refused_before_anything_changes(study, tmp_path):
    out = study[0]
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    for flags, trained in ((["--size", "64"], "--size 32 --width 0.25"), (["--width", "0.5"], "--size 32 --width 0.25")):
        r = subprocess.run(["bash", SCRIPT, "--demo", "--out", str(out), *flags], cwd=ROOT, env=env_for(tmp_path),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"was trained with {trained}: pass those, or another --out" in r.stderr, r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_help_and_bad_flags(tmp_path):
    exe = subprocess.run([SCRIPT, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=30)  # ./experiments.sh
    assert exe.returncode == 0 and "--epochs-teacher" in exe.stdout and "--demo" in exe.stdout
    bad = subprocess.run(["bash", SCRIPT, "--bogus"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "unknown argument: --bogus" in bad.stderr
    env = dict(env_for(tmp_path), STUDY_SIZE="abc")
    bad = subprocess.run(["bash", SCRIPT, "--out", str(tmp_path / "o")], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=30)
    assert bad.returncode == 2 and "SIZE must be a positive integer, got 'abc'" in bad.stderr
    env = dict(env_for(tmp_path), STUDY_SIZE="abc")  # a flag wins over the environment
    ok = subprocess.run(["bash", SCRIPT, "--size", "64", "--data1", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 2 and "neither a folder nor a demo spec" in ok.stderr
    for flags, says in ((["--out", ""], "OUT is empty"), (["--size", "33"], "SIZE must be a power of two from 32"),
                        (["--size", "16"], "SIZE must be a power of two from 32")):
        bad = subprocess.run(["bash", SCRIPT, *flags], cwd=tmp_path, env=env_for(tmp_path), capture_output=True,
                             text=True, timeout=30)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and says in bad.stderr, bad.stderr
    assert os.listdir(tmp_path) == []  # refused before anything was made (--out "" would have meant /)
    assert not (tmp_path / "o").exists()
