#!/usr/bin/env bash
# Retrain with DVC and write a Markdown report that compares the result with a base git ref.
#
# The same script runs in CI (.github/workflows/retrain.yml) and on a laptop:
#
#   scripts/retrain.sh                          # small profile, compared with main
#   scripts/retrain.sh --profile full --base origin/main
#   scripts/retrain.sh -S train.lr=0.01 --report /tmp/report.md evaluate
#
# Steps: `dvc exp run` (profile overrides, then yours, as -S; later values win) on the targets
# (small: evaluate; full: every stage), then a report holding `dvc params diff --md` and
# `dvc metrics diff --md` against the base ref, and the confusion-matrix plot diff
# (`dvc plots diff` into <report dir>/ci_plots/). Like any `dvc exp run` in the workspace, it
# leaves the overrides applied to params.yaml and the results in dvc.lock and reports/.
#
# Environment: DVC_REMOTE_URL (optional) adds it as a local default remote and pulls what is
# cached there; GITHUB_BASE_REF (set on pull requests) makes origin/<base> the default base.
set -euo pipefail

# The small profile: a CPU-sized subset run of the real pipeline (the README's small profile).
# `fast.train.epochs` shortens the live models' training too (evaluate scores every model of
# evaluate.models: the study model, the live model and the mean of its two seeds).
SMALL_PROFILE=(split.max_per_class=200 train.epochs=3 model.name=baseline fast.train.epochs=3
    train.compile=false)
SMALL_TARGETS=(evaluate)
# Plots compared across revisions: the `plots` entry reports/confusion_test.csv (the study
# model's test confusion) and the study model's confusion figure, one file of the `plots`
# folder reports/figures/evaluation (`dvc plots diff` takes a file inside a declared folder:
# that file alone, at each revision that has it).
PLOT_TARGETS=(reports/confusion_test.csv reports/figures/evaluation/study_confusion_test.png)

usage() {
    cat <<'EOF'
usage: scripts/retrain.sh [--profile small|full] [--base REF] [--report FILE] [--push]
                          [-S key=value]... [TARGET...]

  --profile      small (default): subset, 3 epochs (both models), baseline study model,
                 up to `evaluate`;
                 full: params.yaml as it is, every stage
  --base REF     git ref to compare with (default: origin/$GITHUB_BASE_REF on pull requests,
                 else main, else origin/main); 40 zeros (a new branch's push) means HEAD~1
  --report FILE  Markdown report to write (default: reports/ci_report.md); plots go to
                 <its folder>/ci_plots/ and the run's log to <its folder>/ci_retrain.log
  --push         after a successful run, `dvc push --run-cache` to the default remote
  -S key=value   extra params override (repeatable), applied after the profile's
  --show-profile print the small profile's overrides, one per line, and exit
  TARGET         DVC stages to reproduce (default: the profile's)
EOF
}

die() {
    echo "retrain: $*" >&2
    exit 2
}

cd "$(dirname "$0")/.."

profile="${RETRAIN_PROFILE:-small}"
base="${RETRAIN_BASE:-}"
report="reports/ci_report.md"
push=0
extra=()
targets=()
while (($#)); do
    case "$1" in
    --profile | --base | --report | -S | --set-param)
        (($# >= 2)) || die "$1 needs a value (see --help)"
        case "$1" in
        --profile) profile="$2" ;;
        --base) base="$2" ;;
        --report) report="$2" ;;
        *) extra+=("$2") ;;
        esac
        shift 2
        ;;
    --push)
        push=1
        shift
        ;;
    --show-profile)
        printf '%s\n' "${SMALL_PROFILE[@]}"
        exit 0
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
        targets+=("$1")
        shift
        ;;
    esac
done

case "$profile" in
small) overrides=("${SMALL_PROFILE[@]}") ;;
full) overrides=() ;;
*) die "--profile must be 'small' or 'full', not '$profile'" ;;
esac
overrides+=("${extra[@]}")
# One override per key, the last given (DVC applies them in order, so the same run results).
declare -A seen=()
effective=()
for ((i = ${#overrides[@]} - 1; i >= 0; i--)); do
    key="${overrides[i]%%=*}"
    [[ -n ${seen[$key]:-} ]] && continue
    seen[$key]=1
    effective=("${overrides[i]}" "${effective[@]}")
done
overrides=("${effective[@]}")
if ((${#targets[@]} == 0)) && [[ $profile == small ]]; then
    targets=("${SMALL_TARGETS[@]}")
fi
for item in "${overrides[@]}"; do
    [[ $item == *=* ]] || die "override '$item' must look like group.key=value"
done

command -v dvc >/dev/null || die "dvc is not on PATH: run 'make setup' and put .venv/bin first on PATH"
git rev-parse --git-dir >/dev/null 2>&1 || die "$(pwd) is not a git repository"

# The base ref: its committed params.yaml, dvc.lock and reports/ are what the diffs compare with.
if [[ -z $base ]]; then
    if [[ -n ${GITHUB_BASE_REF:-} ]]; then
        base="origin/$GITHUB_BASE_REF"
    elif git rev-parse --verify --quiet "main^{commit}" >/dev/null; then
        base=main
    else
        base=origin/main
    fi
fi
if [[ $base =~ ^0{40}$ ]]; then
    base="HEAD~1" # the first push of a branch has no "before" commit
fi
git rev-parse --verify --quiet "$base^{commit}" >/dev/null ||
    die "base ref '$base' is not in this clone: fetch it (actions/checkout needs fetch-depth: 0) or pass --base REF"
base_sha="$(git rev-parse --short "$base^{commit}")"

report_dir="$(dirname "$report")"
plots_dir="$report_dir/ci_plots"
log="$report_dir/ci_retrain.log"
mkdir -p "$report_dir"

pull_flag=()
if [[ -n ${DVC_REMOTE_URL:-} ]]; then
    # --local: the remote lives in .dvc/config.local, never in the committed config.
    dvc remote add --local --force --default ci "$DVC_REMOTE_URL" >/dev/null
    pull_flag=(--pull) # stages whose outputs are on the remote are fetched, not rerun
fi

set_args=()
for item in "${overrides[@]}"; do
    set_args+=(-S "$item")
done

echo "retrain: profile $profile, targets: ${targets[*]:-all stages}, base $base ($base_sha)"
echo "retrain: dvc exp run ${set_args[*]} ${pull_flag[*]} ${targets[*]}"
start=$SECONDS
set +e
dvc exp run "${set_args[@]}" "${pull_flag[@]}" "${targets[@]}" 2>&1 | tee "$log"
run_status=${PIPESTATUS[0]}
set -e
minutes=$(((SECONDS - start + 59) / 60))
experiment="$(sed -n 's/^Ran experiment(s): //p' "$log" | tail -n 1)"

if ((run_status == 0 && push)); then
    dvc push --run-cache || run_status=$?
fi

# Each diff section keeps going when its command fails, so the report still says what happened.
diff_status=0
errors="$(mktemp)"
trap 'rm -f "$errors"' EXIT
section() { # section TITLE EMPTY-TEXT COMMAND...
    local title="$1" empty="$2" out
    shift 2
    echo
    echo "### $title"
    echo
    if out="$("$@" 2>"$errors")"; then
        if [[ -n ${out//[[:space:]]/} ]]; then echo "$out"; else echo "$empty"; fi
        cat "$errors" >&2 # DVC's warnings (e.g. metrics of stages not run) go to the log only
    else
        diff_status=1
        echo "\`$*\` failed:"
        echo
        echo '```text'
        tail -n 20 "$errors"
        echo '```'
    fi
}

# shellcheck disable=SC2317  # called through `section`
confusion_plots() {
    rm -rf "$plots_dir"
    local existing=() target
    for target in "${PLOT_TARGETS[@]}"; do
        [[ -e $target ]] && existing+=("$target")
    done
    if ((${#existing[@]} == 0)); then
        echo "No confusion matrix in this run (${PLOT_TARGETS[*]} missing)."
        return 0
    fi
    dvc plots diff "$base" --targets "${existing[@]}" -o "$plots_dir" >/dev/null || return 1
    echo "[Confusion matrices, $base vs workspace](ci_plots/index.html) (\`dvc plots diff\`);"
    echo "the images:"
    echo
    local png
    for png in "$plots_dir"/static/*.png; do
        [[ -e $png ]] && echo "- [${png##*/}](ci_plots/static/${png##*/})"
    done
    return 0
}

tmp="$report.tmp"
{
    echo "## Retraining report: $profile profile"
    echo
    echo "- commit \`$(git rev-parse --short HEAD)\` (with its workspace changes) against base \`$base\` (\`$base_sha\`)"
    echo "- stages: ${targets[*]:-all}; experiment: \`${experiment:-none}\`; ${minutes} min"
    if ((${#overrides[@]})); then
        # shellcheck disable=SC2016  # the backquotes are Markdown
        echo "- overrides: $(printf '`%s` ' "${overrides[@]}")"
    fi
    if [[ $profile == small ]]; then
        echo
        echo "> Small profile: a subset run that checks the pipeline end to end. Its metrics are"
        echo "> compared with the ones committed at the base, which come from the full study unless"
        echo "> the base also ran this profile; run the full profile for numbers that count."
    fi
    if ((run_status != 0)); then
        echo
        echo "### Retraining failed (exit $run_status)"
        echo
        echo '```text'
        tail -n 30 "$log"
        echo '```'
    fi
    section "Parameters (dvc params diff)" "No parameter differs from the base." \
        dvc params diff "$base" --md
    section "Metrics (dvc metrics diff)" "No metric differs from the base." \
        dvc metrics diff "$base" --md --precision 4
    section "Confusion matrix (dvc plots diff)" "" confusion_plots
} >"$tmp"
mv "$tmp" "$report"
echo "retrain: report in $report"

if ((run_status != 0)); then
    echo "retrain: dvc exp run failed (exit $run_status); see $log" >&2
    exit "$run_status"
fi
exit "$diff_status"
