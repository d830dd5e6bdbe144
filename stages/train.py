"""DVC stages `train` (the study model) and `train_fast` (the live model, `train.py fast`): fit
on the cached arrays. Run under torchrun: one process per core on a CPU, one per GPU."""

import sys

from ferlab import tracking
from ferlab.config import load_params
from ferlab.stage import run_stage
from ferlab.training.run import TrainJob, init_distributed, train_job

JOBS = {"study": ("train", TrainJob.study), "fast": ("train_fast", TrainJob.fast)}


def main(which: str) -> None:
    stage, make_job = JOBS[which]
    params = load_params()
    job = make_job(params)
    distributed = init_distributed(job.train.get("device", "auto"))
    import torch.distributed as dist

    if distributed and dist.get_rank() != 0:
        train_job(params, job)
        return
    with tracking.stage_run(stage, params, experiment=params["mlflow"]["experiment"]):
        train_job(params, job)
        tracking.log_artifacts(
            job.checkpoint, job.reports / "train.json", job.reports / "figures/training_curves.png"
        )


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "study"
    if which not in JOBS:
        sys.exit(f"usage: stages/train.py [{'|'.join(JOBS)}]")
    sys.exit(run_stage(JOBS[which][0], lambda: main(which)))
