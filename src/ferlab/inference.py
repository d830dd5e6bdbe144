"""Face crops in, class scores out: the one inference layer, for PyTorch and ONNX Runtime.

Both back-ends share one batching loop and one normalisation (`to_tensor`); they differ only
in how a normalised batch N×1×S×S becomes logits. On top of the logits, every classifier
offers the same options:

- `tta_flip`: average the logits of each face and its mirror image;
- `temperature`: divide the logits by it before the softmax (calibration; an ONNX export
  stores the value the evaluate stage fitted, and uses it unless told otherwise);
- `logit_adjust_tau` with `class_prior`: the prior-corrected decision
  argmax(logits / T − τ·log prior). τ = 0 is the plain argmax, exactly; τ = 1 scores each
  class as if the classes had been equally frequent in training.

`predict_proba` is the softmax of the same adjusted logits, so its argmax is `predict`'s
answer and the live recogniser's thresholds apply to what it decides.

Several checkpoints given together are one model (`MeanOfModels`): the mean of their class
probabilities, scored, exported and deployed like any single checkpoint.

Test-time views (`Views`, `TestTimeViews`) are part of the model, not of the classifier: a model
loaded with views scores each face as the mean of its views' logits, and exports to ONNX with
them inside the graph, so the evaluated model is the deployed one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ferlab.checkpoint import NORMALIZATION, load_model
from ferlab.classes import CLASSES

# One checkpoint, or several whose mean probability is the model (evaluate.models' lists).
ModelSource = str | Path | Sequence[str | Path]

INPUT_NAME = "faces"
OUTPUT_NAME = "logits"
# Metadata every ferlab ONNX export carries (values are strings, JSON where structured).
ONNX_META_KEYS: tuple[str, ...] = ("classes", "input_size", "normalization", "variant", "model")


def normalise(faces: np.ndarray, input_size: int) -> np.ndarray:
    """uint8 grayscale faces (N×H×W) -> float32 N×1×S×S scaled as the models were trained.

    Faces not already S×S are resized (area when shrinking, cubic when enlarging).
    """
    faces = np.asarray(faces)
    if faces.ndim != 3:
        raise ValueError(f"expected N×H×W grayscale faces, got shape {faces.shape}")
    if faces.shape[1:] != (input_size, input_size):
        interp = cv2.INTER_AREA if faces.shape[1] > input_size else cv2.INTER_CUBIC
        faces = np.stack(
            [cv2.resize(f, (input_size, input_size), interpolation=interp) for f in faces]
        )
    x = faces.astype(np.float32)[:, None] / np.float32(255.0)
    return (x - np.float32(NORMALIZATION["mean"])) / np.float32(NORMALIZATION["std"])


def to_tensor(faces: np.ndarray, input_size: int) -> torch.Tensor:
    """`normalise` as a torch tensor (what training and the attention maps feed the models)."""
    return torch.from_numpy(normalise(faces, input_size))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def check_prior(prior: Sequence[float] | np.ndarray, n_classes: int) -> np.ndarray:
    """A class prior as a float64 vector summing to 1; one clear error for a wrong one."""
    values = np.asarray(prior, dtype=np.float64)
    if values.shape != (n_classes,) or not np.all(np.isfinite(values)) or (values <= 0).any():
        raise ValueError(
            f"class prior {values.tolist()} must be {n_classes} positive numbers (training "
            "class frequencies); a class with no training faces cannot be prior-corrected"
        )
    return values / values.sum()


def prior_from_labels(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Training class frequencies (what a checkpoint without `class_prior` was trained on)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    if len(counts) != n_classes or counts.sum() == 0:
        raise ValueError(f"labels must be class indices below {n_classes}, and not none")
    return check_prior(counts / counts.sum(), n_classes)


class MeanOfModels(nn.Module):
    """Several trained models as one: it returns the log of their mean class probability.

    The softmax of that output is the mean probability itself, so it stands in for one model's
    logits: temperature, prior correction and flip TTA apply unchanged, and it exports to ONNX
    as one graph (one session, one call per batch in the live loop).
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).float().softmax(dim=1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(1e-12).log()  # no -inf where every member is certain


@dataclass(frozen=True)
class Views:
    """Test-time views of a face: each centre crop (the fraction of the side it keeps, enlarged
    back to the input size) and, with `flip`, each crop's mirror image."""

    crops: tuple[float, ...] = (1.0,)
    flip: bool = False

    def __post_init__(self) -> None:
        crops = tuple(float(c) for c in self.crops)
        if not crops or any(not 0.5 <= c <= 1.0 for c in crops) or len(set(crops)) < len(crops):
            raise ValueError(
                f"test-time crops {list(self.crops)} must be distinct fractions of the face "
                "side between 0.5 and 1.0, e.g. [1.0, 0.92]"
            )
        object.__setattr__(self, "crops", crops)
        object.__setattr__(self, "flip", bool(self.flip))

    @property
    def count(self) -> int:
        return len(self.crops) * (2 if self.flip else 1)

    def sides(self, input_size: int) -> list[int]:
        """Each crop's side in pixels; two crops of one side would score a view twice."""
        sides = [round(c * input_size) for c in self.crops]
        if len(set(sides)) < len(sides):
            raise ValueError(
                f"test-time crops {list(self.crops)} give sides {sides} px at input size "
                f"{input_size}: two of them are the same crop; drop one"
            )
        return sides

    def to_json(self) -> dict[str, Any]:
        return {"crops": list(self.crops), "flip": self.flip}


class TestTimeViews(nn.Module):
    """A model that scores each face as the mean of its views' logits (`Views`), in one
    forward pass over all views; it exports to ONNX (Slice, Resize, Concat) as one graph.

    Logits are averaged, as flip TTA always was here; for a `MeanOfModels` they are the log of
    its mean probability."""

    __test__ = False  # a model, not a pytest test class

    def __init__(self, model: nn.Module, views: Views, input_size: int, n_classes: int) -> None:
        super().__init__()
        views.sides(input_size)  # refuses crops that round to the same side here, not later
        self.model = model
        self.views = views
        self.input_size = int(input_size)
        self.n_classes = int(n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.input_size
        crops = []
        for side in self.views.sides(size):
            if side == size:
                crops.append(x)
                continue
            start = (size - side) // 2
            patch = x[..., start : start + side, start : start + side]
            crops.append(
                F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False)
            )
        if self.views.flip:
            crops += [c.flip(-1) for c in crops]
        logits = self.model(torch.cat(crops)).float()
        return logits.reshape(len(crops), -1, self.n_classes).mean(dim=0)


def with_views(
    model: nn.Module, meta: dict[str, Any], views: Views | None
) -> tuple[nn.Module, dict[str, Any]]:
    """`model` scoring `views` (unchanged for one view), and its metadata naming them."""
    if views is None or (views.count == 1 and views.crops == (1.0,)):
        return model, meta
    wrapped = TestTimeViews(model, views, int(meta["input_size"]), len(meta["classes"]))
    return wrapped.eval(), {**meta, "views": views.to_json()}


def source_name(source: ModelSource) -> str | list[str]:
    """How reports name a model source: its path, or the list of its checkpoints."""
    return str(source) if isinstance(source, (str, Path)) else [str(p) for p in source]


def model_label(spec: dict[str, Any]) -> str:
    """A model spec's name for reports: the registry name, or "mean of 2× baseline"."""
    if spec.get("name") != "mean":
        return str(spec["name"])
    names = [str(m["name"]) for m in spec["members"]]
    if len(set(names)) == 1:
        return f"mean of {len(names)}× {names[0]}"
    return "mean of " + ", ".join(names)


def source_paths(source: ModelSource) -> list[Path]:
    """The files a model source reads."""
    return [Path(source)] if isinstance(source, (str, Path)) else [Path(p) for p in source]


# Metadata all members of a MeanOfModels must share: the same inputs, classes and training data
# (the mean keeps the first member's class prior).
_MEMBER_KEYS = ("classes", "input_size", "normalization", "variant", "data_sha256", "class_prior")


def load_models(
    source: ModelSource,
    expected_classes: tuple[str, ...] | None = CLASSES,
    views: Views | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The model `source` names, in eval mode, with its metadata: one checkpoint as
    `load_model` rebuilds it, or several as a `MeanOfModels`; with `views`, scoring them
    (`TestTimeViews`, metadata `views`).

    A mean's metadata is its first member's (input, classes, variant, class prior), with
    `model` = {"name": "mean", "members": [each member's model spec]} and `checkpoints`.
    """
    return with_views(*_load_models(source, expected_classes), views)


def _load_models(
    source: ModelSource, expected_classes: tuple[str, ...] | None
) -> tuple[nn.Module, dict[str, Any]]:
    if isinstance(source, (str, Path)):
        return load_model(source, expected_classes)
    paths = [Path(p) for p in source]
    if not paths:
        raise ValueError("an empty list of checkpoints is no model; give at least one")
    if len(paths) == 1:
        return load_model(paths[0], expected_classes)
    loaded = [load_model(p, expected_classes) for p in paths]
    first = loaded[0][1]
    for path, (_, meta) in zip(paths[1:], loaded[1:], strict=True):
        for key in _MEMBER_KEYS:
            if meta.get(key) != first.get(key):
                raise ValueError(
                    f"{path}: {key} {meta.get(key)!r} differs from {paths[0]}'s "
                    f"{first.get(key)!r}; a mean needs models trained on the same inputs"
                )
    meta = {
        **first,
        "model": {"name": "mean", "members": [m["model"] for _, m in loaded]},
        "checkpoints": [str(p) for p in paths],
    }
    return MeanOfModels([model for model, _ in loaded]).eval(), meta


class FaceClassifier:
    """The interface both back-ends share; subclasses implement `_forward` only.

    Constructed directly (with `classes`) it has no model: it only turns logits into
    decisions and probabilities (`decide`, `proba`) under its options.
    """

    meta: dict[str, Any]
    classes: list[str]
    input_size: int

    def __init__(
        self,
        tta_flip: bool = False,
        temperature: float = 1.0,
        class_prior: Sequence[float] | np.ndarray | None = None,
        logit_adjust_tau: float = 0.0,
        classes: Sequence[str] | None = None,
    ) -> None:
        if classes is not None:
            self.classes = list(classes)
        self.tta_flip = bool(tta_flip)
        self.temperature = float(temperature)
        self.class_prior = class_prior
        self.logit_adjust_tau = float(logit_adjust_tau)

    # The options are checked whenever they are set, so a bad value fails where it is given.
    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"temperature {value} must be a positive number")
        self._temperature = float(value)

    @property
    def class_prior(self) -> np.ndarray | None:
        return self._class_prior

    @class_prior.setter
    def class_prior(self, value: Sequence[float] | np.ndarray | None) -> None:
        self._class_prior = None if value is None else check_prior(value, len(self.classes))

    @property
    def logit_adjust_tau(self) -> float:
        return self._tau

    @logit_adjust_tau.setter
    def logit_adjust_tau(self, value: float) -> None:
        if not np.isfinite(value) or value < 0:
            raise ValueError(f"logit adjustment τ = {value} must be 0 or more")
        self._tau = float(value)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 N×1×S×S -> logits N×C (float32)."""
        raise NotImplementedError(f"{type(self).__name__} has no model to run")

    def logits(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """The model's logits for uint8 faces N×H×W, in batches; with `tta_flip`, the mean of
        each face's and its mirror image's logits. Temperature and prior are not applied."""
        n_classes = len(self.classes)
        out = []
        for start in range(0, len(faces), batch_size):
            x = normalise(faces[start : start + batch_size], self.input_size)
            if self.tta_flip:
                both = self._forward(np.concatenate([x, x[..., ::-1]]))
                out.append((both[: len(x)] + both[len(x) :]) / 2)
            else:
                out.append(self._forward(x))
        return np.concatenate(out) if out else np.zeros((0, n_classes), np.float32)

    def adjust(self, logits: np.ndarray) -> np.ndarray:
        """Logits as this classifier decides with them: / temperature, − τ·log(prior)."""
        scores = np.asarray(logits, dtype=np.float64) / self.temperature
        if self.logit_adjust_tau:
            if self.class_prior is None:
                raise ValueError(
                    "logit adjustment needs the training class prior: set class_prior (a "
                    "checkpoint's meta['class_prior'] or an export's metadata)"
                )
            scores = scores - self.logit_adjust_tau * np.log(self.class_prior)
        return scores

    def decide(self, logits: np.ndarray) -> np.ndarray:
        """Class indices from logits; τ = 0 is exactly the argmax of the logits."""
        if not self.logit_adjust_tau:
            return np.asarray(logits).argmax(axis=1)
        return self.adjust(logits).argmax(axis=1)

    def proba(self, logits: np.ndarray) -> np.ndarray:
        return softmax(self.adjust(logits))

    def predict_proba(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.proba(self.logits(faces, batch_size))

    def predict(self, faces: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return self.decide(self.logits(faces, batch_size))


class TorchClassifier(FaceClassifier):
    """A trained `.pt` checkpoint on PyTorch (CPU, or CUDA when asked)."""

    def __init__(
        self, model: nn.Module, meta: dict[str, Any], device: str = "cpu", **options: Any
    ) -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = device
        self.input_size = int(meta["input_size"])
        self.classes = list(meta["classes"])
        options.setdefault("temperature", float(meta.get("temperature", 1.0)))
        options.setdefault("class_prior", meta.get("class_prior"))
        super().__init__(**options)

    @classmethod
    def from_checkpoint(
        cls,
        path: ModelSource,
        device: str = "cpu",
        expected_classes: tuple[str, ...] | None = CLASSES,
        views: Views | None = None,
        **options: Any,
    ) -> TorchClassifier:
        """One checkpoint, or a list of them as their mean, with `views` if given
        (`load_models`)."""
        model, meta = load_models(path, expected_classes, views)
        return cls(model, meta, device, **options)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            batch = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
            return self.model(batch).float().cpu().numpy()


# The PyTorch back-end's earlier name, which the study stages and the age model use.
Classifier = TorchClassifier


class OnnxClassifier(FaceClassifier):
    """A ferlab ONNX export on ONNX Runtime (CPU), configured from its metadata_props."""

    def __init__(
        self,
        path: str | Path,
        threads: int = 0,
        expected_classes: tuple[str, ...] | None = CLASSES,
        **options: Any,
    ) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no ONNX model; export one with `ferlab export`")
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = threads  # 0 = ONNX Runtime's default (all cores)
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=session_options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for bad files
            raise ValueError(
                f"{path}: not a readable ONNX model ({exc.__class__.__name__})"
            ) from None
        props = self.session.get_modelmeta().custom_metadata_map
        missing = [k for k in ONNX_META_KEYS if k not in props]
        if missing:
            raise ValueError(
                f"{path}: ONNX model lacks ferlab metadata {missing}; "
                "export it with `ferlab export` (or stages/export.py)"
            )
        self.path = path
        self.meta: dict[str, Any] = {
            "classes": json.loads(props["classes"]),
            "input_size": int(props["input_size"]),
            "normalization": json.loads(props["normalization"]),
            "variant": props["variant"],
            "model": json.loads(props["model"]),
            "precision": props.get("precision", "fp32"),
            "quantization": props.get("quantization"),
            "temperature": float(props.get("temperature", 1.0)),
            "class_prior": json.loads(props["class_prior"]) if "class_prior" in props else None,
            # test-time views inside the graph (ferlab.inference.Views), if it was exported so
            "views": json.loads(props["views"]) if "views" in props else None,
        }
        if expected_classes is not None and self.meta["classes"] != list(expected_classes):
            raise ValueError(
                f"{path}: class list {self.meta['classes']} differs from {list(expected_classes)}"
            )
        if self.meta["normalization"] != NORMALIZATION:
            # normalise() applies the one project normalisation; a model trained with another
            # would silently get wrong inputs.
            raise ValueError(
                f"{path}: normalisation {self.meta['normalization']} differs from the "
                f"project's {NORMALIZATION}; re-export it from a current checkpoint"
            )
        self.input_size = self.meta["input_size"]
        self.classes = list(self.meta["classes"])
        options.setdefault("temperature", self.meta["temperature"])
        options.setdefault("class_prior", self.meta["class_prior"])
        super().__init__(**options)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        feed = {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)}
        return self.session.run([OUTPUT_NAME], feed)[0]


def bundled_model_path() -> Path:
    """The ONNX model shipped inside the package (src/ferlab/bundled/model.onnx)."""
    return Path(str(resources.files("ferlab") / "bundled" / "model.onnx"))


def load_classifier(
    path: ModelSource | None = None,
    threads: int = 0,
    views: Views | None = None,
    **options: Any,
) -> FaceClassifier:
    """A classifier from a .pt checkpoint (PyTorch) or an .onnx export (ONNX Runtime); a list
    of .pt checkpoints is their mean (`MeanOfModels`). `views` makes a checkpoint score
    test-time views (`TestTimeViews`); an export has the views it was exported with.

    No path means the bundled model, so the commands work right after install. `options` are
    the classifier options (`tta_flip`, `temperature`, `class_prior`, `logit_adjust_tau`);
    temperature and prior default to what the model file carries.
    """
    if path is None:
        path = bundled_model_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: this install has no bundled model; pass --model models/model.pt "
                "(or an .onnx export), or run `dvc repro export` to create it"
            )
    paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
    if len(paths) == 1 and paths[0].suffix.lower() == ".onnx":
        if views is not None:
            raise ValueError(
                f"{paths[0]}: an ONNX export keeps the test-time views it was exported with; "
                "give the .pt checkpoint to score other views, or export it with them"
            )
        return OnnxClassifier(paths[0], threads=threads, **options)
    wrong = [p for p in paths if p.suffix.lower() != ".pt"]
    if wrong:
        if len(paths) > 1:
            raise ValueError(f"{wrong[0]}: a mean of models takes .pt checkpoints only")
        raise ValueError(
            f"{wrong[0]}: unknown model type {wrong[0].suffix!r}; give a .pt checkpoint or an .onnx"
        )
    if threads:
        torch.set_num_threads(threads)
    source = paths[0] if len(paths) == 1 else paths
    return TorchClassifier.from_checkpoint(source, views=views, **options)
