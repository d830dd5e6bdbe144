"""DVC stage `train_fast_second`: the live model's recipe again, from another seed
(`fast_second.seed`). Evaluate and export score the mean of both live models' probabilities as
one more candidate (`evaluate.models.fast_pair`); `ferlab bundle` ships it only if it measures
better. Run under torchrun like the train stages; the split and arrays are the same."""

import sys
from dataclasses import replace

from ferlab import tracking
from ferlab.config import load_params
from ferlab.stage import run_stage
from ferlab.training.run import TrainJob, init_distributed, train_job

STAGE = "train_fast_second"


def main() -> None:
    params = load_params()
    # Only the training seed changes (initial weights, batch order, augmentation, dropout). A
    # seed under `train` or `fast.train` would win over the top-level one (TrainConfig), so the
    # job's own is set too: the two live models never train from the same seed.
    seed = int(params["fast_second"]["seed"])
    params = {**params, "seed": seed}
    job = TrainJob.fast(params, "models/fast_second.pt", "reports/fast_second")
    job = replace(job, train={**job.train, "seed": seed})
    distributed = init_distributed(job.train.get("device", "auto"))
    import torch.distributed as dist

    if distributed and dist.get_rank() != 0:
        train_job(params, job)
        return
    with tracking.stage_run(STAGE, params, experiment=params["mlflow"]["experiment"]):
        train_job(params, job)
        tracking.log_artifacts(
            job.checkpoint, job.reports / "train.json", job.reports / "figures/training_curves.png"
        )


if __name__ == "__main__":
    sys.exit(run_stage(STAGE, main))
