"""report.py on hand-made study directories: exact tables, the thesis' ΔFID arithmetic, missing stages, errors."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GB = 1024.0  # MiB per GB as report.py counts


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def summary(epochs, sec, mem_gb, tensor_gb, size_mb, **extra):
    return {"script": "x", "args": {"data": "demo:cats", "img_size": 128, "width": 1.0, "batch_size": 64,
                                    "iters_per_epoch": 25},
            "epochs": epochs, "steps": epochs * 25, "device": "cuda", "sec_per_epoch": sec,
            "generator_mb": size_mb, "peak_mem_mb": mem_gb * GB, "peak_mem_kind": "cuda_max_memory_allocated",
            "peak_tensor_mb": tensor_gb * GB, "peak_tensor_parts_mb": {}, **extra}


def fid_json(fid, kid=0.0123, kid_std=0.0011):
    return {"fid": fid, "kid_mean": kid, "kid_std": kid_std, "n_a": 500, "n_b": 500, "dims": 2048,
            "weights": "/w/pt_inception-2015-12-05-6726825d.pth", "kid_subsets": 100, "kid_subset_size": 250}


# Our "measurements" are the thesis' own numbers, so every ours-column must equal the thesis column.
THESIS_STUDY = {
    "teacher": (summary(4000, 59.5, 4.03, 2.0, 182.6), fid_json(63.95, 0.05, 0.002), None),
    "full": (summary(1000, 59.8, 4.03, 2.0, 182.6), fid_json(114.58), None),
    "transfer": (summary(1000, 46.2, 1.45, 0.5, 182.6, init="t", frozen_g=["layer1", "layer2"]), fid_json(127.517), None),
    "kd_a0.3": (summary(1000, 34, 1.89, 0.75, 37.7, alpha=0.3), fid_json(65.33), fid_json(32.07)),
    "kd_a0.05": (summary(1000, 34, 1.89, 0.75, 37.7, alpha=0.05), fid_json(68.69), fid_json(29.8)),
    "kd_a0.01": (summary(1000, 34, 1.89, 0.75, 37.7, alpha=0.01), fid_json(68.57), fid_json(31.06)),
    "kd_a0.001": (summary(1000, 34, 1.89, 0.75, 37.7, alpha=0.001), fid_json(79.38), fid_json(30.94)),
}


def make_study(root, stages=THESIS_STUDY):
    for stage, (summ, fid, fid_teacher) in stages.items():
        if summ is not None:
            write_json(os.path.join(root, stage, "summary.json"), summ)
        if fid is not None:
            write_json(os.path.join(root, "fid", f"{stage}.json"), fid)
        if fid_teacher is not None:
            write_json(os.path.join(root, "fid", f"{stage}_vs_teacher.json"), fid_teacher)
    return str(root)


def md_rows(markdown, title):
    """The data rows (as text lines) of the table whose heading contains `title`."""
    lines = markdown.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("###") and title in ln)
    rows = []
    for ln in lines[start + 4:]:
        if not ln.startswith("|"):
            break
        rows.append(ln)
    return rows


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- ΔFID

def test_delta_fid_reproduces_the_thesis_table_3_3():
    transfer = report.delta_fid_percent(127.517, 114.58)   # transfer vs model 2 full
    kd = report.delta_fid_percent(68.69, 63.95)            # KD 2 vs the teacher
    assert transfer == pytest.approx(-11.2908, abs=1e-4)
    assert kd == pytest.approx(-7.4120, abs=1e-4)
    assert report.format_delta(transfer) == "-11.2"        # the thesis' figure: truncated, not rounded (-11.3)
    assert report.format_delta(kd) == "-7.4"
    assert report.format_delta(report.delta_fid_percent(114.58, 114.58)) == "0.0"


def test_delta_fid_sign_and_truncation():
    assert report.delta_fid_percent(90.0, 100.0) == pytest.approx(10.0)   # lower FID than plain: positive
    assert report.format_delta(report.delta_fid_percent(90.0, 100.0)) == "+10.0"
    assert report.format_delta(report.delta_fid_percent(70.0, 60.0)) == "-16.6"  # -16.67 truncated
    assert report.format_delta(-7.4) == "-7.4"                            # float 7.3999... stays 7.4
    assert report.format_delta(0.04) == "0.0"
    assert report.delta_fid_percent(None, 60.0) is None
    assert report.format_delta(None) == "—"


def test_number_formats():
    assert report.fmt_sig(59.5) == "59.5"
    assert report.fmt_sig(4.03) == "4.03"
    assert report.fmt_sig(0.004882) == "0.00488"
    assert report.fmt_sig(1234.4) == "1234"
    assert report.fmt_sig(2.0) == "2.00"
    assert report.fmt_thesis(127.517) == "127.517"
    assert report.fmt_thesis(34) == "34"


# ----------------------------------------------------------------------------- the three tables

@pytest.fixture
def thesis_report(tmp_path):
    runs = make_study(tmp_path / "study")
    out = tmp_path / "report"
    result = report.write_report(runs, str(out))
    return result, out


def test_table_3_1_exact_rows(thesis_report):
    result, out = thesis_report
    assert md_rows(result["markdown"], "Table 3.1") == [
        "| model 1 (teacher, data 1) | 4000 | 63.95 | 63.95 | 0.0500 ± 0.0020 | 59.5 | 59.5 | 4.03 | 2.00 | 4.03 |",
        "| model 2, full training (data 2) | 1000 | 114.58 | 114.58 | 0.0123 ± 0.0011 | 59.8 | 59.8 | 4.03 | 2.00 | 4.03 |",
        "| model 2, transfer learning (data 2) | 1000 | 127.52 | 127.517 | 0.0123 ± 0.0011 | 46.2 | 46.2 | 1.45 | 0.500 | 1.45 |",
    ]
    header = [ln for ln in result["markdown"].splitlines() if ln.startswith("| model | epochs")][0]
    assert "memory GB, device peak (ours)" in header and "memory GB, tensors (ours)" in header
    rows = read_csv(out / "table3_1.csv")
    assert [r["fid"] for r in rows] == ["63.95", "114.58", "127.52"]
    assert [r["fid_thesis"] for r in rows] == ["63.95", "114.58", "127.517"]
    assert rows[0]["kid_mean"] == "0.0500" and rows[0]["kid_std"] == "0.0020"
    assert [r["mem_gb_device"] for r in rows] == ["4.03", "4.03", "1.45"]
    assert [r["mem_gb_tensors"] for r in rows] == ["2.00", "2.00", "0.500"]
    assert [r["sec_per_epoch_thesis"] for r in rows] == ["59.5", "59.8", "46.2"]


def test_table_3_2_exact_rows(thesis_report):
    result, out = thesis_report
    assert md_rows(result["markdown"], "Table 3.2") == [
        "| KD 1 | 0.3 | 1000 | 65.33 | 65.33 | 32.07 | 32.07 | 0.0123 ± 0.0011 | 34.0 | 34 | 1.89 | 0.750 | 1.89 |",
        "| KD 2 | 0.05 | 1000 | 68.69 | 68.69 | 29.80 | 29.8 | 0.0123 ± 0.0011 | 34.0 | 34 | 1.89 | 0.750 | 1.89 |",
        "| KD 3 | 0.01 | 1000 | 68.57 | 68.57 | 31.06 | 31.06 | 0.0123 ± 0.0011 | 34.0 | 34 | 1.89 | 0.750 | 1.89 |",
        "| KD 4 | 0.001 | 1000 | 79.38 | 79.38 | 30.94 | 30.94 | 0.0123 ± 0.0011 | 34.0 | 34 | 1.89 | 0.750 | 1.89 |",
    ]
    rows = read_csv(out / "table3_2.csv")
    assert [r["alpha"] for r in rows] == ["0.3", "0.05", "0.01", "0.001"]
    assert [r["fid_teacher"] for r in rows] == ["32.07", "29.80", "31.06", "30.94"]
    assert [r["mem_gb_thesis"] for r in rows] == ["1.89"] * 4


def test_table_3_3_exact_rows_reproduce_thesis_deltas(thesis_report):
    result, out = thesis_report
    assert md_rows(result["markdown"], "Table 3.3") == [
        "| transfer learning | 1.45 | 0.500 | 1.45 | 182.6 | 186 | -11.2 | -11.2 | model 2 full |",
        "| knowledge distillation (α=0.05) | 1.89 | 0.750 | 1.89 | 37.7 | 38 | -7.4 | -7.4 | model 1 (teacher) |",
        "| plain training | 4.03 | 2.00 | 4.03 | 182.6 | 186 | 0.0 | 0.0 | itself (model 1) |",
    ]
    rows = read_csv(out / "table3_3.csv")
    assert [r["delta_fid_pct"] for r in rows] == ["-11.2", "-7.4", "0.0"]
    assert [r["size_mb"] for r in rows] == ["182.6", "37.7", "182.6"]
    assert [r["mem_gb_device"] for r in rows] == ["1.45", "1.89", "4.03"]
    # complete tables: the only warnings are about the figures (no snapshots or samples in this study)
    assert result["warnings"] and all("no snapshots" in w or "no samples" in w for w in result["warnings"])


def test_table_3_3_kd_alpha_choice_and_our_own_arithmetic(tmp_path):
    stages = dict(THESIS_STUDY)
    stages["full"] = (stages["full"][0], fid_json(100.0), None)
    stages["transfer"] = (stages["transfer"][0], fid_json(90.0), None)     # better than plain: +10.0
    stages["kd_a0.01"] = (stages["kd_a0.01"][0], fid_json(70.0), fid_json(1.0))
    stages["teacher"] = (stages["teacher"][0], fid_json(60.0), None)      # KD 3: -(70 - 60) / 60 = -16.67
    runs = make_study(tmp_path / "study", stages)
    t = report.table_3_3(report.load_runs(runs), kd_alpha=0.01)
    assert t.rows[0][6] == "+10.0"
    assert t.rows[1][0] == "knowledge distillation (α=0.01)"
    assert t.rows[1][6] == "-16.6"
    # the thesis column for α = 0.01: its own FIDs through the same definition, -(68.57 - 63.95) / 63.95
    assert t.rows[1][7] == "-7.2"


def test_missing_stage_shows_dash_and_warns(tmp_path, capsys):
    stages = dict(THESIS_STUDY)
    stages["transfer"] = (None, None, None)                                     # never ran
    stages["kd_a0.01"] = (stages["kd_a0.01"][0], None, None)                    # trained, no FID yet
    runs = make_study(tmp_path / "study", stages)
    out = tmp_path / "report"
    report.main([runs, "--out", str(out)])
    md = (out / "report.md").read_text(encoding="utf-8")
    t1 = md_rows(md, "Table 3.1")
    assert t1[2] == "| model 2, transfer learning (data 2) | — | — | 127.517 | — | — | 46.2 | — | — | 1.45 |"
    t2 = md_rows(md, "Table 3.2")
    assert t2[2] == "| KD 3 | 0.01 | 1000 | — | 68.57 | — | 31.06 | — | 34.0 | 34 | 1.89 | 0.750 | 1.89 |"
    t3 = md_rows(md, "Table 3.3")
    assert t3[0] == "| transfer learning | — | — | 1.45 | — | 186 | — | -11.2 | model 2 full |"
    assert t3[1].startswith("| knowledge distillation (α=0.05) | 1.89 |")  # the others are untouched
    rows = read_csv(out / "table3_1.csv")
    assert rows[2]["fid"] == "" and rows[2]["fid_thesis"] == "127.517"
    err = capsys.readouterr().err
    assert "warning: transfer: missing transfer/summary.json, fid/transfer.json" in err
    assert "warning: kd_a0.01: missing fid/kd_a0.01.json, fid/kd_a0.01_vs_teacher.json" in err
    assert "### Warnings" in md


def test_unreadable_json_is_a_warning_not_a_crash(tmp_path):
    runs = make_study(tmp_path / "study")
    with open(os.path.join(runs, "fid", "full.json"), "w") as f:
        f.write("{not json")
    result = report.write_report(runs, str(tmp_path / "report"))
    assert md_rows(result["markdown"], "Table 3.1")[1].split(" | ")[2] == "—"
    assert any("full: cannot read" in w for w in result["warnings"])


def test_other_alphas_found_are_added(tmp_path):
    stages = dict(THESIS_STUDY)
    stages["kd_a0.5"] = (summary(10, 1.0, 0.1, 0.01, 0.3, alpha=0.5), fid_json(80.0), fid_json(5.0))
    runs = make_study(tmp_path / "study", stages)
    t = report.table_3_2(report.load_runs(runs))
    assert [r[0] for r in t.rows] == ["KD 1", "KD 2", "KD 3", "KD 4", "KD α=0.5"]
    assert t.rows[-1][4] == "—"  # no thesis number for α = 0.5
    t = report.table_3_2(report.load_runs(runs, alphas=[0.5, 0.05]))
    assert [r[1] for r in t.rows] == ["0.5", "0.05"]


# ----------------------------------------------------------------------------- figures

def write_png(path, size, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


def test_timelines_and_grids(tmp_path):
    runs = make_study(tmp_path / "study")
    for stage in ("teacher", "transfer", "kd_a0.05"):
        for epoch in (0, 5, 10):
            write_png(os.path.join(runs, stage, "snapshots", f"epoch_{epoch:06d}.png"), (6 * 10 + 2, 12), epoch * 20)
    for i in range(40):
        write_png(os.path.join(runs, "samples", "teacher", f"{i:05d}.png"), (8, 8), i)
    out = tmp_path / "report"
    result = report.write_report(runs, str(out))
    with Image.open(out / "timelines.png") as im:
        assert im.width > 2 * 62 and im.height > 2 * 3 * 12  # teacher + transfer in the first band, KD below
    with Image.open(out / "grid_teacher.png") as im:
        assert im.size == (6 * 10 + 2, 6 * 10 + 2)          # the first 36 of 40, 6 x 6, 2 px padding
        assert im.getpixel((2 + 5 * 10, 2 + 5 * 10)) == (35, 35, 35)
    assert not (out / "grid_full.png").exists()
    assert "![timelines](timelines.png)" in result["markdown"]
    assert "grid_teacher.png" in result["markdown"]
    assert any("full: no snapshots" in w for w in result["warnings"])
    assert any("full: no samples" in w for w in result["warnings"])


# ----------------------------------------------------------------------------- errors

def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "report.py"), *args],
                          capture_output=True, text=True, timeout=120)


def test_empty_dir_is_one_line_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    r = run_cli(str(tmp_path / "empty"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and "holds no study results" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "empty" / "report").exists()


def test_missing_dir_is_one_line_exit_2(tmp_path):
    r = run_cli(str(tmp_path / "nope"))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "no such directory" in r.stderr


def test_cli_writes_everything(tmp_path):
    runs = make_study(tmp_path / "study")
    r = run_cli(runs, "--alphas", "0.05 0.3", "--kd-alpha", "0.3")
    assert r.returncode == 0, r.stderr
    out = os.path.join(runs, "report")
    assert sorted(os.listdir(out)) == ["report.md", "table3_1.csv", "table3_2.csv", "table3_3.csv"]
    # a complete study, but no snapshots or samples here: the only warnings are about the figures
    warnings = r.stderr.splitlines()
    assert warnings and all(w.startswith("warning: ") and ("no snapshots" in w or "no samples" in w) for w in warnings)
    rows = read_csv(os.path.join(out, "table3_2.csv"))
    assert [r["model"] for r in rows] == ["KD 2", "KD 1"]
    rows = read_csv(os.path.join(out, "table3_3.csv"))
    assert rows[1]["method"] == "knowledge distillation (α=0.3)"
    assert rows[1]["delta_fid_pct"] == "-2.1"  # -(65.33 - 63.95) / 63.95 = -2.158, truncated
