#!/usr/bin/env bash
# The DDAMFN study at the paper's size (112 px, width 1.0) on a CUDA machine, end to end:
#
#   scripts/gpu_study.sh                       # every GPU, 40 epochs, run name ddamfn-112-gpu
#   scripts/gpu_study.sh --processes 1         # one process on the first GPU
#   scripts/gpu_study.sh --epochs 60 -S train.lr=0.003
#   scripts/gpu_study.sh --device cpu --epochs 1 -S train.compile=false   # a CPU smoke run
#
# Steps: `dvc repro preprocess` (download, validate, split, RetinaFace crops; seconds when they
# are up to date), then `ferlab train-run NAME` with the study model at 112 px on the GPU: the
# uint8 train set lives on the device, batches are augmented there, bf16 autocast (always on
# under CUDA), torch.compile, one process per GPU. The run is scored on the evaluate stage's
# protocols, exported to ONNX and logged to MLflow like any train-run (reports/runs/NAME/), and
# reports/runs/NAME/timing.json holds the wall time of the data stages and of the training run,
# and the device. The training runs outside the DAG: the committed study model is left as it is
# (on a machine without the data cache, `dvc repro preprocess` runs the data stages for real and
# records them in dvc.lock).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: scripts/gpu_study.sh [--name NAME] [--epochs N] [--device cuda|cpu]
                            [--processes N] [--force] [-S key=value]...

  --name NAME    run name: models/runs/NAME/, reports/runs/NAME/ (default ddamfn-112-gpu)
  --epochs N     training epochs (default 40)
  --device       cuda (default: refused when no GPU is visible); cpu for a smoke run
  --processes N  training processes (default: one per visible GPU; 1 on cpu); the global
                 batch of 256 is split over them
  --force        replace an earlier run of this NAME
  -S key=value   params override for the training run (repeatable), applied after this
                 script's own; the data stages run from params.yaml
EOF
}

die() {
    echo "gpu_study: $*" >&2
    exit 2
}

name="ddamfn-112-gpu"
epochs=40
device="cuda"
processes=""
force=()
extra=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --name) [[ $# -ge 2 ]] || die "--name needs a value"; name="$2"; shift 2 ;;
        --epochs) [[ $# -ge 2 ]] || die "--epochs needs a value"; epochs="$2"; shift 2 ;;
        --device) [[ $# -ge 2 ]] || die "--device needs a value"; device="$2"; shift 2 ;;
        --processes) [[ $# -ge 2 ]] || die "--processes needs a value"; processes="$2"; shift 2 ;;
        --force) force=(--force); shift ;;
        -S)
            [[ $# -ge 2 ]] || die "-S needs key=value"
            # The process count also splits the batch and is recorded in timing.json.
            [[ "$2" != train.processes=* ]] || die "-S $2: use --processes ${2#*=}"
            extra+=(-S "$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ "$epochs" =~ ^[1-9][0-9]*$ ]] || die "--epochs $epochs: give a positive whole number"
[[ "$device" == cuda || "$device" == cpu ]] || die "--device $device: choose cuda or cpu"
[[ -z "$processes" || "$processes" =~ ^[1-9][0-9]*$ ]] || die "--processes $processes: give a positive whole number"

cd "$(dirname "$0")/.."

if [[ "$device" == cuda ]]; then
    gpus=$(python -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
    [[ "$gpus" -ge 1 ]] || die "no CUDA device visible to PyTorch; run it on a GPU machine, or --device cpu for a smoke run"
    processes="${processes:-$gpus}"  # default: one per GPU, over NCCL
else
    processes="${processes:-1}"
fi

# The script's recipe; -S overrides given on the command line come later and win.
# A global batch of 256 (split over the processes, so the schedule is the same on 1 or 8 GPUs)
# fills a GPU better than the CPU's 2 x 64; the learning rate grows with it.
recipe=(
    model.name=ddamfn model.input_size=112 model.ddamfn.width=1.0
    train.device="$device" train.processes="$processes" train.compile=true
    train.batch_size=$((256 / processes)) train.lr=0.004 train.epochs="$epochs"
)
overrides=()
for item in "${recipe[@]}"; do overrides+=(-S "$item"); done
overrides+=(${extra[@]+"${extra[@]}"})  # (this form: old bash's set -u and empty arrays)

started=$SECONDS
echo "gpu_study: data stages (dvc repro preprocess)"
dvc repro preprocess
data_s=$((SECONDS - started))

if [[ ${#force[@]} -gt 0 ]]; then
    rm -f "reports/runs/$name/timing.json"  # replaced with the run, never left beside a new one
fi
echo "gpu_study: ferlab train-run $name (${processes} process(es) on $device)"
ferlab train-run ${force[@]+"${force[@]}"} "${overrides[@]}" -- "$name"
total_s=$((SECONDS - started))

python - "$name" "$device" "$processes" "$data_s" "$total_s" <<'EOF'
import json
import sys
from pathlib import Path

import torch

from ferlab.machine import cpu_name

name, device = sys.argv[1], sys.argv[2]
processes, data_s, total_s = (int(v) for v in sys.argv[3:6])
accelerator = torch.cuda.get_device_name(0) if device == "cuda" else cpu_name()
timing = {
    "device": device,
    "accelerator": accelerator,
    "gpus": torch.cuda.device_count() if device == "cuda" else 0,
    "processes": processes,
    "data_stages_s": data_s,
    "train_evaluate_export_s": total_s - data_s,
    "total_s": total_s,
}
path = Path("reports/runs") / name / "timing.json"
path.write_text(json.dumps(timing, indent=2) + "\n")
print(f"gpu_study: {total_s} s in all on {accelerator} ({data_s} s data stages) -> {path}")
EOF
