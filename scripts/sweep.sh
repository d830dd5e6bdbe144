#!/usr/bin/env bash
# Queue a grid of DVC experiments, run them one after another, and show them side by side.
#
#   scripts/sweep.sh                         # the default grid below (32 experiments)
#   scripts/sweep.sh --profile small train.lr=0.01,0.001 train.batch_size=32,64
#   scripts/sweep.sh --queue-only ...        # queue only; then `dvc queue start -j 2`
#
# Each AXIS is `key=v1,v2,...` (DVC's Hydra sweep syntax; `range()` and `choice()` work too):
# `dvc exp run --queue` queues one experiment per combination of the axes, with the profile's
# and the -S overrides fixed. The queue runs in temporary copies under .dvc/tmp/exps, so
# MLFLOW_TRACKING_URI is set to this project's mlflow.db (unless already set): every stage run
# lands in one store, tagged `dvc_experiment=<name>`. See docs/experiments.md.
set -euo pipefail

# The study model's (DDAMFN's) options are under model.ddamfn (params.yaml).
DEFAULT_GRID=(
    "model.ddamfn.heads=2,4"
    "train.lr=0.01,0.001"
    "train.batch_size=32,64"
    "train.optimizer=adamw,sgd"
    "model.ddamfn.activation=prelu,relu"
)

usage() {
    cat <<'EOF'
usage: scripts/sweep.sh [--profile small|full] [-j N] [-S key=value]... [--target STAGE]...
                        [--queue-only] [AXIS=v1,v2,...]...

  --profile     full (default): params.yaml as it is; small: the small profile of
                scripts/retrain.sh (subset, 3 epochs, baseline model, up to `evaluate`)
  -j N          experiments run at once by --run-all (default 1; each uses every core)
  -S key=value  fixed override for every experiment (repeatable)
  --target      DVC stage to reproduce (repeatable; default: the profile's)
  --queue-only  queue the experiments, run nothing (start with `dvc queue start`)
  --show-grid   print the default axes, one per line, and exit
  AXIS          a swept parameter; default: the five axes of the study's grid
EOF
}

die() {
    echo "sweep: $*" >&2
    exit 2
}

cd "$(dirname "$0")/.."

profile=full
jobs=1
queue_only=0
fixed=()
targets=()
axes=()
while (($#)); do
    case "$1" in
    --profile | -j | --jobs | -S | --set-param | --target)
        (($# >= 2)) || die "$1 needs a value (see --help)"
        case "$1" in
        --profile) profile="$2" ;;
        -j | --jobs) jobs="$2" ;;
        --target) targets+=("$2") ;;
        *) fixed+=("$2") ;;
        esac
        shift 2
        ;;
    --queue-only)
        queue_only=1
        shift
        ;;
    --show-grid)
        printf '%s\n' "${DEFAULT_GRID[@]}"
        exit 0
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *)
        [[ $1 == *=* ]] || die "axis '$1' must look like group.key=v1,v2"
        axes+=("$1")
        shift
        ;;
    esac
done
[[ $jobs =~ ^[1-9][0-9]*$ ]] || die "-j must be a positive integer, not '$jobs'"
((${#axes[@]})) || axes=("${DEFAULT_GRID[@]}")

case "$profile" in
small)
    mapfile -t profile_set < <(bash scripts/retrain.sh --show-profile)
    ((${#targets[@]})) || targets=(evaluate)
    ;;
full) profile_set=() ;;
*) die "--profile must be 'small' or 'full', not '$profile'" ;;
esac

command -v dvc >/dev/null || die "dvc is not on PATH: run 'make setup' and put .venv/bin first on PATH"
# Queued experiments run in copies of the repo: point them all at this project's store.
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$PWD/mlflow.db}"

count_state() { # how many queue entries are in state $1
    dvc queue status 2>/dev/null | awk -v state="$1" '$NF == state { n++ } END { print n + 0 }'
}
waiting="$(count_state Queued)"
((waiting == 0)) ||
    die "$waiting experiment(s) already queued: run them (dvc exp run --run-all) or drop them (dvc queue remove --queued)"
failed_before="$(count_state Failed)"

args=()
for item in "${profile_set[@]}" "${fixed[@]}" "${axes[@]}"; do
    args+=(-S "$item")
done
echo "sweep: dvc exp run --queue ${args[*]} ${targets[*]}"
dvc exp run --queue "${args[@]}" "${targets[@]}"
if ((queue_only)); then
    echo "sweep: queued; start with 'dvc queue start -j $jobs', follow with 'dvc queue status'"
    exit 0
fi

dvc exp run --run-all --jobs "$jobs"
failed=$(($(count_state Failed) - failed_before))
if ((failed > 0)); then
    dvc queue status >&2
    die "$failed experiment(s) failed: read 'dvc queue logs <name>'"
fi
dvc exp show --only-changed --no-pager
echo "sweep: MLflow runs in ${MLFLOW_TRACKING_URI}: 'ferlab ui', filter tags.stage = 'train'"
