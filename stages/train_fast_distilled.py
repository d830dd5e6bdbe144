"""DVC stage `train_fast_distilled`: one live-sized net distilled from the two live models
(`distill.teachers`): the `fast` recipe on a mix of the crowd's votes and the teachers' mean
probability (`ferlab.distillation`). Run under torchrun like the train stages."""

import sys

from ferlab import tracking
from ferlab.config import load_params
from ferlab.distillation import train_student
from ferlab.stage import run_stage
from ferlab.training.run import TrainJob, init_distributed

STAGE = "train_fast_distilled"


def main() -> None:
    params = load_params()
    distill = params["distill"]
    job = TrainJob.fast(params, "models/fast_distilled.pt", "reports/fast_distilled")
    teachers = list(distill["teachers"])
    weight = float(distill["teacher_weight"])
    distributed = init_distributed()
    import torch.distributed as dist

    if distributed and dist.get_rank() != 0:
        train_student(params, job, teachers, weight)
        return
    with tracking.stage_run(STAGE, params, experiment=params["mlflow"]["experiment"]):
        train_student(params, job, teachers, weight)
        tracking.log_artifacts(
            job.checkpoint, job.reports / "train.json", job.reports / "figures/training_curves.png"
        )


if __name__ == "__main__":
    sys.exit(run_stage(STAGE, main))
