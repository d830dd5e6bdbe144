"""DVC stage `train`: fit the configured model on the cached arrays (torchrun for several GPUs)."""

import sys

from ferlab import tracking
from ferlab.config import load_params
from ferlab.stage import run_stage
from ferlab.training.run import init_distributed, train_from_params


def main() -> None:
    params = load_params()
    distributed = init_distributed()
    import torch.distributed as dist

    if distributed and dist.get_rank() != 0:
        train_from_params(params)
        return
    with tracking.stage_run("train", params, experiment=params["mlflow"]["experiment"]):
        train_from_params(params)
        tracking.log_artifacts(
            "models/model.pt", "reports/train.json", "reports/figures/training_curves.png"
        )


if __name__ == "__main__":
    sys.exit(run_stage("train", main))
