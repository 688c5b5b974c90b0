"""The thesis' result tables 3.1-3.3 from a study directory (experiments.sh), with the thesis' numbers beside ours.

Reads `<runs>/<stage>/summary.json` (training: sec/epoch, model size), `<runs>/memory/<stage>/summary.json`
(training memory, measured on its own; the stage's summary where missing) and `<runs>/fid/<stage>.json`
(compute_fid.py --json: FID, KID) for the stages teacher, full, transfer and kd_a<alpha>, and writes into
--out (default <runs>/report):
    report.md                 the three tables in Markdown, notes, warnings, the figures
    table3_1.csv ...3_3.csv   the same tables as CSV (a missing value is an empty cell)
    timelines.png             the fixed-vector timelines of every run side by side (thesis Figs. 3.2, 3.5, 3.6)
    grid_<stage>.png          the first 36 samples of each model (<runs>/samples/<stage>)
    quality.png               FID and KID vs generator updates and vs training time of every run, from the
                              evaluation epochs of <runs>/<stage>/metrics.jsonl (only when some run has them)
A stage that has not run yet shows "—" in its cells and one warning line; nothing crashes.
Needs only the standard library and Pillow (no torch), so a results folder can be tabulated on any machine;
`quality_figure` is what the training scripts call to draw <run>/quality.png after each evaluation.

Definitions:
- FID as compute_fid.py: pytorch-fid's Inception pool3 features (or --dims of experiments.sh), N vs N images.
- sec/epoch: the median wall time of one epoch of that script (an epoch = --iters-per-epoch generator updates;
  the thesis: WGAN-GP 200 critic + 25 generator updates, KD 100 + 100).
- memory, two ways (harness.MemoryMeter): "device peak" = summary `peak_mem_mb` (CUDA allocator peak on a GPU,
  what the thesis measured; the process' peak RSS on a CPU, which includes Python and torch themselves) and
  "tensors" = `peak_tensor_mb` (parameters + gradients + optimizer state + saved activations, device
  independent). GB here = MiB / 1024.
- model size: the generator's fp32 state_dict in MiB (`generator_mb`).
- ΔFID %: see `delta_fid_percent`.

Examples:
    python report.py runs/study                     # -> runs/study/report/
    python report.py runs/study --out /tmp/report --kd-alpha 0.01
    python report.py /tmp/demo_study --alphas "0.3 0.05"
"""
import argparse
import csv
import glob
import io
import json
import math
import os
import re
import sys

# ----------------------------------------------------------------------------- errors and writes
# Small copies of harness.py's UserError / run_main / atomic_write: harness imports torch, and this file must not.

class UserError(Exception):
    """A mistake of the user's (bad path, unwritable folder): one line on stderr and exit status 2."""


def run_main(main):
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def atomic_write(path, write):
    """Write through `write(tmp)` to a temp file beside `path`, then rename; an OSError becomes a UserError."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_text(path, text):
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    atomic_write(path, write)


# ----------------------------------------------------------------------------- the thesis' numbers

THESIS_ALPHAS = (0.3, 0.05, 0.01, 0.001)
THESIS = {
    # Table 3.1: FID, sec per epoch, training GPU memory GB
    "teacher": {"fid": 63.95, "sec": 59.5, "mem_gb": 4.03, "size_mb": 186},
    "full": {"fid": 114.58, "sec": 59.8, "mem_gb": 4.03, "size_mb": 186},
    "transfer": {"fid": 127.517, "sec": 46.2, "mem_gb": 1.45, "size_mb": 186, "delta": -11.2},
    # Table 3.2: FID vs dataset 1, FID vs teacher; all KD models 34 s/epoch, 1.89 GB, 38 MB
    0.3: {"name": "KD 1", "fid": 65.33, "fid_teacher": 32.07},
    0.05: {"name": "KD 2", "fid": 68.69, "fid_teacher": 29.8, "delta": -7.4},
    0.01: {"name": "KD 3", "fid": 68.57, "fid_teacher": 31.06},
    0.001: {"name": "KD 4", "fid": 79.38, "fid_teacher": 30.94},
}
THESIS_KD = {"sec": 34, "mem_gb": 1.89, "size_mb": 38}
STAGE_LABEL = {"teacher": "model 1 (teacher, data 1)", "full": "model 2, full training (data 2)",
               "transfer": "model 2, transfer learning (data 2): the thesis' freezing",
               "freezed": "transfer: FreezeD (all of G, critic layer1-2 frozen)",
               "g_image": "transfer: G's image-side blocks frozen instead",
               "warmup": "transfer: thesis' freezing + critic warm-up",
               "ema_init": "transfer: thesis' freezing + start from the teacher's EMA",
               "finetune_all": "transfer: nothing frozen, lr 5e-5",
               "low_lr": "transfer: thesis' freezing at lr 1e-5",
               "recipe": "transfer: G layer1-2 + critic layer1-2 frozen, warm-up, EMA start, lr 5e-5"}
MISSING = "—"


# ----------------------------------------------------------------------------- ΔFID

def delta_fid_percent(fid_method, fid_plain):
    """ΔFID of a method vs plain training, in percent, as the thesis' Table 3.3 defines it.

        ΔFID % = -(FID_method - FID_plain) / FID_plain * 100

    Negative = the method's FID is higher (worse) than plain training's; 0 for plain training itself. "Plain"
    is the ordinary training of the same generator on the same data: model 2 full for transfer learning
    (both on dataset 2), the teacher (model 1) for distillation (both on dataset 1). The thesis' own numbers:
    transfer 127.517 vs full 114.58 -> -11.29 %, printed -11.2; KD 2 68.69 vs teacher 63.95 -> -7.41 %,
    printed -7.4. -11.29 rounds to -11.3, so the thesis truncated toward zero; `format_delta` does the same,
    which reproduces both of its figures exactly. None when either FID is missing.
    """
    if fid_method is None or fid_plain is None:
        return None
    return -(fid_method - fid_plain) / fid_plain * 100.0


def format_delta(value):
    """One decimal, truncated toward zero as in the thesis (-11.29 -> "-11.2"), signed ("+3.1"); "0.0" for zero."""
    if value is None:
        return MISSING
    tenths = math.trunc(value * 10 + math.copysign(1e-9, value))  # 1e-9: 7.4 stored as 7.39999... stays 7.4
    return "0.0" if tenths == 0 else f"{tenths / 10:+.1f}"


# ----------------------------------------------------------------------------- number formats

def fmt_sig(value, digits=3):
    """`digits` significant digits, never an exponent: 59.5, 4.03, 0.00488, 1234."""
    if value is None:
        return MISSING
    if value == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    return f"{value:.{decimals}f}"


def fmt_fixed(decimals):
    return lambda v: MISSING if v is None else f"{v:.{decimals}f}"


def fmt_thesis(value):
    """The thesis' numbers as it printed them (127.517, 29.8, 34)."""
    return MISSING if value is None else f"{value:g}"


def fmt_kid(mean, std):
    if mean is None:
        return MISSING
    return f"{mean:.4f} ± {std:.4f}" if std is not None else f"{mean:.4f}"


# ----------------------------------------------------------------------------- reading a study

def _read_json(path, warnings, what):
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            obj = json.load(f)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        return obj
    except (OSError, ValueError) as e:
        warnings.append(f"{what}: cannot read {path} ({e}); shown as {MISSING}")
        return None


def kd_stage(alpha):
    """The run directory name experiments.sh gives an alpha: kd_a0.05."""
    return f"kd_a{alpha:g}"


def find_kd_stages(runs_dir):
    """{alpha: stage name} of the kd_a<alpha> folders under runs_dir (or of their FID files)."""
    found = {}
    names = [os.path.basename(p) for p in glob.glob(os.path.join(runs_dir, "kd_a*"))]
    names += [os.path.basename(p)[:-5] for p in glob.glob(os.path.join(runs_dir, "fid", "kd_a*.json"))
              if not p.endswith("_vs_teacher.json")]
    for name in names:
        m = re.fullmatch(r"kd_a([0-9.]+)", name)
        if m:
            try:
                found.setdefault(float(m.group(1)), name)
            except ValueError:
                pass
    return found


def _thesis_count_fid(runs_dir, stage, warnings):
    """fid/<stage>_n<M>.json (the FID of the first M images per side, experiments.sh --n-thesis), or None."""
    found = sorted(glob.glob(os.path.join(glob.escape(runs_dir), "fid", f"{glob.escape(stage)}_n[0-9]*.json")))
    return _read_json(found[0], warnings, stage) if found else None


def load_runs(runs_dir, alphas=None, variants=()):
    """Everything the tables need from a study directory.

    Returns {"root", "stages": {stage: {"summary", "fid", "fid_teacher", "alpha"}}, "kd": [(alpha, stage)],
    "warnings": [...]}. `alphas`: the KD rows, in order (default: the thesis' four, then any other kd_a*
    found). A missing or unreadable file gives None and a warning. A directory without any result at all is
    a UserError.
    """
    if not os.path.isdir(runs_dir):
        raise UserError(f"{runs_dir}: no such directory (give the --out of experiments.sh, e.g. runs/study)")
    found = find_kd_stages(runs_dir)
    if alphas is None:
        alphas = list(THESIS_ALPHAS) + sorted((a for a in found if a not in THESIS_ALPHAS), reverse=True)
    kd = [(a, found.get(a, kd_stage(a))) for a in alphas]
    warnings = []
    stages = {}
    data2 = ["full", "transfer"] + [v for v in variants if v not in ("full", "transfer")]
    for stage, alpha in [("teacher", None)] + [(s, None) for s in data2] + [(s, a) for a, s in kd]:
        rec = {"alpha": alpha, "summary": _read_json(os.path.join(runs_dir, stage, "summary.json"), warnings, stage),
               "fid": _read_json(os.path.join(runs_dir, "fid", f"{stage}.json"), warnings, stage),
               "fid_thesis_count": _thesis_count_fid(runs_dir, stage, warnings), "fid_teacher": None,
               "memory": _read_json(os.path.join(runs_dir, "memory", stage, "summary.json"), [], stage)}
        if alpha is not None:
            rec["fid_teacher"] = _read_json(os.path.join(runs_dir, "fid", f"{stage}_vs_teacher.json"), warnings, stage)
        stages[stage] = rec
    if not any(r["summary"] or r["fid"] or r["fid_teacher"] for r in stages.values()):
        raise UserError(f"{runs_dir} holds no study results (no <stage>/summary.json, no fid/<stage>.json): "
                        f"run experiments.sh --out {runs_dir} first")
    for stage, rec in stages.items():
        missing = [f"{stage}/summary.json"] if rec["summary"] is None else []
        missing += [f"fid/{stage}.json"] if rec["fid"] is None else []
        if rec["alpha"] is not None and rec["fid_teacher"] is None:
            missing.append(f"fid/{stage}_vs_teacher.json")
        if missing:
            warnings.append(f"{stage}: missing {', '.join(missing)}; its cells show {MISSING}")
    untouched = _read_json(os.path.join(runs_dir, "fid", "teacher_vs_data2.json"), warnings, "teacher")
    return {"root": runs_dir, "stages": stages, "kd": kd, "data2": data2, "teacher_vs_data2": untouched,
            "warnings": warnings}


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or d.get(k) is None:
            return None
        d = d[k]
    return d


def _num(d, *keys):
    """A number in nested dicts, or None where missing or not a finite number (a hand-edited or foreign file)."""
    value = _get(d, *keys)
    return value if _number(value) is not None else None


def _gb(summary, key):
    mb = _num(summary, key)
    return None if mb is None else mb / 1024.0


def _row_values(rec):
    """The measured values of one stage (None where missing or not a number)."""
    s = rec["summary"]
    m = rec.get("memory") or s  # memory/<stage>: the same command's training memory measured on its own
    iters, sec = _num(s, "args", "iters_per_epoch"), _num(s, "sec_per_epoch")
    sec_update = sec / iters if sec and iters else None
    trainable = [_num(s, k) for k in ("trainable_g", "trainable_d")]
    total = [_num(s, k) for k in ("params_g", "params_d")]
    return {"fid": _num(rec["fid"], "fid"), "kid": _num(rec["fid"], "kid_mean"), "kid_std": _num(rec["fid"], "kid_std"),
            "fid_std": _num(rec["fid"], "fid_bootstrap_std"), "n": _num(rec["fid"], "n_a"),
            "fid_thesis_count": _num(rec.get("fid_thesis_count"), "fid"),
            "n_thesis_count": _num(rec.get("fid_thesis_count"), "n_a"),
            "fid_teacher": _num(rec["fid_teacher"], "fid"), "sec": sec, "epochs": _num(s, "epochs"),
            "updates": _num(s, "steps"), "sec_update": sec_update,
            "images_per_s": _num(s, "global_batch") / sec_update if sec_update and _num(s, "global_batch") else None,
            "train_min": _num(s, "train_sec") / 60 if _num(s, "train_sec") else None,
            "trainable": sum(trainable) if None not in trainable else None,
            "frozen": sum(total) - sum(trainable) if None not in trainable + total else None,
            "mem_device_gb": _gb(m, "peak_mem_mb"), "mem_tensor_gb": _gb(m, "peak_tensor_mb"),
            "mem_tensor_mb": _num(m, "peak_tensor_mb"), "size_mb": _num(s, "generator_mb")}


def verdict(v, ref):
    """How a data-2 run compares with from-scratch training: 'better by X%' / 'worse by X%' when the FID
    difference exceeds twice the combined bootstrap std (sqrt(std_1^2 + std_2^2)), else 'tie'."""
    if v["fid"] is None or ref["fid"] is None:
        return None
    if v["fid_std"] is None or ref["fid_std"] is None:
        return f"{format_delta(delta_fid_percent(v['fid'], ref['fid']))}% (no noise estimate)"
    diff = ref["fid"] - v["fid"]
    noise = 2 * math.hypot(v["fid_std"], ref["fid_std"])
    if abs(diff) <= noise:
        return f"tie (|Δ| {abs(diff):.1f} ≤ {noise:.1f})"
    return f"{'better' if diff > 0 else 'worse'} by {abs(diff) / ref['fid'] * 100:.1f}% (|Δ| {abs(diff):.1f} > {noise:.1f})"


# ----------------------------------------------------------------------------- tables

class Table:
    """A titled table: `columns` = [(markdown header, csv header)], `rows` = [[markdown cell]] and matching
    `csv_rows` (same cells, a missing value empty, KID split into mean and std), plus notes under it."""

    def __init__(self, name, title, columns, notes=()):
        self.name, self.title, self.columns, self.notes = name, title, columns, list(notes)
        self.rows, self.csv_rows = [], []

    def add(self, cells):
        """cells: [(markdown text, [csv values])] per column."""
        self.rows.append([md for md, _ in cells])
        self.csv_rows.append([v for _, values in cells for v in values])

    @property
    def csv_header(self):
        return [h for _, hs in self.columns for h in hs]


def _cell(fmt, value):
    text = fmt(value)
    return text, ["" if value is None else text]


def _kid_cell(mean, std):
    return fmt_kid(mean, std), ["" if mean is None else f"{mean:.4f}", "" if std is None else f"{std:.4f}"]


def _text(value):
    return (MISSING if value is None else str(value)), ["" if value is None else str(value)]


MEM_COLUMNS = [("memory GB, device peak (ours)", ["mem_gb_device"]), ("memory GB, tensors (ours)", ["mem_gb_tensors"]),
               ("memory GB (thesis)", ["mem_gb_thesis"])]
MEM_NOTE = ("memory: \"device peak\" = `peak_mem_mb` (on CUDA the allocator's peak, as the thesis measured; on a "
            "CPU the process' peak RSS, Python and torch included); \"tensors\" = `peak_tensor_mb` (parameters, "
            "gradients, optimizer state and saved activations; device independent); GB = MiB / 1024; both from "
            "memory/<stage> (the stage's command for 3 iterations without evaluations) where it exists, else from "
            "the training run.")


def table_3_1(runs):
    """Table 3.1, transfer learning: model 1 (teacher), the teacher untouched on data 2, model 2 full, model 2
    transfer (the thesis' freezing) and every transfer variant of the study."""
    stages = runs["stages"]
    full = _row_values(stages["full"])
    n = next((v["n"] for v in map(_row_values, stages.values()) if v["n"]), None)
    m = next((v["n_thesis_count"] for v in map(_row_values, stages.values()) if v["n_thesis_count"]), None)
    t = Table("table3_1", "Table 3.1 — transfer learning", [
        ("model", ["model"]), ("generator updates", ["updates"]),
        ("trainable / frozen params (G+D)", ["trainable_params", "frozen_params"]),
        (f"FID@{n or 'N'} ± std (ours)", ["fid", "fid_std"]), (f"FID@{m or 'M'} (ours)", ["fid_thesis_count"]),
        ("FID (thesis)", ["fid_thesis"]), ("KID (ours)", ["kid_mean", "kid_std"]),
        ("vs full training (ours)", ["vs_full"]),
        ("tensor peak MB (ours)", ["peak_tensor_mb"]), ("tensor peak vs full", ["peak_tensor_vs_full"]),
        ("device peak GB (ours)", ["mem_gb_device"]), ("memory GB (thesis)", ["mem_gb_thesis"]),
        ("sec/update (ours)", ["sec_per_update"]), ("images/s (ours)", ["images_per_s"]),
        ("minutes (ours)", ["train_min"]), ("sec/epoch (thesis)", ["sec_per_epoch_thesis"])],
        notes=[f"FID@{n or 'N'}: all samples of a model vs as many real images of its data, ± the std of FID over "
               "bootstrap resamples of the samples; FID@M: the first M per side (the thesis' protocol, 500). KID: "
               "mean ± std over subsets. Model 1 is scored against data 1, every other row against data 2.",
               "vs full training: better / worse when the FID difference exceeds twice the combined bootstrap std, "
               "else a tie.",
               "tensor peak: parameters + gradients + optimizer state + saved activations of training; device "
               "peak: the process' peak RSS on a CPU (Python and torch included), the allocator's peak on CUDA; "
               "both from memory/<stage>, the stage's command run for 3 iterations without evaluations in a fresh "
               "process (else from the training run, whose evaluator loads after the measured iterations).",
               "sec/update: one generator update with its critic updates (median epoch / updates per epoch); "
               "images/s: generated images per second of training; minutes: training time, evaluations excluded.",
               "The thesis' epochs are 25 generator + 200 critic updates, at 128x128, width 1, on a GPU."])

    def add(label, v, th, vs_full):
        ratio = v["mem_tensor_mb"] / full["mem_tensor_mb"] if v["mem_tensor_mb"] and full["mem_tensor_mb"] else None
        t.add([_text(label), _text(v.get("updates")),
               (MISSING if v.get("trainable") is None else f"{v['trainable']:,} / {v['frozen']:,}",
                ["" if v.get("trainable") is None else v["trainable"], "" if v.get("frozen") is None else v["frozen"]]),
               (MISSING if v["fid"] is None else f"{v['fid']:.2f}" + (f" ± {v['fid_std']:.2f}" if v.get("fid_std") else ""),
                ["" if v["fid"] is None else f"{v['fid']:.2f}", "" if not v.get("fid_std") else f"{v['fid_std']:.2f}"]),
               _cell(fmt_fixed(1), v.get("fid_thesis_count")), _cell(fmt_thesis, th.get("fid")),
               _kid_cell(v["kid"], v["kid_std"]), _text(vs_full),
               _cell(fmt_sig, v.get("mem_tensor_mb")), _cell(lambda r: MISSING if r is None else f"{r:.2f}x", ratio),
               _cell(fmt_sig, v.get("mem_device_gb")), _cell(fmt_thesis, th.get("mem_gb")),
               _cell(fmt_sig, v.get("sec_update")), _cell(fmt_sig, v.get("images_per_s")),
               _cell(fmt_fixed(1), v.get("train_min")), _cell(fmt_thesis, th.get("sec"))])

    add(STAGE_LABEL["teacher"], _row_values(stages["teacher"]), THESIS["teacher"], None)
    u = runs.get("teacher_vs_data2")
    if u:
        add("model 1 untouched, scored on data 2 (where transfer starts)",
            {"fid": u.get("fid"), "fid_std": None, "kid": u.get("kid_mean"), "kid_std": u.get("kid_std"),
             "mem_tensor_mb": None}, {}, None)
    for stage in runs["data2"]:
        v = _row_values(stages[stage])
        add(STAGE_LABEL.get(stage, f"transfer: {stage}"), v, THESIS.get(stage, {}),
            None if stage == "full" else verdict(v, full))
    return t


def table_3_2(runs):
    """Table 3.2, knowledge distillation: one row per alpha."""
    t = Table("table3_2", "Table 3.2 — knowledge distillation", [
        ("model", ["model"]), ("α", ["alpha"]), ("epochs (ours)", ["epochs"]),
        ("FID vs data 1 (ours)", ["fid"]), ("FID vs data 1 (thesis)", ["fid_thesis"]),
        ("FID vs teacher (ours)", ["fid_teacher"]), ("FID vs teacher (thesis)", ["fid_teacher_thesis"]),
        ("KID vs data 1 (ours)", ["kid_mean", "kid_std"]), ("sec/epoch (ours)", ["sec_per_epoch"]),
        ("sec/epoch (thesis)", ["sec_per_epoch_thesis"])] + MEM_COLUMNS,
        notes=["FID vs teacher: the student's samples vs the teacher's samples (same count, same seed).", MEM_NOTE])
    for alpha, stage in runs["kd"]:
        v = _row_values(runs["stages"][stage])
        th = THESIS.get(alpha, {})
        name = th.get("name", f"KD α={alpha:g}")
        t.add([_text(name), _text(f"{alpha:g}"), _text(v["epochs"]), _cell(fmt_fixed(2), v["fid"]),
               _cell(fmt_thesis, th.get("fid")), _cell(fmt_fixed(2), v["fid_teacher"]),
               _cell(fmt_thesis, th.get("fid_teacher")), _kid_cell(v["kid"], v["kid_std"]), _cell(fmt_sig, v["sec"]),
               _cell(fmt_thesis, THESIS_KD["sec"] if th else None), _cell(fmt_sig, v["mem_device_gb"]),
               _cell(fmt_sig, v["mem_tensor_gb"]), _cell(fmt_thesis, THESIS_KD["mem_gb"] if th else None)])
    return t


def table_3_3(runs, kd_alpha=0.05):
    """Table 3.3, summary: transfer learning, distillation (`kd_alpha`'s run), plain training (the teacher)."""
    stages = runs["stages"]
    kd_name = dict(runs["kd"]).get(kd_alpha, kd_stage(kd_alpha))
    kd_rec = stages.get(kd_name) or {"summary": None, "fid": None, "fid_teacher": None}
    teacher, full, transfer, kd = (_row_values(stages["teacher"]), _row_values(stages["full"]),
                                   _row_values(stages["transfer"]), _row_values(kd_rec))
    t = Table("table3_3", "Table 3.3 — summary", [
        ("method", ["method"]), ("memory GB, device peak (ours)", ["mem_gb_device"]),
        ("memory GB, tensors (ours)", ["mem_gb_tensors"]), ("memory GB (thesis)", ["mem_gb_thesis"]),
        ("model size MB (ours)", ["size_mb"]), ("model size MB (thesis)", ["size_mb_thesis"]),
        ("ΔFID % vs plain (ours)", ["delta_fid_pct"]), ("ΔFID % vs plain (thesis)", ["delta_fid_pct_thesis"]),
        ("ΔFID reference", ["delta_fid_reference"])],
        notes=["ΔFID % = -(FID_method - FID_plain) / FID_plain * 100, truncated to one decimal as the thesis did "
               "(its -11.2 is -11.29); negative = worse than plain training. Plain training = the same generator "
               "trained normally on the same data: model 2 full (data 2) for transfer learning, model 1 (the "
               "teacher, data 1) for distillation.",
               f"knowledge distillation row: the α = {kd_alpha:g} run ({kd_name}); the thesis' best was α = 0.05 "
               "(report.py --kd-alpha to choose another).",
               "plain training row: model 1 (the teacher): its memory and size; its ΔFID is 0 by definition.",
               "model size: the generator's fp32 state_dict in MiB (the thesis' 186 MB / 38 MB are its saved files).",
               MEM_NOTE])
    th_t, th_k = THESIS["transfer"], THESIS.get(kd_alpha, {})

    def row(method, v, thesis_mem, thesis_size, delta, thesis_delta, plain):
        t.add([_text(method), _cell(fmt_sig, v["mem_device_gb"]), _cell(fmt_sig, v["mem_tensor_gb"]),
               _cell(fmt_thesis, thesis_mem), _cell(fmt_fixed(1), v["size_mb"]), _cell(fmt_thesis, thesis_size),
               (format_delta(delta), ["" if delta is None else format_delta(delta)]),
               (format_delta(thesis_delta), ["" if thesis_delta is None else format_delta(thesis_delta)]),
               _text(plain)])

    row("transfer learning", transfer, th_t["mem_gb"], th_t["size_mb"],
        delta_fid_percent(transfer["fid"], full["fid"]), th_t["delta"], "model 2 full")
    row(f"knowledge distillation (α={kd_alpha:g})", kd, THESIS_KD["mem_gb"] if th_k else None,
        THESIS_KD["size_mb"] if th_k else None, delta_fid_percent(kd["fid"], teacher["fid"]),
        th_k.get("delta", delta_fid_percent(th_k.get("fid"), THESIS["teacher"]["fid"])), "model 1 (teacher)")
    row("plain training", teacher, THESIS["teacher"]["mem_gb"], THESIS["teacher"]["size_mb"],
        None if teacher["fid"] is None else 0.0, 0.0, "itself (model 1)")
    return t


# ----------------------------------------------------------------------------- output formats

def _md_escape(text):
    return str(text).replace("|", "\\|")


def to_markdown(table):
    """The table as Markdown: `### title`, the header, the rows, then its notes as a list."""
    lines = [f"### {table.title}", "",
             "| " + " | ".join(_md_escape(h) for h, _ in table.columns) + " |",
             "|" + "|".join("---" for _ in table.columns) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in table.rows]
    if table.notes:
        lines.append("")
        lines += [f"- {n}" for n in table.notes]
    return "\n".join(lines) + "\n"


def to_csv(table, path=None):
    """The table as CSV text (a header row, then one row per model); also written to `path` if given."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.csv_header)
    writer.writerows(table.csv_rows)
    text = buf.getvalue()
    if path is not None:
        _write_text(path, text)
    return text


# ----------------------------------------------------------------------------- figures

def _font(size=14):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _snapshot_rows(run_dir, max_rows=8, warnings=None):
    """[(epoch, row image)] from <run>/snapshots/epoch_*.png, at most `max_rows` evenly spread (last kept);
    falls back to the one timeline.png (epoch None) when there are no snapshots; unreadable files are left out."""
    files = sorted(f for f in glob.glob(os.path.join(glob.escape(run_dir), "snapshots", "epoch_*.png"))
                   if re.search(r"epoch_\d+\.png$", f))  # not a copy such as "epoch_000010 (1).png"
    if len(files) > max_rows:
        idx = sorted({round(i * (len(files) - 1) / (max_rows - 1)) for i in range(max_rows)})
        files = [files[i] for i in idx]
    rows = []
    for f in files:
        m = re.search(r"epoch_(\d+)\.png$", f)
        image = _read_image(f, warnings)
        if image:
            rows.append((int(m.group(1)), image))
    if not rows and os.path.isfile(os.path.join(run_dir, "timeline.png")):
        image = _read_image(os.path.join(run_dir, "timeline.png"), warnings)
        if image:
            rows.append((None, image))
    return rows


def _read_image(path, warnings=None):
    """An RGB PIL image, or None (a warning appended) for a file that is empty, truncated or not an image."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for broken files
        if warnings is not None:
            warnings.append(f"{path}: cannot read it ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__}); left out")
        return None


def stage_label(runs, stage):
    alpha = runs["stages"][stage]["alpha"]
    if alpha is None:
        return {"teacher": "model 1 (teacher)", "full": "model 2 full", "transfer": "model 2 transfer"}.get(stage, stage)
    return f"{THESIS[alpha]['name']}, alpha={alpha:g}" if alpha in THESIS else f"KD alpha={alpha:g}"


def timelines_figure(runs, path, max_rows=8):
    """The fixed-vector timelines of the runs side by side, a label above each and the epoch left of each row:
    teacher, full and transfer in the first band (thesis Fig. 3.2), the KD runs in the second (Figs. 3.5/3.6).
    Returns the stages drawn ([] and no file when none has snapshots)."""
    from PIL import Image, ImageDraw
    font = _font()
    bands = [["teacher", "full", "transfer"], [stage for _, stage in runs["kd"]]]
    panels = []  # per band: [(stage, label, rows)]
    for band in bands:
        panels.append([])
        for stage in band:
            rows = _snapshot_rows(os.path.join(runs["root"], stage), max_rows, runs["warnings"])
            if rows:
                panels[-1].append((stage, stage_label(runs, stage), rows))
            else:
                runs["warnings"].append(f"{stage}: no snapshots/ or timeline.png; left out of timelines.png")
    panels = [band for band in panels if band]
    if not panels:
        return []
    pad, label_h, epoch_w = 10, 20, 56

    def size(rows):
        return epoch_w + max(r.width for _, r in rows), label_h + sum(r.height + 2 for _, r in rows)

    band_w = [sum(size(rows)[0] for _, _, rows in band) + pad * (len(band) - 1) for band in panels]
    band_h = [max(size(rows)[1] for _, _, rows in band) for band in panels]
    sheet = Image.new("RGB", (max(band_w) + 2 * pad, sum(band_h) + pad * (len(panels) + 1)), "white")
    draw = ImageDraw.Draw(sheet)
    y0 = pad
    for band, h in zip(panels, band_h):
        x = pad
        for stage, label, rows in band:
            draw.text((x + epoch_w, y0), label, fill="black", font=font)
            y = y0 + label_h
            for epoch, im in rows:
                if epoch is not None:
                    draw.text((x, y + im.height // 2 - 8), f"ep {epoch}", fill="black", font=font)
                sheet.paste(im, (x + epoch_w, y))
                y += im.height + 2
            x += size(rows)[0] + pad
        y0 += h + pad
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return [stage for band in panels for stage, _, _ in band]


def sample_grid(folder, path, n=36, ncol=6, warnings=None):
    """The first `n` NNNNN.png images of a samples folder as one grid (2 px white padding); False if none."""
    from PIL import Image
    files = sorted(f for f in glob.glob(os.path.join(folder, "*.png")) if re.fullmatch(r"\d+\.png", os.path.basename(f)))[:n]
    if not files:
        return False
    images = [im for im in (_read_image(f, warnings) for f in files) if im is not None]
    if not images:
        return False
    w, h = images[0].width, images[0].height
    nrow = math.ceil(len(images) / ncol)
    cols = min(ncol, len(images))
    sheet = Image.new("RGB", (cols * (w + 2) + 2, nrow * (h + 2) + 2), "white")
    for i, im in enumerate(images):
        sheet.paste(im, (2 + (i % ncol) * (w + 2), 2 + (i // ncol) * (h + 2)))
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
    return True


# ----------------------------------------------------------------------------- quality over training time

PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf"]
QUALITY_PANELS = [  # (title, y key, x key, x scale): train_sec is drawn in minutes
    ("FID vs generator updates", "fid", "step", 1.0), ("FID vs training time", "fid", "train_sec", 1 / 60),
    ("KID vs generator updates", "kid", "step", 1.0), ("KID vs training time", "kid", "train_sec", 1 / 60)]
X_LABEL = {"step": "generator updates", "train_sec": "training time (min, evaluation excluded)"}


def _number(value):
    """A finite int/float as float, else None (a key may be missing, null or NaN)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def read_metrics(path, warnings=None):
    """The records of a run's metrics.jsonl, [] when there is none. A line that is not a JSON object (one
    being appended right now, say) is skipped, with a warning appended to `warnings` if given."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        lines = []
        if warnings is not None:
            warnings.append(f"{path}: cannot read it ({e}); no quality curve for it")
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
        if not isinstance(records[-1], dict):
            records.pop()
    if len(records) < len(lines) and warnings is not None:
        warnings.append(f"{path}: {len(lines) - len(records)} unreadable line(s) skipped")
    return records


def has_evaluations(records):
    return any(_number(r.get("fid")) is not None for r in records)


def _ticks(lo, hi, count=5):
    """About `count` round ticks (1, 2 or 5 x 10^k apart) covering [lo, hi], and the decimals to print them."""
    if hi - lo <= 1e-9 * max(1.0, abs(hi)):  # a single value: a small range around it
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw * (1 - 1e-9))
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [i * step for i in range(first, last + 1)], max(0, -math.floor(math.log10(step) + 1e-9))


def _put(draw, x, y, text, font, ax=0.0, ay=0.0, fill="black"):
    """Draw `text` with the point (ax, ay) of its box (fractions of width, height) at (x, y)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((x - left - ax * (right - left), y - top - ay * (bottom - top)), text, fill=fill, font=font)


def _panel(draw, box, title, xlabel, curves, font):
    """One chart inside box = (x0, y0, x1, y1): title, numbered linear axes, a line + markers per curve."""
    x0, y0, x1, y1 = box
    _put(draw, (x0 + x1) / 2, y0, title, font, 0.5, 0.0)
    left, top, right, bottom = x0 + 64, y0 + 26, x1 - 16, y1 - 44
    points = [p for _, pts in curves for p in pts]
    if not points:
        draw.rectangle((left, top, right, bottom), outline="black")
        _put(draw, (left + right) / 2, (top + bottom) / 2, "no evaluations yet", font, 0.5, 0.5, fill="gray")
        return
    xt, xd = _ticks(min(x for x, _ in points), max(x for x, _ in points))
    yt, yd = _ticks(min(y for _, y in points), max(y for _, y in points))

    def sx(x):
        return left + (x - xt[0]) / (xt[-1] - xt[0]) * (right - left)

    def sy(y):
        return bottom - (y - yt[0]) / (yt[-1] - yt[0]) * (bottom - top)

    for v in xt:
        draw.line((sx(v), top, sx(v), bottom + 4), fill="#e0e0e0")
        _put(draw, sx(v), bottom + 7, f"{v:.{xd}f}", font, 0.5, 0.0)
    for v in yt:
        draw.line((left - 4, sy(v), right, sy(v)), fill="#e0e0e0")
        _put(draw, left - 7, sy(v), f"{v:.{yd}f}", font, 1.0, 0.5)
    draw.rectangle((left, top, right, bottom), outline="black")
    _put(draw, (left + right) / 2, y1, xlabel, font, 0.5, 1.0)
    for color, pts in curves:
        xy = [(sx(x), sy(y)) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=color, width=2)
        for x, y in xy:
            draw.ellipse((x - 3.5, y - 3.5, x + 3.5, y + 3.5), fill=color)


def quality_figure(series, path, title=None, size=(1000, 700)):
    """FID and KID during training as one PNG of four panels: each vs generator updates ("step") and vs training
    time ("train_sec", in minutes), one coloured line per label of `series` = {label: metrics.jsonl records}.
    Records without "fid" (epochs not evaluated) are skipped; a label without any is listed in the legend as
    "(no evaluations)". Written atomically; returns the labels that have evaluations."""
    from PIL import Image, ImageDraw
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, big = _font(13), _font(17)
    _put(draw, width / 2, 8, title or "FID and KID during training", big, 0.5, 0.0)
    evaluated = {label: [r for r in records if _number(r.get("fid")) is not None] for label, records in series.items()}
    colors = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(series)}
    x, y = 16, 36  # the legend, wrapped into rows
    for label in series:
        text = str(label) + ("" if evaluated[label] else " (no evaluations)")
        w = 34 + draw.textlength(text, font=font) + 22
        if x + w > width - 16 and x > 16:
            x, y = 16, y + 20
        draw.line((x, y + 8, x + 26, y + 8), fill=colors[label], width=2)
        draw.ellipse((x + 9.5, y + 4.5, x + 16.5, y + 11.5), fill=colors[label])
        _put(draw, x + 34, y + 8, text, font, 0.0, 0.5)
        x += w
    top = y + 28
    cell_w, cell_h = (width - 16) / 2, (height - top - 8) / 2
    for i, (panel_title, y_key, x_key, scale) in enumerate(QUALITY_PANELS):
        curves = []
        for label, records in evaluated.items():
            pts = [(_number(r.get(x_key)), _number(r.get(y_key))) for r in records]
            curves.append((colors[label], sorted((px * scale, py) for px, py in pts if px is not None and py is not None)))
        bx, by = 8 + (i % 2) * cell_w, top + (i // 2) * cell_h
        _panel(draw, (bx, by, bx + cell_w - 8, by + cell_h - 8), panel_title, X_LABEL[x_key], curves, font)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
    return [label for label in series if evaluated[label]]


def quality_series(runs):
    """{legend label: metrics.jsonl records} of every stage of a study that has a metrics.jsonl."""
    series = {}
    for stage in runs["stages"]:
        records = read_metrics(os.path.join(runs["root"], stage, "metrics.jsonl"), runs["warnings"])
        if records:
            series[stage_label(runs, stage)] = records
    return series


# ----------------------------------------------------------------------------- the whole report

def _settings_lines(runs):
    """What was run: data, size, width, batch, what one epoch is (the thesis' epochs differ), the FID setup."""
    lines = []
    t = runs["stages"]["teacher"]["summary"]
    if t:
        a = t["args"] if isinstance(t.get("args"), dict) else {}
        iters, n_critic = a.get("iters_per_epoch"), a.get("n_critic")
        critic = f" and {iters * n_critic} critic" if isinstance(iters, int) and isinstance(n_critic, int) else ""
        lines.append(f"- teacher: data `{a.get('data')}`, {a.get('img_size')}x{a.get('img_size')}, width "
                     f"{a.get('width')}, batch {a.get('batch_size')}, {t.get('epochs')} epochs of {iters} generator"
                     f"{critic} updates (thesis: 128x128, width 1, 4000 epochs of 25 generator and 200 critic "
                     f"updates), device {t.get('device')}")
    kd = next((runs["stages"][s]["summary"] for _, s in runs["kd"] if runs["stages"][s]["summary"]), None)
    if kd:
        a = kd["args"] if isinstance(kd.get("args"), dict) else {}
        lines.append(f"- KD: batch {a.get('batch_size')}, {kd.get('epochs')} epochs of {a.get('iters_per_epoch')} "
                     f"iterations (thesis: batch 8, epochs of 100), device {kd.get('device')}")
    fids = [r["fid"] for r in runs["stages"].values() if r["fid"]]
    if fids:
        f = fids[0]
        weights = os.path.basename(f["weights"]) if f.get("weights") else "?"
        lines.append(f"- FID: {f.get('dims')}-dim Inception features, {f.get('n_a')} generated vs {f.get('n_b')} "
                     f"reference images, weights `{weights}`; KID: unscaled MMD², mean ± std over "
                     f"{f.get('kid_subsets')} subsets of {f.get('kid_subset_size')}")
        if f.get("dims") != 2048:
            lines.append("- note: FID on fewer than 2048 features is not comparable to the thesis' (a smoke test)")
    return lines


def write_report(runs_dir, out=None, alphas=None, kd_alpha=0.05, variants=()):
    """Tables, CSVs and figures for `runs_dir` into `out` (default runs_dir/report); returns the report dict."""
    out = out or os.path.join(runs_dir, "report")
    runs = load_runs(runs_dir, alphas, variants)
    tables = [table_3_1(runs), table_3_2(runs), table_3_3(runs, kd_alpha)]
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror or e}") from None
    for t in tables:
        to_csv(t, os.path.join(out, f"{t.name}.csv"))
    drawn = timelines_figure(runs, os.path.join(out, "timelines.png"))
    grids = []
    for stage in runs["stages"]:
        if sample_grid(os.path.join(runs_dir, "samples", stage), os.path.join(out, f"grid_{stage}.png"), warnings=runs["warnings"]):
            grids.append(stage)
        else:
            runs["warnings"].append(f"{stage}: no samples in samples/{stage}; no grid_{stage}.png")
    series = quality_series(runs)
    curves = []
    if any(has_evaluations(records) for records in series.values()):
        curves = quality_figure(series, os.path.join(out, "quality.png"), "FID and KID during training, all runs")

    md = ["# Optimization of GANs — reproduction of Tables 3.1-3.3", "",
          f"Study directory: `{os.path.abspath(runs_dir)}`. Ours beside the thesis' numbers (SPbU 2022, "
          "128x128, GTX 1660 Ti).", ""]
    md += _settings_lines(runs) + [""]
    md += [to_markdown(t) for t in tables]
    md.append("### Figures\n")
    if drawn:
        md.append(f"Fixed-vector timelines ({', '.join(drawn)}), as the thesis' Figs. 3.2, 3.5 and 3.6:\n")
        md.append("![timelines](timelines.png)\n")
    if curves:
        md.append(f"FID and KID during training ({', '.join(curves)}): the evaluation epochs of each run's "
                  "metrics.jsonl, each run against its own training data; time excludes the evaluations:\n")
        md.append("![quality over training](quality.png)\n")
    for stage in grids:
        md.append(f"- {stage}: ![{stage}](grid_{stage}.png)")
    if grids:
        md.append("")
    if runs["warnings"]:
        md.append("### Warnings\n")
        md += [f"- {w}" for w in runs["warnings"]]
        md.append("")
    text = "\n".join(md)
    _write_text(os.path.join(out, "report.md"), text)
    return {"out": out, "tables": tables, "warnings": runs["warnings"], "markdown": text}


def _alphas(text):
    try:
        values = [float(a) for a in text.split()]
    except ValueError:
        raise UserError(f"--alphas must be numbers separated by spaces, got {text!r}") from None
    if not values:
        raise UserError("--alphas is empty")
    return values


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in --help, and the module docstring kept as written."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def main(argv=None):
    p = _Parser(prog="report.py", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("runs_dir", metavar="RUNS_DIR", help="the study directory (experiments.sh --out)")
    p.add_argument("--out", default=None, help="output folder; if not given, RUNS_DIR/report")
    p.add_argument("--alphas", default=None, help="KD rows, e.g. \"0.3 0.05\"; if not given, the thesis' four and any other kd_a* found")
    p.add_argument("--kd-alpha", type=float, default=0.05, help="the KD run in Table 3.3 (0.05 was the thesis' best)")
    p.add_argument("--variants", default="", help="transfer variant stages to add to Table 3.1, e.g. \"recipe warmup\" "
                   "(experiments.sh --variants)")
    args = p.parse_args(argv)
    result = write_report(args.runs_dir, args.out, _alphas(args.alphas) if args.alphas else None, args.kd_alpha,
                          args.variants.split())
    for w in result["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print(f"wrote {os.path.join(result['out'], 'report.md')}, table3_1.csv, table3_2.csv, table3_3.csv and figures")


if __name__ == "__main__":
    run_main(main)
