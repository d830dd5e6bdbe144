"""The training loop: learning, checkpoints, resume after a kill, class balance, DDP on CPU."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlab.checkpoint import load_model, read_checkpoint
from ferlab.training.loop import TrainConfig, class_weights, epoch_order, fit

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(**overrides) -> TrainConfig:
    values = dict(
        epochs=3,
        batch_size=16,
        lr=3e-3,
        scheduler="none",
        augment=True,
        early_stopping_patience=0,
        bf16=False,
        threads=1,
        seed=7,
    )
    values.update(overrides)
    return TrainConfig(**values)


def baseline_meta() -> dict:
    return {
        "model": {
            "name": "baseline",
            "width": 0.25,
            "dropout": 0.0,
            "activation": "relu",
        },
        "input_size": 48,
    }


def build_tiny():
    from ferlab.models import build_model

    spec = dict(baseline_meta()["model"])
    return build_model(spec.pop("name"), input_size=48, **spec)


def test_fit_learns_and_checkpoint_round_trips(real_faces, tmp_path: Path) -> None:
    images, labels = real_faces
    model = build_tiny()
    ckpt = tmp_path / "model.pt"
    result = fit(
        model,
        images,
        labels,
        images,
        labels,
        tiny_config(epochs=10, lr=1e-3, augment=False),
        ckpt,
        baseline_meta(),
    )
    assert len(result.history) == 10
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val_accuracy > 1 / 8 + 0.1  # clearly above chance on its own data
    payload = read_checkpoint(ckpt)
    assert payload["epoch"] == result.best_epoch
    assert payload["input_size"] == 48 and len(payload["classes"]) == 8
    model_again, meta = load_model(ckpt)
    assert not model_again.training
    assert meta["val_metrics"]["val_accuracy"] == pytest.approx(result.best_val_accuracy)


def test_early_stopping(real_faces, tmp_path: Path) -> None:
    images, labels = real_faces
    shuffled = np.random.default_rng(0).permutation(labels)  # unlearnable: val never improves
    result = fit(
        build_tiny(),
        images,
        labels,
        images,
        shuffled,
        tiny_config(epochs=20, early_stopping_patience=2, lr=1e-6),
        tmp_path / "m.pt",
        baseline_meta(),
    )
    assert result.stop_reason.startswith("no val improvement")
    assert len(result.history) < 20


class FakeClock:
    """A clock the test moves: each step of training advances it by one minute."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self, _step: int) -> None:
        self.now += 60.0


def test_an_opt_in_budget_stops_after_the_epoch_it_runs_out_in(real_faces, tmp_path) -> None:
    images, labels = real_faces  # 96 faces, batch 16: 6 steps (6 fake minutes) an epoch
    clock = FakeClock()
    config = tiny_config(epochs=5, max_minutes=10)  # runs out during epoch 2
    result = fit(build_tiny(), images, labels, images, labels, config, tmp_path / "m.pt",
                 baseline_meta(), clock=clock, after_step=clock.tick)  # fmt: skip
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.stop_reason.startswith("time budget of 10 min")
    assert (tmp_path / "m.pt").is_file()


def test_same_seed_same_weights_however_slow_the_machine(real_faces, tmp_path: Path) -> None:
    """The schedule follows steps, not the clock: a run slowed at every step (as under load)
    ends with bit-identical weights, in a byte-identical checkpoint file (so DVC sees the same
    hash and reruns nothing downstream)."""
    import time

    images, labels = real_faces

    def run(folder: str, after_step=None) -> dict:
        # The same file name: torch.save names the archive's records after the file.
        torch.manual_seed(0)
        fit(build_tiny(), images, labels, images[:32], labels[:32],
            tiny_config(epochs=2, scheduler="cosine", ema_decay=0.9, mixup_alpha=0.2),
            tmp_path / folder / "model.pt", baseline_meta(), after_step=after_step)  # fmt: skip
        return read_checkpoint(tmp_path / folder / "model.pt")["state_dict"]

    quick = run("quick")
    slowed = run("slow", after_step=lambda _s: time.sleep(0.05))
    for key, tensor in quick.items():
        assert torch.equal(tensor, slowed[key]), key
    assert (tmp_path / "quick/model.pt").read_bytes() == (tmp_path / "slow/model.pt").read_bytes()


def test_compiled_training_updates_the_model_it_checkpoints(real_faces, tmp_path: Path) -> None:
    """train.compile compiles the training forward only: the optimizer still moves the model's
    own parameters (the checkpoint is trained, not the initial weights), and it learns what the
    eager loop learns, up to float rounding. SGD, whose steps scale with the gradient: AdamW's
    first step is lr x sign(gradient), which rounding flips for near-zero gradients."""
    images, labels = real_faces

    def run(folder: str, compile: bool) -> tuple[dict, dict, list]:
        torch.manual_seed(0)
        model = build_tiny()
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        result = fit(model, images, labels, images[:32], labels[:32],
                     tiny_config(epochs=2, augment=False, optimizer="sgd", compile=compile),
                     tmp_path / folder / "model.pt", baseline_meta())  # fmt: skip
        return (
            initial,
            read_checkpoint(tmp_path / folder / "model.pt")["state_dict"],
            result.history,
        )

    from torch._dynamo.utils import counters

    initial, eager, eager_history = run("eager", compile=False)
    counters.clear()
    _, compiled, compiled_history = run("compiled", compile=True)
    assert counters["stats"]["unique_graphs"] >= 1  # the forward was compiled, not run eagerly
    weight = next(k for k, v in initial.items() if v.dim() == 4)  # the first conv's kernel
    assert not torch.allclose(compiled[weight], initial[weight], atol=1e-3)
    # Rounding differs (fused kernels), and BatchNorm on 16-face batches amplifies it over the
    # steps: the two runs must agree to a small fraction of how far training moved the weights.
    floats = [k for k, v in eager.items() if v.is_floating_point() and k in initial]
    moved = torch.cat([(eager[k] - initial[k]).flatten() for k in floats]).norm()
    apart = torch.cat([(compiled[k] - eager[k]).flatten() for k in floats]).norm()
    assert apart < 0.1 * moved
    for before, after in zip(eager_history, compiled_history, strict=True):
        assert after["train_loss"] == pytest.approx(before["train_loss"], rel=0.05)


def test_class_balance_sampler_evens_out_classes() -> None:
    labels = np.array([0] * 900 + [1] * 100)
    config = tiny_config(class_balance="sampler")
    order = epoch_order(labels, epoch=1, config=config, num_classes=2)
    share = (labels[order] == 1).mean()
    assert 0.4 < share < 0.6
    weights = class_weights(labels, 2)
    assert weights[1] / weights[0] == pytest.approx(9.0)


def test_config_rejects_unknown_choices() -> None:
    with pytest.raises(ValueError, match=r"train\.optimizer"):
        TrainConfig.from_params({"optimizer": "rmsprop"}, seed=1)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np, torch
    sys.path.insert(0, {tests!r})
    from test_training import build_tiny, baseline_meta, tiny_config
    from ferlab.training.loop import fit, seed_everything
    data = np.load({data!r})
    images, labels = data["images"], data["labels"]
    seed_everything(7)  # as the train stage does: the same initial weights in every process
    model = build_tiny()
    kill_at = int(os.environ.get("KILL_AT_FORWARD", "0"))
    calls = 0
    original = model.forward
    def forward(x):
        global calls
        if model.training:
            calls += 1
            if calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # a hard kill, mid-epoch
        return original(x)
    model.forward = forward
    # VAL_SHUFFLED: an unlearnable validation set, so the best epoch can come before the last.
    val = np.random.default_rng(1).permutation(labels) if os.environ.get("VAL_SHUFFLED") else labels
    fit(model, images, labels, images, val, tiny_config(), {ckpt!r}, baseline_meta(),
        resume_path={resume!r})
    """
)


def run_training(
    tmp: Path, name: str, images, labels, kill_at: int = 0, val_shuffled: bool = False
) -> subprocess.CompletedProcess:
    data = tmp / "data.npz"
    if not data.exists():
        np.savez(data, images=images, labels=labels)
    script = KILL_SCRIPT.format(
        tests=str(ROOT / "tests"),
        data=str(data),
        ckpt=str(tmp / f"{name}.pt"),
        resume=str(tmp / f"{name}.resume.pt"),
    )
    env = {**os.environ, "KILL_AT_FORWARD": str(kill_at), "OMP_NUM_THREADS": "1"}
    if val_shuffled:
        env["VAL_SHUFFLED"] = "1"
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )


def test_killed_training_resumes_to_identical_weights(real_faces, tmp_path: Path) -> None:
    images, labels = real_faces  # 96 faces, batch 16: 6 steps an epoch
    straight = run_training(tmp_path, "straight", images, labels)
    assert straight.returncode == 0, straight.stderr

    killed = run_training(tmp_path, "resumed", images, labels, kill_at=6 + 3)  # epoch 2, step 3
    assert killed.returncode == -9
    assert (tmp_path / "resumed.resume.pt").is_file()  # epoch 1's state survived the kill
    resumed = run_training(tmp_path, "resumed", images, labels)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch 1" in resumed.stdout
    assert not (tmp_path / "resumed.resume.pt").exists()

    a = read_checkpoint(tmp_path / "straight.pt")
    b = read_checkpoint(tmp_path / "resumed.pt")
    assert a["epoch"] == b["epoch"]
    for key, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][key]), key


def test_a_run_killed_after_its_best_epoch_resumes_to_that_best_checkpoint(
    real_faces, tmp_path: Path
) -> None:
    """The epoch-end state carries the best weights so far: a run killed after its best epoch
    (and after DVC removed models/model.pt) still ends with the best checkpoint."""
    images, labels = real_faces  # 6 steps an epoch, 3 epochs
    straight = run_training(tmp_path, "straight", images, labels, val_shuffled=True)
    assert straight.returncode == 0, straight.stderr
    best = read_checkpoint(tmp_path / "straight.pt")
    assert best["epoch"] < 3, "pick a seed whose best epoch is not the last"

    kill_at = best["epoch"] * 6 + 2  # inside the epoch after the best one
    killed = run_training(tmp_path, "resumed", images, labels, kill_at, val_shuffled=True)
    assert killed.returncode == -9 and not (tmp_path / "resumed.pt").exists()
    resumed = run_training(tmp_path, "resumed", images, labels, val_shuffled=True)
    assert resumed.returncode == 0, resumed.stderr
    again = read_checkpoint(tmp_path / "resumed.pt")
    assert again["epoch"] == best["epoch"]
    for key, tensor in best["state_dict"].items():
        assert torch.equal(tensor, again["state_dict"][key]), key


# flush=True: one write per line, so the two ranks' lines never interleave in the pipe.
DDP_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np, torch, torch.distributed as dist
    sys.path.insert(0, {tests!r})
    from test_training import build_tiny, baseline_meta, tiny_config
    from ferlab.training.loop import fit
    from ferlab.training.run import init_distributed
    assert init_distributed()
    data = np.load({data!r})
    torch.manual_seed(0)
    model = build_tiny()
    result = fit(model, data["images"], data["labels"], data["images"][:16], data["labels"][:16],
                 tiny_config({config}), {ckpt!r}, baseline_meta())
    rank = dist.get_rank()
    print(f"rank {{rank}}: {{len(result.history)}} epochs, {{result.stop_reason}}", flush=True)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if dist.get_rank() == 0:
        gap = float((gathered[0] - gathered[1]).abs().max())
        print("max weight difference between ranks:", gap, flush=True)
        torch.manual_seed(0)
        before = build_tiny()
        moved = torch.cat([p.detach().flatten() for p in before.parameters()])
        print("changed by training:", float((flat - moved).abs().max()) > 0, flush=True)
    dist.destroy_process_group()
    """
)


def run_ddp(tmp_path: Path, images: np.ndarray, labels: np.ndarray, config: str):
    data = tmp_path / "data.npz"
    np.savez(data, images=images, labels=labels)
    script = tmp_path / "ddp_job.py"
    script.write_text(
        DDP_SCRIPT.format(
            tests=str(ROOT / "tests"),
            data=str(data),
            ckpt=str(tmp_path / "ddp.pt"),
            config=config,
        )
    )
    torchrun = Path(sys.executable).parent / "torchrun"
    return subprocess.run(
        [str(torchrun), "--nproc_per_node=2", "--master_port=29533", str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_ddp_two_cpu_processes_keep_equal_weights(real_faces, tmp_path: Path) -> None:
    images, labels = real_faces
    # 16 a rank: one step each
    done = run_ddp(tmp_path, images[:32], labels[:32], "epochs=1, batch_size=16")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "max weight difference between ranks: 0.0" in done.stdout
    assert "changed by training: True" in done.stdout
    assert (tmp_path / "ddp.pt").is_file()


def test_ranks_draw_different_augmentations_that_repeat() -> None:
    from ferlab.training.augment import augment_batch
    from ferlab.training.loop import augmentation_generator

    faces = torch.rand(8, 1, 48, 48)

    def draw(rank: int, epoch: int = 3) -> torch.Tensor:  # the generator fit gives each rank
        return augment_batch(faces, augmentation_generator(42, epoch, rank))

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))
    assert not torch.equal(draw(0), draw(0, epoch=4))


def test_saved_state_from_other_settings_is_not_resumed(real_faces, tmp_path: Path) -> None:
    """A state saved by a run with other settings is ignored, said so, and replaced."""
    images, labels = real_faces
    resume = tmp_path / "model.resume.pt"

    class Interrupted(Exception):
        pass

    def stop_after_epoch_1(row: dict[str, float]) -> None:
        if row["epoch"] == 2:
            raise Interrupted  # an interruption after epoch 1's state was saved

    with pytest.raises(Interrupted):
        fit(
            build_tiny(),
            images,
            labels,
            images[:16],
            labels[:16],
            tiny_config(epochs=3),
            tmp_path / "m.pt",
            baseline_meta(),
            resume_path=resume,
            on_epoch=stop_after_epoch_1,
        )
    assert resume.is_file()
    lines: list[str] = []
    result = fit(build_tiny(), images, labels, images[:16], labels[:16],
                 tiny_config(epochs=3, lr=1e-3), tmp_path / "m.pt", baseline_meta(),
                 resume_path=resume, log=lines.append)  # fmt: skip
    assert f"{resume}: saved state is for other settings; starting afresh" in lines
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert not resume.exists()


ORPHAN_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    sys.path.insert(0, {src!r})
    from ferlab.training.run import init_distributed
    assert init_distributed()
    with open(os.path.join({folder!r}, f"rank{{os.environ['RANK']}}.pid"), "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)  # a training run that would hold a core for ten minutes
    """
)


def test_killing_torchrun_stops_its_training_workers(tmp_path: Path) -> None:
    """A killed pipeline (SIGKILL reaches torchrun, not its workers) leaves no worker behind."""
    import signal
    import time

    script = tmp_path / "job.py"
    script.write_text(ORPHAN_SCRIPT.format(src=str(ROOT / "src"), folder=str(tmp_path)))
    torchrun = Path(sys.executable).parent / "torchrun"
    launcher = subprocess.Popen(
        [str(torchrun), "--nproc_per_node=2", "--master_port=29541", str(script)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    pid_files = [tmp_path / "rank0.pid", tmp_path / "rank1.pid"]
    for _ in range(600):  # the workers start (up to a minute on a loaded machine)
        if all(p.is_file() and p.read_text() for p in pid_files):
            break
        time.sleep(0.1)
    workers = [int(p.read_text()) for p in pid_files]
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        status = Path(f"/proc/{pid}/status")
        return status.is_file() and "zombie" not in status.read_text()

    for _ in range(300):
        if not any(alive(pid) for pid in workers):
            break
        time.sleep(0.1)
    left = [pid for pid in workers if alive(pid)]
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"training workers {left} outlived torchrun"


def test_auto_targets_without_the_votes_file_say_so_and_use_labels(tmp_path: Path) -> None:
    from ferlab.training.run import training_targets

    labels = np.array([0, 3, 5])
    said: list[str] = []
    missing = tmp_path / "ferplus_votes.csv"
    targets = training_targets({"targets": "auto"}, missing, np.array(["a", "b", "c"]), labels,
                               said.append)  # fmt: skip
    assert targets.dtype == np.int64 and targets.tolist() == [0, 3, 5]
    assert len(said) == 1 and said[0].startswith("WARNING") and str(missing) in said[0]
    assert "data.votes" in said[0] and "train.targets=labels" in said[0]


def test_auto_targets_with_the_votes_file_are_the_vote_distributions(tmp_path: Path) -> None:
    from ferlab.classes import CLASS_TO_INDEX
    from ferlab.training.run import training_targets

    votes = tmp_path / "ferplus_votes.csv"
    votes.write_text(
        "ferplus_split,image,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,"
        "unknown,NF\n"
        "Training,fer0000000.png,4,0,0,1,3,2,0,0,0,0\n"  # the single sadness vote is dropped
        "Training,fer0000001.png,6,0,1,1,0,0,0,0,2,0\n"  # only neutral is left: unknown is no class
    )
    paths = np.array(["train/neutral/fer0000000.png", "x/fer0000001.png", "x/not_voted.png"])
    labels = np.array([CLASS_TO_INDEX["neutral"]] * 2 + [CLASS_TO_INDEX["fear"]])
    targets = training_targets({"targets": "auto"}, votes, paths, labels)
    expected = np.zeros((3, 8), dtype=np.float32)
    expected[0, [CLASS_TO_INDEX["neutral"], CLASS_TO_INDEX["anger"], CLASS_TO_INDEX["disgust"]]] = [
        4 / 9, 3 / 9, 2 / 9,
    ]  # fmt: skip
    expected[1, CLASS_TO_INDEX["neutral"]] = 1.0
    expected[2, CLASS_TO_INDEX["fear"]] = 1.0  # not in the votes file: keeps its label
    np.testing.assert_allclose(targets, expected, rtol=1e-6)
    as_labels = training_targets({"targets": "labels"}, votes, paths, labels)
    assert as_labels.dtype == np.int64 and as_labels.tolist() == labels.tolist()
    with pytest.raises(FileNotFoundError, match=r"absent\.csv.*train\.targets=labels"):
        training_targets({"targets": "votes"}, tmp_path / "absent.csv", paths, labels)


@pytest.mark.parametrize(
    ("device", "local_processes", "gpus", "backend"),
    [
        ("auto", 2, 0, "gloo"),  # CPU ranks
        ("auto", 2, 1, "gloo"),  # the committed 2 processes on a one-GPU machine: they share it
        ("auto", 1, 1, "nccl"),
        ("cuda", 2, 2, "nccl"),  # one GPU each
        ("auto", 4, 2, "gloo"),
        ("cpu", 2, 0, "gloo"),  # train.device: cpu on a GPU machine (no GPU counted)
        ("cpu", 1, 1, "gloo"),  # ...even if a GPU were counted: the ranks stay on the CPU
    ],
)
def test_processes_beyond_the_gpu_count_share_them_instead_of_failing(
    device: str, local_processes: int, gpus: int, backend: str
) -> None:
    from ferlab.training.run import process_group_backend

    assert process_group_backend(device, local_processes, gpus) == backend
