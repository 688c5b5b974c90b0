"""report.py on hand-made study directories: exact tables, the thesis' ΔFID arithmetic, missing stages, errors,
the quality-over-time figure, and running without torch."""
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
            "peak_tensor_mb": tensor_gb * GB, "peak_tensor_parts_mb": {},
            "world_size": 1, "precision": "fp32", "ema": {"decay": 0.999}, **extra}  # keys report.py does not use


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
        "| model 1 (teacher, data 1) | 100000 | — | 63.95 | — | 63.95 | 0.0500 ± 0.0020 | — | 2048 | 1.00x | 4.03 | 4.03 | 2.38 | — | — | 59.5 |",
        "| model 2, full training (data 2) | 25000 | — | 114.58 | — | 114.58 | 0.0123 ± 0.0011 | — | 2048 | 1.00x | 4.03 | 4.03 | 2.39 | — | — | 59.8 |",
        "| model 2, transfer learning (data 2): the thesis' freezing | 25000 | — | 127.52 | — | 127.517 | 0.0123 ± 0.0011 | -11.2% (no noise estimate) | 512 | 0.25x | 1.45 | 1.45 | 1.85 | — | — | 46.2 |",
    ]
    header = [ln for ln in result["markdown"].splitlines() if ln.startswith("| model | generator updates")][0]
    assert "device peak GB (ours)" in header and "tensor peak MB (ours)" in header and "FID@500 ± std" in header
    rows = read_csv(out / "table3_1.csv")
    assert [r["fid"] for r in rows] == ["63.95", "114.58", "127.52"]
    assert [r["fid_thesis"] for r in rows] == ["63.95", "114.58", "127.517"]
    assert rows[0]["kid_mean"] == "0.0500" and rows[0]["kid_std"] == "0.0020"
    assert [r["mem_gb_device"] for r in rows] == ["4.03", "4.03", "1.45"]
    assert [r["peak_tensor_vs_full"] for r in rows] == ["1.00x", "1.00x", "0.25x"]
    assert [r["sec_per_update"] for r in rows] == ["2.38", "2.39", "1.85"]  # sec/epoch / 25 updates
    assert [r["sec_per_epoch_thesis"] for r in rows] == ["59.5", "59.8", "46.2"]


def test_table_3_1_variants_noise_and_thesis_count(tmp_path):
    """A variant row, the bootstrap verdict against full training, FID of the thesis' 500 and the untouched teacher."""
    study = dict(THESIS_STUDY)
    params = dict(params_g=1000, params_d=200, trainable_g=1000, trainable_d=200)
    study["full"] = (summary(60, 25.0, 1.0, 0.04, 4.2, train_sec=1500.0, global_batch=32, **params),
                     dict(fid_json(200.0), fid_bootstrap_std=2.0, n_a=2000), None)
    study["recipe"] = (summary(60, 20.0, 1.0, 0.018, 4.2, train_sec=1200.0, global_batch=32, params_g=1000,
                               params_d=200, trainable_g=100, trainable_d=50),
                       dict(fid_json(150.0), fid_bootstrap_std=1.5, n_a=2000), None)
    study["warmup"] = (summary(60, 20.0, 1.0, 0.018, 4.2, **params), dict(fid_json(205.0), fid_bootstrap_std=2.5), None)
    root = make_study(tmp_path / "study", study)
    write_json(os.path.join(root, "fid", "recipe_n500.json"), fid_json(170.3))
    write_json(os.path.join(root, "fid", "teacher_vs_data2.json"), fid_json(210.0, 0.2, 0.01))
    result = report.write_report(root, str(tmp_path / "report"), variants=["recipe", "warmup"])
    rows = md_rows(result["markdown"], "Table 3.1")
    assert len(rows) == 6 and rows[1].startswith("| model 1 untouched, scored on data 2") and "210.00" in rows[1]
    full, recipe, warmup = rows[2], rows[4], rows[5]
    assert "| 200.00 ± 2.00 |" in full
    # recipe: 50 better than 200 with noise 2 * hypot(1.5, 2) = 5.0; 0.018 / 0.04 of full's tensor peak
    assert "| 1500 | 150 / 1,050 | 150.00 ± 1.50 | 170.3 |" in recipe
    assert "better by 25.0% (\\|Δ\\| 50.0 > 5.0)" in recipe and "| 0.45x |" in recipe
    assert "| 0.800 | 40.0 | 20.0 |" in recipe  # sec/update 20/25, images/s 32/0.8, minutes 1200/60
    assert "tie (\\|Δ\\| 5.0 ≤ 6.4)" in warmup  # 2 * hypot(2.5, 2) = 6.40


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
    assert t1[2] == "| model 2, transfer learning (data 2): the thesis' freezing | — | — | — | — | 127.517 | — | — | — | — | — | 1.45 | — | — | — | 46.2 |"
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


def test_write_error_is_one_line_exit_2(tmp_path):
    runs = make_study(tmp_path / "study")
    (tmp_path / "out" / "report.md").mkdir(parents=True)  # os.replace onto a directory fails
    r = run_cli(runs, "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"error: cannot write {tmp_path / 'out' / 'report.md'}: ")
    assert sorted(os.listdir(tmp_path / "out")) == ["report.md", "table3_1.csv", "table3_2.csv", "table3_3.csv"]


# ----------------------------------------------------------------------------- quality over training time

def metrics(epochs, fid0, every=2, step=25, sec=30.0):
    """metrics.jsonl records as the training scripts write them: FID/KID on every `every`-th epoch only."""
    records = []
    for e in range(1, epochs + 1):
        rec = {"epoch": e, "step": step * e, "d_loss": -1.0, "g_loss": 2.0, "sec": 12.1, "train_sec": sec * e,
               "peak_mem_mb": 100.0, "peak_tensor_mb": 50.0, "images": 1600 * e}
        if e % every == 0:
            rec.update(fid=fid0 / e, kid=fid0 / e / 1000, kid_std=0.004)
        records.append(rec)
    return records


def write_metrics(path, records, extra_line=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
        if extra_line:
            f.write(extra_line)


def pixels(path):
    with Image.open(path) as im:
        return im.size, np.asarray(im.convert("RGB"))


def test_quality_figure_size_colours_and_differences(tmp_path):
    a = {"teacher": metrics(10, 300.0), "student": metrics(10, 200.0, every=5)}
    assert report.quality_figure(a, str(tmp_path / "a.png"), title="runs") == ["teacher", "student"]
    size, img = pixels(tmp_path / "a.png")
    assert size == (1000, 700)
    for colour in report.PALETTE[:2]:  # both curves drawn
        rgb = tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
        assert (img == rgb).all(axis=2).sum() > 200
    assert not (img == tuple(int(report.PALETTE[2][i:i + 2], 16) for i in (1, 3, 5))).all(axis=2).any()
    # other numbers, another picture
    report.quality_figure({"teacher": metrics(10, 300.0), "student": metrics(10, 150.0, every=5)},
                          str(tmp_path / "b.png"), title="runs")
    assert (pixels(tmp_path / "b.png")[1] != img).any()
    # epochs without "fid" are skipped: dropping them (and a far-away unevaluated step) changes nothing
    only_evaluated = {k: [r for r in v if "fid" in r] for k, v in a.items()}
    a["teacher"].append({"epoch": 11, "step": 10 ** 6, "train_sec": 10 ** 6})
    report.quality_figure(a, str(tmp_path / "c.png"), title="runs")
    report.quality_figure(only_evaluated, str(tmp_path / "d.png"), title="runs")
    assert (pixels(tmp_path / "c.png")[1] == pixels(tmp_path / "d.png")[1]).all()
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_quality_figure_without_evaluations(tmp_path):
    assert report.quality_figure({"run": metrics(3, 100.0, every=10)}, str(tmp_path / "none.png")) == []
    assert report.quality_figure({}, str(tmp_path / "empty.png")) == []
    report.quality_figure({"run": [{"epoch": 1, "step": 5, "train_sec": 1.0, "fid": 80.0, "kid": None}]},
                          str(tmp_path / "one.png"))  # a single point, no KID: no zero-width axis
    size, none = pixels(tmp_path / "none.png")
    assert size == (1000, 700)
    assert (none != pixels(tmp_path / "empty.png")[1]).any()  # the legend lists "run (no evaluations)"
    assert (pixels(tmp_path / "one.png")[1] != none).any()


def test_ticks_are_round_and_cover_the_data():
    ticks, decimals = report._ticks(3.2, 61.0)
    assert ticks == [0, 20, 40, 60, 80] and decimals == 0  # (61 - 3.2) / 5 = 11.6 -> steps of 20
    ticks, decimals = report._ticks(0.0071, 0.13)
    assert ticks[0] <= 0.0071 and ticks[-1] >= 0.13 and decimals == 2 and len(ticks) <= 8
    ticks, _ = report._ticks(80.0, 80.0)
    assert ticks[0] < 80.0 < ticks[-1]


def test_study_report_writes_quality_png(tmp_path):
    runs = make_study(tmp_path / "study")
    write_metrics(os.path.join(runs, "teacher", "metrics.jsonl"), metrics(8, 300.0))
    write_metrics(os.path.join(runs, "kd_a0.05", "metrics.jsonl"), metrics(8, 200.0, step=100, sec=10.0))
    write_metrics(os.path.join(runs, "full", "metrics.jsonl"), metrics(3, 250.0, every=10), '{"epoch": 4, "st')
    result = report.write_report(runs, str(tmp_path / "report"))
    size, img = pixels(tmp_path / "report" / "quality.png")
    assert size == (1000, 700) and (img != 255).any()
    assert "![quality over training](quality.png)" in result["markdown"]
    assert "(model 1 (teacher), KD 2, alpha=0.05)" in result["markdown"]
    assert any("full/metrics.jsonl: 1 unreadable line(s) skipped" in w for w in result["warnings"])
    # metrics without any evaluation: no figure
    runs = make_study(tmp_path / "study2")
    write_metrics(os.path.join(runs, "teacher", "metrics.jsonl"), metrics(3, 300.0, every=10))
    result = report.write_report(runs, str(tmp_path / "report2"))
    assert not (tmp_path / "report2" / "quality.png").exists() and "quality.png" not in result["markdown"]


# ----------------------------------------------------------------------------- no torch needed

def test_runs_without_torch_or_numpy(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    for name in ("torch", "numpy"):
        (blocker / f"{name}.py").write_text(f"raise ImportError('{name} is blocked in this test')\n")
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    probe = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker works
    runs = make_study(tmp_path / "study")
    write_metrics(os.path.join(runs, "transfer", "metrics.jsonl"), metrics(4, 200.0))
    for epoch in (0, 5):
        write_png(os.path.join(runs, "teacher", "snapshots", f"epoch_{epoch:06d}.png"), (20, 10), 90)
    write_png(os.path.join(runs, "samples", "full", "00000.png"), (8, 8), 7)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "report.py"), runs], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = os.path.join(runs, "report")
    assert sorted(os.listdir(out)) == ["grid_full.png", "quality.png", "report.md", "table3_1.csv", "table3_2.csv",
                                       "table3_3.csv", "timelines.png"]
    assert [r["fid"] for r in read_csv(os.path.join(out, "table3_1.csv"))] == ["63.95", "114.58", "127.52"]
    h = subprocess.run([sys.executable, os.path.join(ROOT, "report.py"), "--help"], env=env, capture_output=True,
                       text=True, timeout=60)
    assert h.returncode == 0 and "(default: 0.05)" in h.stdout and "quality.png" in h.stdout


def test_memory_columns_come_from_the_memory_stage_where_it_exists(tmp_path):
    """memory/<stage>/summary.json (experiments.sh: the stage's command for 3 iterations, no evaluations) gives the
    memory cells; a stage without it keeps its training run's figures."""
    runs = make_study(tmp_path / "study")
    write_json(os.path.join(runs, "memory", "transfer", "summary.json"),
               summary(1, 1.0, 0.9, 0.25, 182.6))  # device 0.9 GB, tensors 0.25 GB against full's 2.0
    result = report.write_report(runs, str(tmp_path / "report"))
    rows = read_csv(tmp_path / "report" / "table3_1.csv")
    assert [r["mem_gb_device"] for r in rows] == ["4.03", "4.03", "0.900"]
    assert [r["peak_tensor_vs_full"] for r in rows] == ["1.00x", "1.00x", "0.12x"]
    assert [r["sec_per_update"] for r in rows] == ["2.38", "2.39", "1.85"]  # time still from the training run
    assert "memory/<stage>" in result["markdown"]
