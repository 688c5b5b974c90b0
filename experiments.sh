#!/usr/bin/env bash
# The whole thesis study as one command: teacher, transfer learning, knowledge distillation, samples, FID, report.
# Run `bash experiments.sh --help` for the flags; the usage text below is that help.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: experiments.sh [--demo] [--out DIR] [flags]     (bash experiments.sh ... or ./experiments.sh ...)

Reproduces the thesis' Tables 3.1-3.3 in one go. Stages, all under --out (default runs/study):
  teacher            train_wgan.py on data 1                          (thesis model 1)
  full               train_transfer.py --freeze-g 0 --freeze-d 0 on data 2  (model 2, full training)
  transfer           train_transfer.py --init OUT/teacher on data 2   (model 2, transfer learning: the
                     thesis' freezing, G layer1-2 and D all but its last block)
  <variant>          with --variants: the same with one recipe changed (flags below), each a stage
  kd_a<alpha>        train_kd.py --teacher OUT/teacher/generator.pt on data 1, one per alpha
  samples/<stage>/   N PNGs per model (createsamples.py --seed 0), the teacher included
  real1/, real2/     the real images FID compares against, as training sees them (same crop, --size):
                     a demo spec's first N (data.py demo); a folder's copy (data.py prepare), of which
                     compute_fid.py takes a fixed-seed random subset of N (--max-images N --seed 0)
  memory/<stage>/     the stage's command for 3 iterations without evaluations: its training memory, the
                     figure Table 3.1 reports (every method measured by the same code in a fresh process)
  fid/ref_data1.npz, ref_data2.npz   Inception statistics of the real images (compute_fid.py --save-stats)
  fid/gen_<stage>.npz                 Inception statistics of each model's samples
  fid/<stage>.json   FID + KID vs its own dataset (teacher, kd_*: data 1; the rest: data 2), with the std of
                     FID over --bootstrap resamples of the samples (its sample noise)
  fid/<stage>_n<M>.json               the same from the first --n-thesis M images per side (the thesis' 500)
  fid/teacher_vs_data2.json           the teacher untouched against data 2: where every transfer starts
  fid/kd_a<alpha>_vs_teacher.json     FID + KID of each student vs the teacher's samples
  report/            python report.py OUT: report.md, table3_{1,2,3}.csv, timelines.png, grid_<stage>.png

Re-running is cheap and safe: a finished stage is skipped ("[stage] NAME: done, skipping").
  training   done when OUT/<stage>/summary.json has the requested epochs; otherwise the stage runs with
             --resume, which continues an interrupted run from its last checkpoint, or extends a finished
             one to more epochs (a run with MORE epochs than requested is kept, with a warning)
  samples    done when the folder holds exactly N PNGs and is not older than the stage's generator.pt
  FID files  done when the file exists and is not older than its inputs (like make), and was made with
             the same --n-samples/--fid-dims/--kid-*/--weights (OUT/fid/settings.txt; else all are redone)
So after a longer teacher run, its samples and FID are redone. real1/real2 are redone for another dataset or
--size; a study trained at another --size or --width is refused (use another --out). Not detected: other data
or training flags for a finished training stage; delete its folder to redo it.

flags (each also read from the environment variable STUDY_<NAME in brackets>, e.g. STUDY_EPOCHS_KD; a flag wins):
  --data1 SPEC            data 1, the teacher's and KD's: image folder or demo spec [DATA1] (demo:cats)
  --data2 SPEC            data 2, the transfer target [DATA2] (demo:dogs)
  --size N                image size [SIZE] (64)
  --width W               channel-width multiplier, 1 = thesis [WIDTH] (0.25)
  --batch-size N          WGAN-GP batch size [BATCH_SIZE] (32)
  --kd-batch-size N       KD batch size [KD_BATCH_SIZE] (= --batch-size; the thesis used 8)
  --epochs-teacher N      [EPOCHS_TEACHER] (40)
  --epochs-transfer N     full and transfer [EPOCHS_TRANSFER] (10)
  --epochs-kd N           [EPOCHS_KD] (10)
  --iters-per-epoch N     passed to every training script if set [ITERS_PER_EPOCH] (the scripts' own: 25 / 100)
  --n-critic N            critic updates per generator update, WGAN-GP stages, if set [N_CRITIC] (the
                          script's 5; the thesis' epoch of 200 critic + 25 generator updates is 8)
  --snapshot-every K      fixed-vector snapshot interval [SNAPSHOT_EVERY] (epochs/20 per stage, at least 1)
  --save-every K          checkpoint interval in epochs [SAVE_EVERY] (1)
  --lr LR                 Adam learning rate of the WGAN-GP stages, if set [LR] (train_wgan.py's own)
  --diffaug POLICY        DiffAugment policy of every stage, if set [DIFFAUG] (the scripts' own)
  --ema IMAGES            generator EMA half-life of every stage, if set; 0 = off [EMA] (the scripts' own)
  --precision P           auto | fp32 | bf16 | fp16, if set [PRECISION] (the scripts' own: auto)
  --eval-points N         FID/KID N times during each training stage (every epochs/N epochs) against data
                          1/2's statistics: OUT/<stage>/quality.png and report/quality.png; KD only for
                          alpha 0.05 (or the first alpha); 0 = off [EVAL_POINTS] (0)
  --eval-n N              images per evaluation during training [EVAL_N] (500); FID is biased by the count,
                          KID is not: compare curves with curves, final numbers with final numbers
  --eval-exact            exact Inception for the curves [EVAL_EXACT=1] (default: the bf16 one, ~2.5x
                          faster on a CPU with native bf16, FID ~1% off; final FIDs are always exact)
  --preset thesis         [PRESET] the thesis' training settings: lr 1e-4 (KD 5e-4), no EMA, no DiffAugment,
                          fp32, KD batch 8, n_critic 8 (its epochs of 200 critic + 25 generator updates)
  --alphas "A B ..."      KD alphas [ALPHAS] ("0.3 0.05 0.01 0.001")
  --variants "V ..."      transfer recipes to train beside `transfer`, each one stage on data 2 from the
                          teacher [VARIANTS] (none); "all" = every one of:
                            freezed       FreezeD (Mo et al. 2020): all of G trains, critic layer1-2 frozen
                            g_image       G's image-side blocks frozen instead of the z-side ones
                            warmup        critic warm-up: 50 critic steps per generator step for the first 20
                            ema_init      G and its EMA start from the teacher's EMA weights, not its raw ones
                            finetune_all  nothing frozen, lr 5e-5 (fine-tuning everything at a low rate)
                            low_lr        the thesis' freezing at lr 1e-5 (Wang et al. 2018's fine-tuning rate)
                            recipe        G layer1-2 and critic layer1-2 frozen + warmup + ema_init + lr 5e-5
  --n-samples N           images per model and per dataset for FID [N_SAMPLES] (2000; pytorch-fid's authors
                          advise >= 2048: FID is biased by the count)
  --n-thesis M            also FID of the first M images per side, the thesis' protocol [N_THESIS] (500;
                          0 = off)
  --bootstrap R           resamples for the std of each FID [BOOTSTRAP] (10; 0 = off)
  --fid-dims D            Inception features: 2048 (standard), 768, 192, 64 [FID_DIMS] (2048)
  --kid-subsets K         [KID_SUBSETS] (100)
  --kid-subset-size M     [KID_SUBSET_SIZE] (N/2)
  --weights PATH          FID Inception weights file (pt_inception-2015-12-05-6726825d.pth) [WEIGHTS]
                          (default: compute_fid.py's, the torch hub cache, downloaded if missing)
  --device DEV            auto | cpu | cuda | cuda:N [DEVICE] (auto)
  --threads N             torch CPU threads, only if set: --threads of the training scripts and
                          OMP_NUM_THREADS for createsamples.py and compute_fid.py [THREADS]
  --out DIR               [OUT] (runs/study)
  --demo                  [STUDY_DEMO=1] the whole chain on the demo data, minutes on a 2-core CPU: 32x32,
                          width 0.25, batch 16, teacher 40 epochs, full/transfer 20, KD 4; 50 samples,
                          64-dim FID features, 10 KID subsets of 25 (each still overridable); its timelines
                          show the models learning, its FID numbers mean little
  -h, --help              this text
The Python interpreter is $PYTHON, else the repository's .venv/bin/python, else python3.

examples:
  bash experiments.sh --demo --out /tmp/demo_study                 # 4 min on a 2-core CPU (measured: 242 s)
  bash experiments.sh --data1 data/cat-faces-64 --data2 data/dog-faces-64 --epochs-teacher 40
  # the thesis' setting (GPU): 128x128, full width, model 1 for 4000 epochs, KD with batch 8
  bash experiments.sh --data1 data/cat-faces-128 --data2 data/dog-faces-128 --size 128 --width 1 \
      --batch-size 64 --n-critic 8 --kd-batch-size 8 --epochs-teacher 4000 --epochs-transfer 1000 \
      --epochs-kd 1000 --device cuda --out runs/thesis
EOF
}

die() { echo "experiments.sh: error: $*" >&2; exit 2; }

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$HERE/.venv/bin/python" ]]; then PY="$HERE/.venv/bin/python"
else PY=python3; fi

# ----------------------------------------------------------------------------- flags > environment > defaults
declare -A F=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --demo) F[DEMO]=1; shift ;;
        --eval-exact) F[EVAL_EXACT]=1; shift ;;
        --data1|--data2|--size|--width|--batch-size|--kd-batch-size|--epochs-teacher|--epochs-transfer|--epochs-kd|\
        --iters-per-epoch|--n-critic|--snapshot-every|--save-every|--alphas|--n-samples|--fid-dims|--kid-subsets|\
        --kid-subset-size|--weights|--device|--threads|--out|--lr|--diffaug|--ema|--precision|--eval-points|--eval-n|--preset|\
        --variants|--n-thesis|--bootstrap)
            [[ $# -ge 2 ]] || die "$1 needs a value (see --help)"
            key="${1#--}"; key="${key//-/_}"; key="${key^^}"
            F[$key]="$2"; shift 2 ;;
        --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done

# pick NAME: the flag, else the environment variable, else the demo default (with --demo), else the default
pick() {
    local name="$1" default="$2" demo_default="${3-$2}"
    local env="STUDY_$name"  # prefixed: plain OUT, SIZE or DEVICE are often set for other programs
    if [[ -n "${F[$name]+x}" ]]; then printf -v "$name" '%s' "${F[$name]}"
    elif [[ -n "${!env:-}" ]]; then printf -v "$name" '%s' "${!env}"
    elif [[ "$DEMO" == 1 ]]; then printf -v "$name" '%s' "$demo_default"
    else printf -v "$name" '%s' "$default"; fi
}
DEMO="${F[DEMO]:-${STUDY_DEMO:-0}}"
[[ "$DEMO" == 0 || "$DEMO" == 1 ]] || die "DEMO must be 0 or 1, got '$DEMO'"
#    name            default                  --demo default
pick DATA1           demo:cats
pick DATA2           demo:dogs
pick SIZE            64                       32
pick WIDTH           0.25
pick BATCH_SIZE      32                       16
pick KD_BATCH_SIZE   ""
pick EPOCHS_TEACHER  40
pick EPOCHS_TRANSFER 10                       20
pick EPOCHS_KD       10                       4
pick ITERS_PER_EPOCH ""
pick N_CRITIC        ""
pick SNAPSHOT_EVERY  ""                       2
pick SAVE_EVERY      1
pick ALPHAS          "0.3 0.05 0.01 0.001"
pick N_SAMPLES       2000                     50
pick N_THESIS        500                      0
pick BOOTSTRAP       10                       0
pick VARIANTS        ""
pick FID_DIMS        2048                     64
pick KID_SUBSETS     100                      10
pick KID_SUBSET_SIZE ""
pick WEIGHTS         ""
pick DEVICE          auto
pick THREADS         ""
pick OUT             runs/study
pick LR              ""
pick DIFFAUG         ""
pick EMA             ""
pick PRECISION       ""
pick EVAL_POINTS     0
pick EVAL_N          ""
pick EVAL_EXACT      0
[[ "$EVAL_POINTS" =~ ^[0-9]+$ ]] || die "EVAL_POINTS must be an integer >= 0, got '$EVAL_POINTS'"
pick PRESET          ""
KD_LR=""  # set by a preset only, never by the environment
case "$PRESET" in
    "") ;;
    thesis) LR="${LR:-1e-4}"; EMA="${EMA:-0}"; DIFFAUG="${DIFFAUG:-none}"; PRECISION="${PRECISION:-fp32}"
            N_CRITIC="${N_CRITIC:-8}"; KD_BATCH_SIZE="${KD_BATCH_SIZE:-8}"; KD_LR=5e-4 ;;
    *) die "--preset must be thesis, got '$PRESET'" ;;
esac
KD_BATCH_SIZE="${KD_BATCH_SIZE:-$BATCH_SIZE}"

is_int() { [[ "$1" =~ ^[1-9][0-9]*$ ]]; }
for v in SIZE BATCH_SIZE KD_BATCH_SIZE EPOCHS_TEACHER EPOCHS_TRANSFER EPOCHS_KD SAVE_EVERY N_SAMPLES KID_SUBSETS; do
    is_int "${!v}" || die "$v must be a positive integer, got '${!v}'"
done
for v in ITERS_PER_EPOCH N_CRITIC SNAPSHOT_EVERY KID_SUBSET_SIZE THREADS; do
    [[ -z "${!v}" ]] || is_int "${!v}" || die "$v must be a positive integer, got '${!v}'"
done
[[ "$SIZE" =~ ^(32|64|128|256|512|1024)$ ]] || die "SIZE must be a power of two from 32 to 1024 (the KD student needs 32 or more), got '$SIZE'"
[[ -n "$OUT" ]] || die "OUT is empty: give the study a folder (--out DIR)"
# the training flags too, before the real images' statistics are computed for a study that cannot train
is_number() { [[ "$1" =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$ ]]; }
is_positive() { is_number "$1" && [[ "${1%%[eE]*}" =~ [1-9] ]]; }
is_positive "$WIDTH" || die "WIDTH must be a positive number, got '$WIDTH'"
[[ -z "$LR" ]] || is_positive "$LR" || die "LR must be a positive number, got '$LR'"
[[ -z "$EMA" ]] || is_number "$EMA" || die "EMA must be a number >= 0, got '$EMA'"
[[ "$PRECISION" =~ ^(|auto|fp32|bf16|fp16)$ ]] || die "PRECISION must be auto, fp32, bf16 or fp16, got '$PRECISION'"
[[ "$N_SAMPLES" -ge 2 ]] || die "N_SAMPLES must be at least 2 (FID needs a covariance)"
for v in N_THESIS BOOTSTRAP; do [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be an integer >= 0, got '${!v}'"; done
[[ "$EVAL_EXACT" == 0 || "$EVAL_EXACT" == 1 ]] || die "EVAL_EXACT must be 0 or 1, got '$EVAL_EXACT'"
declare -A VARIANT_FLAGS=(
    [freezed]="--freeze-g 0 --freeze-d 2"
    [g_image]="--freeze-g-from image"
    [warmup]="--warmup-iters 20 --warmup-n-critic 50"
    [ema_init]="--init-g ema"
    [finetune_all]="--freeze-g 0 --freeze-d 0 --lr 5e-5"
    [low_lr]="--lr 1e-5"
    [recipe]="--freeze-g 2 --freeze-d 2 --init-g ema --warmup-iters 20 --warmup-n-critic 50 --lr 5e-5"
)
ALL_VARIANTS="recipe freezed g_image warmup ema_init finetune_all low_lr"
[[ "$VARIANTS" == all ]] && VARIANTS="$ALL_VARIANTS"
read -r -a VARIANT_LIST <<< "$VARIANTS"
for v in "${VARIANT_LIST[@]}"; do
    [[ -n "${VARIANT_FLAGS[$v]+x}" ]] || die "unknown variant '$v' (known: $ALL_VARIANTS, or all)"
done
KID_SUBSET_SIZE="${KID_SUBSET_SIZE:-$(( N_SAMPLES / 2 > 2 ? N_SAMPLES / 2 : 2 ))}"
case "$FID_DIMS" in 64|192|768|2048) ;; *) die "FID_DIMS must be 64, 192, 768 or 2048, got '$FID_DIMS'" ;; esac
read -r -a ALPHA_LIST <<< "$ALPHAS"
[[ ${#ALPHA_LIST[@]} -gt 0 ]] || die "ALPHAS is empty"
for a in "${ALPHA_LIST[@]}"; do
    [[ "$a" =~ ^(0(\.[0-9]+)?|1(\.0+)?|\.[0-9]+)$ ]] || die "alpha must be a number in [0, 1], got '$a'"
done
[[ -z "$WEIGHTS" || -f "$WEIGHTS" ]] || die "--weights $WEIGHTS: no such file"
for spec in "$DATA1" "$DATA2"; do
    [[ "$spec" == demo:* || -d "$spec" ]] || die "data '$spec' is neither a folder nor a demo spec (demo:cats, demo:dogs)"
done

# ----------------------------------------------------------------------------- helpers
T_START=$SECONDS
say() { echo "[stage] $*"; }
run() { printf '  $'; printf ' %q' "$@"; printf '\n'; "$@"; }

common_train=(--img-size "$SIZE" --device "$DEVICE" --save-every "$SAVE_EVERY")
[[ -n "$ITERS_PER_EPOCH" ]] && common_train+=(--iters-per-epoch "$ITERS_PER_EPOCH")
[[ -n "$DIFFAUG" ]] && common_train+=(--diffaug "$DIFFAUG")
[[ -n "$EMA" ]] && common_train+=(--ema "$EMA")
[[ -n "$PRECISION" ]] && common_train+=(--precision "$PRECISION")
eval_args() {  # eval_args N EPOCHS: EVAL=(flags of periodic FID/KID against data N's statistics), if --eval-points
    EVAL=()
    [[ "$EVAL_POINTS" == 0 ]] && return
    EVAL=(--eval-every "$(( $2 / EVAL_POINTS > 1 ? $2 / EVAL_POINTS : 1 ))" --eval-ref "$OUT/fid/ref_data$1.npz"
          --eval-n "${EVAL_N:-$(( N_SAMPLES < 500 ? N_SAMPLES : 500 ))}")
    [[ -z "$WEIGHTS" ]] || EVAL+=(--eval-weights "$WEIGHTS")
    [[ "$EVAL_EXACT" == 1 ]] || EVAL+=(--eval-fast)
}
if [[ -n "$THREADS" ]]; then
    common_train+=(--threads "$THREADS")
    export OMP_NUM_THREADS="$THREADS"  # createsamples.py and compute_fid.py have no --threads
fi
# --overwrite: a stale statistics or FID file is redone on purpose (see up_to_date); --quiet: no progress lines
fid_args=(--device "$DEVICE" --dims "$FID_DIMS" --kid-subsets "$KID_SUBSETS" --kid-subset-size "$KID_SUBSET_SIZE" --overwrite --quiet)
[[ -n "$WEIGHTS" ]] && fid_args+=(--weights "$WEIGHTS")

snap_every() { echo "${SNAPSHOT_EVERY:-$(( $1 / 20 > 1 ? $1 / 20 : 1 ))}"; }

summary_epochs() {  # the `epochs` of a summary.json, or nothing
    [[ -f "$1" ]] || return 0
    "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1])).get("epochs", ""))' "$1" 2>/dev/null || true
}

# up_to_date TARGET DEP...: TARGET exists and no DEP is newer (a missing DEP counts as not newer)
up_to_date() {
    local target="$1"; shift
    [[ -e "$target" ]] || return 1
    local dep
    for dep in "$@"; do [[ -e "$dep" && "$dep" -nt "$target" ]] && return 1; done
    return 0
}

count_pngs() {  # NNNNN.png files in a folder (what createsamples.py and data.py demo write)
    [[ -d "$1" ]] || { echo 0; return; }
    find "$1" -maxdepth 1 -type f -name '[0-9][0-9][0-9][0-9][0-9]*.png' | wc -l
}

# train STAGE EPOCHS SCRIPT ARGS...: skip when OUT/STAGE/summary.json has EPOCHS, else (re)run with --resume
train() {
    local stage="$1" epochs="$2" script="$3"; shift 3
    local dir="$OUT/$stage" have
    have="$(summary_epochs "$dir/summary.json")"
    if [[ "$have" == "$epochs" ]]; then
        local note=""
        if [[ "$stage" != teacher && "$stage" != full && "$OUT/teacher/generator.pt" -nt "$dir/summary.json" ]]; then
            note="; warning: the teacher changed after it was trained, delete $dir to redo it from the new one"
        fi
        say "$stage: done, skipping ($epochs epochs$note)"; return
    elif [[ -n "$have" && "$have" =~ ^[0-9]+$ && "$have" -gt "$epochs" ]]; then
        say "$stage: done, skipping (warning: it has $have epochs, more than the $epochs requested; delete $dir to retrain)"
        return
    fi
    if [[ -n "$have" ]]; then say "$stage: running (extending $have -> $epochs epochs)"
    elif [[ -f "$dir/ckpt.pt" ]]; then say "$stage: running (resuming an interrupted run)"
    else say "$stage: running"; fi
    run "$PY" "$HERE/$script" "$@" "${EVAL[@]}" --epochs "$epochs" --snapshot-every "$(snap_every "$epochs")" \
        "${common_train[@]}" --out "$dir" --resume
    [[ "$(summary_epochs "$dir/summary.json")" == "$epochs" ]] || die "$stage: no summary.json with $epochs epochs after training"
}

# memory STAGE SCRIPT ARGS...: OUT/memory/STAGE, the stage's command without evaluations for 3 iterations (the
# memory meter's window) in a fresh process: every method's training memory measured by the same code, none of
# it the evaluator's. Redone when the stage was retrained.
memory() {
    local stage="$1" script="$2"; shift 2
    local dir="$OUT/memory/$stage"
    if up_to_date "$dir/summary.json" "$OUT/$stage/summary.json"; then say "memory/$stage: done, skipping"; return; fi
    say "memory/$stage: running"
    rm -rf -- "$dir"
    run "$PY" "$HERE/$script" "$@" "${common_train[@]}" --epochs 1 --iters-per-epoch 3 --snapshot-every 1 --out "$dir"
}

# The evaluation steps (createsamples.py, data.py demo, compute_fid.py) are cheap next to the start of a Python
# process with torch (seconds each, more on a busy machine), so the pending ones are queued and run one after the
# other in ONE process, each through its script's own main(argv): exactly the command line printed for it.
JOBS=()
declare -A PENDING=()
queue() {  # queue TARGET SCRIPT ARGS...
    local target="$1"; shift
    PENDING[$target]=1
    JOBS+=("${target#"$OUT"/}" "$@" "::")
}
pending_dep() { local d; for d in "$@"; do [[ -n "${PENDING[$d]+x}" ]] && return 0; done; return 1; }
flush() {
    [[ ${#JOBS[@]} -gt 0 ]] || return 0
    "$PY" - "$HERE" "$PY" "${JOBS[@]}" <<'PYEOF'
import importlib, os, shlex, sys
here, python, args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, here)
import runpy
jobs, job = [], []
for a in args:
    if a == "::":
        jobs.append(job)
        job = []
    else:
        job.append(a)

for label, script, *argv in jobs:
    print(f"[stage] {label}: running", flush=True)
    print(f"  $ {shlex.join([python, os.path.join(here, script), *argv])}", flush=True)
    sys.argv = [os.path.join(here, script), *argv]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")  # the script's own command line, its error handling too
    except SystemExit as e:
        if e.code:
            raise
    sys.stdout.flush()
PYEOF
    JOBS=()
}

samples() {  # samples STAGE: N_SAMPLES PNGs from OUT/STAGE/generator.pt
    local stage="$1" dir="$OUT/samples/$1" gen="$OUT/$1/generator.pt"
    [[ -f "$gen" ]] || die "samples/$stage: $gen is missing"
    if [[ "$(count_pngs "$dir")" -eq "$N_SAMPLES" ]] && up_to_date "$dir" "$gen"; then
        say "samples/$stage: done, skipping"; return
    fi
    queue "$dir" createsamples.py --model "$gen" --n "$N_SAMPLES" --seed 0 --device "$DEVICE" --out "$dir" --overwrite
}

# real_ref N SPEC: OUT/fid/ref_dataN.npz from N_SAMPLES images of the dataset
real_ref() {
    local i="$1" spec="$2" npz="$OUT/fid/ref_data$1.npz" dir="$OUT/real$1" made="$OUT/fid/real$1.txt"
    local what="data=$spec size=$SIZE" done=0  # another --size or dataset: the copy is redone, never reused
    if [[ -f "$made" && "$(cat "$made")" == "$what" ]]; then
        if [[ "$spec" == demo:* ]]; then [[ "$(count_pngs "$dir")" -eq "$N_SAMPLES" ]] && done=1
        else [[ -f "$dir/sources.txt" ]] && done=1; fi  # prepare writes sources.txt last
    fi
    if [[ "$done" == 1 ]]; then
        say "real$i: done, skipping"
    else
        rm -rf -- "$dir"  # ours; a different N_SAMPLES must not leave extra images behind
        echo "$what" > "$made"
        if [[ "$spec" == demo:* ]]; then
            # the demo data is generated: write the first N_SAMPLES images as PNGs (data.py demo)
            local domain="${spec#demo:}"
            queue "$dir" data.py demo "$dir" --domain "${domain%%:*}" --n "$N_SAMPLES" --size "$SIZE"
        else  # a folder: a face-cropped, resized copy at --size (data.py prepare: what training sees)
            queue "$dir" data.py prepare "$spec" "$dir" --size "$SIZE"
        fi
    fi
    local dep="$dir" subset=()
    # of a folder's copy, a fixed-seed random subset of N_SAMPLES (compute_fid.py --max-images N --seed 0)
    [[ "$spec" == demo:* ]] || { dep="$dir/sources.txt"; subset=(--max-images "$N_SAMPLES" --seed 0); }
    if up_to_date "$npz" "$dep" && ! pending_dep "$dir"; then say "fid/ref_data$i.npz: done, skipping"; return; fi
    queue "$npz" compute_fid.py --save-stats "$dir" "$npz" "${subset[@]}" "${fid_args[@]}"
}

gen_stats() {  # gen_stats STAGE: OUT/fid/gen_STAGE.npz, the Inception statistics of a model's samples
    local dir="$OUT/samples/$1" npz="$OUT/fid/gen_$1.npz"
    if up_to_date "$npz" "$dir" && ! pending_dep "$dir"; then say "fid/gen_$1.npz: done, skipping"; return; fi
    queue "$npz" compute_fid.py --save-stats "$dir" "$npz" "${fid_args[@]}"
}

fid() {  # fid NAME A B [FLAGS...]: OUT/fid/NAME.json (A, B: statistics files)
    local name="$1" a="$2" b="$3" json="$OUT/fid/$1.json"; shift 3
    if up_to_date "$json" "$a" "$b" && ! pending_dep "$a" "$b"; then say "fid/$name.json: done, skipping"; return; fi
    queue "$json" compute_fid.py "$a" "$b" --json "$json" "${fid_args[@]}" "$@"
}

score() {  # score STAGE REF: FID + KID of all samples (std over bootstrap resamples), and of the thesis' count
    local gen="$OUT/fid/gen_$1.npz" ref="$OUT/fid/$2.npz"
    fid "$1" "$gen" "$ref" --bootstrap "$BOOTSTRAP"
    if [[ "$N_THESIS" -gt 0 && "$N_THESIS" -lt "$N_SAMPLES" ]]; then
        fid "$1_n$N_THESIS" "$gen" "$ref" --max-images "$N_THESIS" \
            --kid-subset-size "$(( N_THESIS / 2 > 2 ? N_THESIS / 2 : 2 ))"
    fi
}

# a study trained at another --size or --width: its models cannot be extended, its references must not be reused
check_study_shape() {
    local msg
    msg="$("$PY" - "$SIZE" "$WIDTH" "$OUT"/*/summary.json <<'PYEOF' 2>/dev/null
import json, sys
size, width = int(sys.argv[1]), float(sys.argv[2])
for path in sys.argv[3:]:
    try:
        args = json.load(open(path)).get("args", {})
        if args.get("img_size", size) != size or float(args.get("width") or width) != width:
            sys.exit(print(f"{path} was trained with --size {args['img_size']} --width {args['width']}"))
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass  # a missing or broken summary: that stage is redone or resumed, and its script checks the flags
PYEOF
    )" || true
    [[ -z "$msg" ]] || die "$msg: pass those, or another --out for a study at --size $SIZE --width $WIDTH"
}

# ----------------------------------------------------------------------------- the study
[[ -d "$OUT" ]] && check_study_shape
mkdir -p "$OUT/fid" || die "cannot create $OUT"
if command -v flock >/dev/null; then  # two studies writing one run directory would corrupt each other
    exec 9>"$OUT/.experiments.lock"
    flock -n 9 || die "another experiments.sh is running on $OUT"
fi
echo "study in $OUT: data1 $DATA1, data2 $DATA2, ${SIZE}x$SIZE, width $WIDTH, batch $BATCH_SIZE (KD $KD_BATCH_SIZE)," \
     "epochs teacher $EPOCHS_TEACHER / transfer $EPOCHS_TRANSFER / KD $EPOCHS_KD, alphas $ALPHAS," \
     "${VARIANTS:+transfer variants $VARIANTS, }${N_CRITIC:+n_critic $N_CRITIC, }$N_SAMPLES samples, FID dims $FID_DIMS, device $DEVICE$([[ $DEMO == 1 ]] && echo ', demo')"

# FID files made with other settings are stale whatever their dates: drop them
fid_settings="n_samples=$N_SAMPLES n_thesis=$N_THESIS bootstrap=$BOOTSTRAP dims=$FID_DIMS kid=$KID_SUBSETS/$KID_SUBSET_SIZE weights=${WEIGHTS:-default}"
stamp="$OUT/fid/settings.txt"
if [[ -f "$stamp" && "$(cat "$stamp")" != "$fid_settings" ]]; then
    say "fid: settings changed ($(cat "$stamp") -> $fid_settings), redoing the statistics and FID files"
    rm -f -- "$OUT"/fid/*.npz "$OUT"/fid/*.json
fi
[[ -f "$stamp" && "$(cat "$stamp")" == "$fid_settings" ]] || echo "$fid_settings" > "$stamp"
# the real images' statistics first: training's --eval-every compares against them
real_ref 1 "$DATA1"
real_ref 2 "$DATA2"
flush

wgan=(--width "$WIDTH" --batch-size "$BATCH_SIZE")
[[ -n "$N_CRITIC" ]] && wgan+=(--n-critic "$N_CRITIC")
[[ -n "$LR" ]] && wgan+=(--lr "$LR")
eval_args 1 "$EPOCHS_TEACHER"
stage() {  # stage NAME EPOCHS SCRIPT ARGS...: train it (with EVAL), then measure its training memory
    local name="$1" epochs="$2"; shift 2
    train "$name" "$epochs" "$@"
    memory "$name" "$@"
}
stage teacher "$EPOCHS_TEACHER" train_wgan.py --data "$DATA1" "${wgan[@]}"
eval_args 2 "$EPOCHS_TRANSFER"
stage full "$EPOCHS_TRANSFER" train_transfer.py --freeze-g 0 --freeze-d 0 --data "$DATA2" "${wgan[@]}"
stage transfer "$EPOCHS_TRANSFER" train_transfer.py --init "$OUT/teacher" --data "$DATA2" "${wgan[@]}"
for v in "${VARIANT_LIST[@]}"; do
    read -r -a vflags <<< "${VARIANT_FLAGS[$v]}"
    stage "$v" "$EPOCHS_TRANSFER" train_transfer.py --init "$OUT/teacher" --data "$DATA2" "${wgan[@]}" "${vflags[@]}"
done
KD_STAGES=()
kd_alpha=0.05
[[ " ${ALPHA_LIST[*]} " == *" 0.05 "* ]] || kd_alpha="${ALPHA_LIST[0]}"
kd_lr=()
[[ -n "${KD_LR:-}" ]] && kd_lr=(--lr "$KD_LR")
for a in "${ALPHA_LIST[@]}"; do
    KD_STAGES+=("kd_a$a")
    EVAL=()
    [[ "$a" == "$kd_alpha" ]] && eval_args 1 "$EPOCHS_KD"
    # img size and nz come from the teacher (train_kd.py refuses a mismatch, so --img-size is passed as a check)
    stage "kd_a$a" "$EPOCHS_KD" train_kd.py --teacher "$OUT/teacher/generator.pt" --data "$DATA1" \
        --width "$WIDTH" --batch-size "$KD_BATCH_SIZE" --alpha "$a" "${kd_lr[@]}"
done

DATA2_STAGES=(full transfer "${VARIANT_LIST[@]}")
ALL_STAGES=(teacher "${DATA2_STAGES[@]}" "${KD_STAGES[@]}")
for stage in "${ALL_STAGES[@]}"; do samples "$stage"; done
for stage in "${ALL_STAGES[@]}"; do gen_stats "$stage"; done
score teacher ref_data1
fid teacher_vs_data2 "$OUT/fid/gen_teacher.npz" "$OUT/fid/ref_data2.npz"  # where every transfer starts
for stage in "${DATA2_STAGES[@]}"; do score "$stage" ref_data2; done
for stage in "${KD_STAGES[@]}"; do
    score "$stage" ref_data1
    fid "${stage}_vs_teacher" "$OUT/fid/gen_$stage.npz" "$OUT/fid/gen_teacher.npz"
done
flush

# the report is always rewritten (a second or two): it reads everything above
say "report: running"
run "$PY" "$HERE/report.py" "$OUT" --alphas "$ALPHAS" --kd-alpha "$kd_alpha" --variants "${VARIANT_LIST[*]}"
echo "study done in $(( SECONDS - T_START )) s: $OUT/report/report.md"
