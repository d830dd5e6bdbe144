"""The model registry, the two models, and the attention figure."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from ferlab.checkpoint import load_model, save_checkpoint
from ferlab.evaluation.attention_maps import DPI, PANEL_INCHES, attention_figure
from ferlab.inference import to_tensor
from ferlab.models import build_model, model_names, model_options, register
from ferlab.training.losses import total_loss
from ferlab.training.run import TrainJob

ROOT = Path(__file__).resolve().parents[1]

REFERENCE_PARAMS = 4_187_936  # DDAMFN, 2 heads, 8 classes, 112×112 (reference implementation)
FINAL_MAP = {48: 6, 64: 8, 112: 7}


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_the_models_and_their_own_options() -> None:
    assert set(model_names()) == {"baseline", "ddamfn", "sepnet"}
    assert set(model_options("ddamfn")) == {"heads", "width", "activation", "dropout"}
    assert "heads" not in model_options("sepnet")


def test_a_model_registers_itself_with_its_own_arguments() -> None:
    @register("test_linear")
    class Linear(torch.nn.Module):
        def __init__(self, input_size: int, num_classes: int = 8, hidden: int = 4) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Flatten(),
                torch.nn.Linear(input_size**2, hidden),
                torch.nn.Linear(hidden, num_classes),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = build_model("test_linear", input_size=16, hidden=3)
    assert model(torch.zeros(2, 1, 16, 16)).shape == (2, 8)
    with pytest.raises(ValueError, match=r"takes no option\(s\) \['heads'\]"):
        build_model("test_linear", input_size=16, heads=2)


@pytest.mark.parametrize("size", [48, 64, 112])
@pytest.mark.parametrize("heads", [1, 2, 4])
@pytest.mark.parametrize("name", ["baseline", "ddamfn", "sepnet"])
def test_output_shapes(name: str, size: int, heads: int) -> None:
    torch.manual_seed(0)
    options = {"heads": heads} if name == "ddamfn" else {}
    model = build_model(name, input_size=size, **options).eval()
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        logits = model(x)
        assert logits.shape == (2, 8)
        if name == "ddamfn":
            logits2, maps = model.forward_with_heads(x)
            side = FINAL_MAP[size]
            assert maps.shape == (2, heads, 512, side, side)
            assert torch.equal(logits, logits2)
            # Each head's map is a product of two sigmoid gates.
            assert maps.min() >= 0 and maps.max() <= 1
        else:
            assert not hasattr(model, "forward_with_heads")


def test_ddamfn_parameter_count_is_close_to_the_reference() -> None:
    count = n_params(build_model("ddamfn", input_size=112, heads=2, num_classes=8))
    print(
        f"ddamfn parameters at 112, 2 heads, 8 classes: {count:,} (reference {REFERENCE_PARAMS:,})"
    )
    assert abs(count - REFERENCE_PARAMS) / REFERENCE_PARAMS < 0.05


def test_model_sizes() -> None:
    assert 1_000_000 <= n_params(build_model("baseline", input_size=48)) <= 2_000_000
    assert 100_000 <= n_params(build_model("sepnet", input_size=48)) <= 400_000


def test_live_model_as_configured_fits_the_live_budget() -> None:
    """The fast model params.yaml trains has under 2 MB of fp32 weights (the bundled model's
    size limit) and classifies 48×48 faces."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    job = TrainJob.fast(params)
    model = build_model(job.model, input_size=job.input_size, **job.options)
    assert 4 * n_params(model) < 2_000_000
    assert model.eval()(torch.zeros(2, 1, 48, 48)).shape == (2, 8)


def test_the_live_model_keeps_its_own_options() -> None:
    """`fast.options` belong to the live model alone: a study model of the same architecture
    (the small profile's `model.name=baseline -S model.baseline.width=0.25`) leaves it as it
    is, and the train_fast stage does not depend on the `model` group."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    fast = TrainJob.fast(params)
    params["model"][fast.model] = {"width": 0.25}
    assert TrainJob.fast(params) == fast and fast.options == params["fast"]["options"]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "fast" in stages["train_fast"]["params"]
    assert "model" not in stages["train_fast"]["params"]


def test_sepnet_stride_two_stem_halves_the_first_map() -> None:
    for stride, side in ((1, 48), (2, 24)):
        model = build_model("sepnet", input_size=48, stem_stride=stride).eval()
        assert model.features[:3](torch.zeros(1, 1, 48, 48)).shape[-2:] == (side, side)
        assert model(torch.zeros(1, 1, 48, 48)).shape == (1, 8)


def test_fused_mixconv_equals_the_split_groups() -> None:
    """One depthwise conv with zero-padded kernels computes what the per-group convs do."""
    from ferlab.models.mfn import MixDepthwise

    torch.manual_seed(0)
    layer = MixDepthwise(48, (3, 5, 7), (0.5, 0.25, 0.25), 2, "prelu").eval()
    x = torch.randn(2, 48, 12, 12)
    with torch.no_grad():
        fused = layer(x)
        layer.fused = False
        split = layer(x)
    torch.testing.assert_close(fused, split, rtol=1e-5, atol=1e-5)


def test_baseline_refuses_attention_heads() -> None:
    with pytest.raises(ValueError, match=r"model 'baseline' takes no option\(s\) \['heads'\]"):
        build_model("baseline", input_size=48, heads=4)


def test_width_scales_the_network() -> None:
    full = n_params(build_model("ddamfn", input_size=48))
    half = n_params(build_model("ddamfn", input_size=48, width=0.5))
    assert 0.2 < half / full < 0.35  # channels halve, so most weights quarter


def test_residual_blocks_start_as_the_identity() -> None:
    """Zero-initialised residual branches: a fresh block passes its input through unchanged
    (the deep MFN starts as a shallow net), while transitions still transform it."""
    from ferlab.models.mfn import MixBottleneck

    torch.manual_seed(0)
    block = MixBottleneck(64, 64, 128, (3, 5), (0.75, 0.25)).eval()
    x = torch.randn(2, 64, 12, 12)
    assert torch.equal(block(x), x)
    transition = MixBottleneck(64, 128, 256, (3, 5), (0.75, 0.25), stride=2).eval()
    assert transition(x).abs().mean() > 0.01


@pytest.mark.parametrize(
    ("name", "hparams", "message"),
    [
        ("resnet", {}, "unknown model 'resnet'; expected one of"),
        ("ddamfn", {"activation": "gelu"}, "activation='gelu' must be one of prelu"),
        ("baseline", {"activation": "swish"}, "activation='swish'"),
        ("ddamfn", {"head": 2}, r"model 'ddamfn' takes no option\(s\) \['head'\]"),
        ("ddamfn", {"heads": 0}, "heads=0 must be an integer"),
        ("ddamfn", {"dropout": 1.5}, "dropout=1.5"),
        ("ddamfn", {"width": 0}, "width=0"),
        ("sepnet", {"stem_stride": 4}, "stem_stride=4 must be 1 or 2"),
    ],
)
def test_build_model_rejects_bad_settings(name: str, hparams: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_model(name, input_size=48, **hparams)


def test_input_size_too_small_is_refused() -> None:
    with pytest.raises(ValueError, match="input_size=8"):
        build_model("ddamfn", input_size=8)


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_other_activations_run(activation: str) -> None:
    model = build_model("ddamfn", input_size=48, width=0.25, activation=activation).eval()
    assert not any(isinstance(m, torch.nn.PReLU) for m in model.modules())
    with torch.no_grad():
        assert model(torch.randn(1, 1, 48, 48)).shape == (1, 8)


@pytest.mark.parametrize("name", ["baseline", "ddamfn", "sepnet"])
def test_channels_last_and_bf16_autocast_give_the_same_answer(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, input_size=48, width=0.5).eval()
    x = torch.randn(4, 1, 48, 48)
    with torch.no_grad():
        ref = model(x)
        fast = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x).float()
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)
    assert (low.argmax(1) == ref.argmax(1)).float().mean() >= 0.75


def test_checkpoint_round_trip_rebuilds_the_same_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = {"name": "ddamfn", "heads": 4, "width": 0.25, "activation": "relu", "dropout": 0.3}
    model = build_model("ddamfn", input_size=64, **{k: v for k, v in spec.items() if k != "name"})
    model.eval()
    save_checkpoint(tmp_path / "m.pt", model, {"model": spec, "input_size": 64})
    loaded, meta = load_model(tmp_path / "m.pt")
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert meta["model"] == spec


@pytest.mark.parametrize(
    ("name", "width", "max_steps"), [("baseline", 0.5, 40), ("ddamfn", 0.25, 60)]
)
def test_overfits_a_small_batch_of_real_faces(
    real_faces: tuple[np.ndarray, np.ndarray], name: str, width: float, max_steps: int
) -> None:
    """A model that cannot learn 96 fixed faces is broken (wiring, gradients, the loss)."""
    images, labels = real_faces
    torch.manual_seed(0)
    model = build_model(name, input_size=48, width=width).to(memory_format=torch.channels_last)
    x = to_tensor(images, 48).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    accuracy, losses = 0.0, []
    for _ in range(max_steps):
        if hasattr(model, "forward_with_heads"):
            logits, heads = model.forward_with_heads(x)
        else:
            logits, heads = model(x), None
        loss = total_loss(logits, y, heads, 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        accuracy = (logits.argmax(1) == y).float().mean().item()
        if accuracy >= 0.9:
            break
    print(f"{name}: train accuracy {accuracy:.2f} after {len(losses)} steps")
    assert accuracy >= 0.9
    assert losses[-1] < losses[0]


def calibrate_batchnorm(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Set BN running statistics from one batch, so an untrained net's eval mode does not
    shrink its activations to ~1e-7 (BN layers are then identity maps over many layers)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 1.0
    with torch.no_grad():
        model.train()(x)


def test_attention_figure_layout(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("ddamfn", input_size=48, width=0.25)
    faces = np.random.default_rng(0).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    calibrate_batchnorm(model, to_tensor(faces, 48))
    path = tmp_path / "attention.png"
    maps = attention_figure(model, faces, path)
    image = cv2.imread(str(path))
    # Three rows (faces) × three columns (face, after MFN, after DDAN).
    assert image.shape[:2] == (3 * PANEL_INCHES * DPI, 3 * PANEL_INCHES * DPI)
    for key in ("mfn", "ddan"):
        assert maps[key].shape == (3, 48, 48)
        for face_map in maps[key]:  # each face's map spans [0, 1]
            assert face_map.min() == 0.0 and face_map.max() == 1.0
    # The heat-map panels are coloured; the face panel is gray.
    panel = int(PANEL_INCHES * DPI)
    face, heat = image[panel // 2 : panel, :panel], image[panel // 2 : panel, 2 * panel :]
    assert np.ptp(face.astype(int), axis=2).max() < 10
    assert np.ptp(heat.astype(int), axis=2).max() > 60
    assert model.training  # the figure leaves the model's mode as it found it


def test_attention_figure_needs_attention_heads(tmp_path: Path) -> None:
    faces = np.zeros((2, 48, 48), np.uint8)
    with pytest.raises(ValueError, match="needs a ddamfn model"):
        attention_figure(build_model("baseline", input_size=48), faces, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()
