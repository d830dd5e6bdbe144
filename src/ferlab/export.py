"""ONNX export (fp32 and int8), their comparison with PyTorch, and their per-face speed.

An exported model carries what is needed to use it in its ONNX `metadata_props`: class list,
input size, normalisation, preprocessing variant, model spec, and (when known) the training
class prior and the temperature the evaluate stage fitted. Running an export is the inference
layer's job (`ferlab.inference.OnnxClassifier`, `load_classifier`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ferlab.checkpoint import NORMALIZATION
from ferlab.inference import (
    INPUT_NAME,
    ONNX_META_KEYS,
    OUTPUT_NAME,
    FaceClassifier,
    ModelSource,
    OnnxClassifier,
    TestTimeViews,
    TorchClassifier,
    Views,
    load_models,
    normalise,
    source_name,
)
from ferlab.io import atomic_path

DEFAULT_OPSET = 17
INT8_METHODS: tuple[str, ...] = ("static", "dynamic")
QUANTIZED_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul")
# Metadata keys written into every exported model; values are strings (JSON where structured).
META_KEYS = ONNX_META_KEYS  # read back by ferlab.inference.OnnxClassifier
OUT_DIR = Path("models/onnx")  # the export stage's output folder

Log = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# Export


def export_onnx(
    checkpoint: ModelSource,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    temperature: float | None = None,
    class_prior: list[float] | None = None,
    views: Views | None = None,
) -> dict[str, Any]:
    """Export a checkpoint (or a list of them, as their mean: `load_models`) to fp32 ONNX
    with a dynamic batch axis; returns the stored metadata.

    Input `faces` is N×1×S×S float (normalised by `ferlab.inference.normalise`), output
    `logits` N×C. `temperature` (fitted by the evaluate stage) and `class_prior` (default: the
    checkpoint's `class_prior`) are stored when given, for `OnnxClassifier` to use. With
    `views` the graph scores each face as the mean of those test-time views' logits.
    """
    model, meta = load_models(checkpoint, expected_classes=None, views=views)
    return export_model(model, meta, out, opset, temperature, class_prior)


def export_model(
    model: torch.nn.Module,
    meta: dict[str, Any],
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    temperature: float | None = None,
    class_prior: list[float] | None = None,
) -> dict[str, Any]:
    """`export_onnx` of a model already loaded (`load_models`: the model and its metadata)."""
    import onnx

    if opset < 17:
        raise ValueError(f"opset {opset} is too old; use 17 or newer")
    size = int(meta["input_size"])
    dummy = torch.zeros(1, 1, size, size)
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            # The TorchScript exporter is deprecated in favour of the dynamo one, which needs
            # onnxscript (not a dependency); it still exports these plain conv nets exactly.
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    model,
                    (dummy,),
                    str(tmp),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                )
            except torch.onnx.OnnxExporterError as exc:
                # Every view a resized crop: the exporter loses the crops' side, and a model
                # with adaptive pooling (the baseline) cannot be traced without it.
                if isinstance(model, TestTimeViews) and 1.0 not in model.views.crops:
                    raise ValueError(
                        f"{out}: test-time crops {list(model.views.crops)} cannot be exported "
                        "for this model (without the whole face the ONNX exporter loses the "
                        "crops' side); add 1.0 to the crops (evaluate.tta_crops, "
                        "evaluate.tta_crops_by_model or --crop)"
                    ) from exc
                raise
        proto = onnx.load(str(tmp))
        stored = model_metadata(meta, temperature, class_prior)
        set_metadata(proto, {**stored, "precision": "fp32", "opset": str(opset)})
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return stored


def model_metadata(
    meta: dict[str, Any],
    temperature: float | None = None,
    class_prior: list[float] | None = None,
) -> dict[str, str]:
    """The metadata_props of an exported model, from a checkpoint's metadata."""
    stored = {
        "classes": json.dumps(list(meta["classes"])),
        "input_size": str(int(meta["input_size"])),
        "normalization": json.dumps(dict(meta.get("normalization", NORMALIZATION))),
        "variant": str(meta.get("variant", "original")),
        "model": json.dumps(meta["model"]),
    }
    prior = class_prior if class_prior is not None else meta.get("class_prior")
    if prior is not None:
        stored["class_prior"] = json.dumps([float(v) for v in prior])
    if temperature is not None:
        stored["temperature"] = repr(float(temperature))
    if meta.get("views") is not None:
        stored["views"] = json.dumps(meta["views"])
    return stored


def set_metadata(proto: Any, values: dict[str, str]) -> None:
    """Replace (or add) metadata_props entries of an ONNX ModelProto."""
    kept = [p for p in proto.metadata_props if p.key not in values]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def read_metadata(path: str | Path) -> dict[str, str]:
    """metadata_props of an ONNX file as a dict (without loading the weights)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


class _FaceBatches:
    """Calibration data for static quantisation: real faces, normalised as for inference."""

    def __init__(self, faces: np.ndarray, input_size: int, batch_size: int = 32) -> None:
        self._batches: Iterator[np.ndarray] = (
            normalise(faces[i : i + batch_size], input_size)
            for i in range(0, len(faces), batch_size)
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def input_convs(path: str | Path) -> list[str]:
    """The Conv nodes that read the one-channel face: the graph's input, directly or through
    the test-time views' crops, resizes, flips and concatenation. int8 keeps them in float: on
    a single input channel an int8 conv saves almost no work, and quantising the input costs
    more (the live net's int8 export: 0.25 against 0.30 ms a face on this EPYC)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {w.name for w in graph.initializer}
    # tensors that are still (views of) the face: the input, then what crops, resizes, flips
    # and concatenates it; a node's data is its first input (Concat: any of them), and shapes
    # read off the face (Shape, Size) are not the face
    face = {i.name for i in graph.input} - weights
    convs = []
    for node in graph.node:  # ONNX lists nodes in topological order
        if node.op_type == "Conv" and node.input[0] in face:
            convs.append(node.name)
        if node.op_type in (*QUANTIZED_OPS, "Shape", "Size"):
            continue  # a conv's output is features, not the face
        data = node.input if node.op_type == "Concat" else node.input[:1]
        if any(i in face for i in data):
            face.update(node.output)
    return convs


def quantize_int8(
    fp32: str | Path,
    out: str | Path,
    method: str = "static",
    calibration_faces: np.ndarray | None = None,
) -> None:
    """Write an int8 copy of an fp32 export, with the same metadata plus its method. The convs
    that read the input face stay in float (`input_convs`).

    `static`: QDQ, per-channel int8 weights and uint8 activations whose ranges are calibrated on
    `calibration_faces` (real uint8 faces). `dynamic`: int8 weights, activations quantised on
    the fly; needs no calibration data.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in INT8_METHODS:
        raise ValueError(f"int8 method {method!r}; choose one of {INT8_METHODS}")
    meta = read_metadata(fp32)
    with atomic_path(out) as tmp:
        prepared = tmp.with_name("prepared.onnx")
        # Shape inference + graph optimisation first, as ONNX Runtime recommends: it folds
        # BatchNorm into Conv so the folded weights, not the raw ones, get quantised.
        quant_pre_process(str(fp32), str(prepared))
        float_convs = input_convs(prepared)
        if method == "static":
            if calibration_faces is None or len(calibration_faces) == 0:
                raise ValueError("static int8 quantisation needs calibration faces")
            quantize_static(
                str(prepared),
                str(tmp),
                _FaceBatches(calibration_faces, int(meta["input_size"])),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                # The weighted layers hold nearly all the compute and the weights; leaving
                # element-wise ops (attention gates, BatchNorm after MixConv) in float keeps
                # their accuracy and makes calibration faster.
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=float_convs,
            )
        else:
            quantize_dynamic(
                str(prepared),
                str(tmp),
                per_channel=True,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=float_convs,
            )
        prepared.unlink()
        proto = onnx.load(str(tmp))
        set_metadata(proto, {**meta, "precision": "int8", "quantization": method})
        onnx.save(proto, str(tmp))


# --------------------------------------------------------------------------------------------
# Measurements


def accuracy(classifier: FaceClassifier, faces: np.ndarray, labels: np.ndarray) -> float:
    return float((classifier.predict(faces) == labels).mean())


def sample_indices(n: int, k: int, seed: int) -> np.ndarray:
    """A seeded, sorted sample of min(k, n) indices out of n."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(k, n), replace=False))


def choose_int8(
    fp32: str | Path,
    out: str | Path,
    calibration_faces: np.ndarray,
    val_faces: np.ndarray,
    val_labels: np.ndarray,
    methods: tuple[str, ...] = INT8_METHODS,
    log: Log = print,
    margin: float = 0.002,
) -> dict[str, Any]:
    """Quantise with each method and keep one (`pick_int8`): the most accurate on the (real)
    validation faces, unless it is slower. Choosing on validation faces keeps the test faces
    untouched for the reported drop."""
    out = Path(out)
    scores: dict[str, float] = {}
    speed: dict[str, float] = {}
    for method in methods:
        candidate = out.with_name(f"{out.stem}.{method}.onnx")
        quantize_int8(fp32, candidate, method, calibration_faces)
        scores[method] = accuracy(OnnxClassifier(candidate), val_faces, val_labels)
        speed[method] = per_face_ms(candidate, threads=1)
        log(
            f"export: int8 {method}: val accuracy {scores[method]:.4f} on {len(val_labels)} "
            f"faces, {speed[method]:.2f} ms a face"
        )
    best = pick_int8(scores, speed, methods, margin)
    for method in methods:
        candidate = out.with_name(f"{out.stem}.{method}.onnx")
        if method == best:
            candidate.replace(out)
        else:
            candidate.unlink()
    return {"method": best, "val_accuracy": scores, "ms_per_face_1_thread": speed}


def pick_int8(
    scores: dict[str, float],
    ms_per_face: dict[str, float],
    methods: tuple[str, ...] = INT8_METHODS,
    margin: float = 0.002,
) -> str:
    """The int8 method to keep. A method listed later replaces an earlier one only when it is
    more accurate by more than `margin` (2 faces in 1,000 by default: noise) AND no slower:
    int8 exists to be faster or smaller, and dynamic quantisation's ConvInteger can run several
    times slower than static QDQ (7× slower than fp32 for the mean of two live models here)."""
    best = methods[0]
    for method in methods[1:]:
        if scores[method] > scores[best] + margin and ms_per_face[method] <= ms_per_face[best]:
            best = method
    return best


def _subset(
    split: str, variant: str, arrays_root: str | Path, k: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    from ferlab.data.arrays import load_split

    images, labels, _ = load_split(split, variant, arrays_root)
    index = sample_indices(len(images), k, seed)
    return images[index], labels[index]


def export_all(
    checkpoint: ModelSource = "models/model.pt",
    arrays_root: str | Path = "data/arrays",
    onnx_out: str | Path = "models/model.onnx",
    int8_out: str | Path = "models/model.int8.onnx",
    temperature: float | None = None,
    opset: int = DEFAULT_OPSET,
    int8_methods: tuple[str, ...] = INT8_METHODS,
    test_images: int = 1000,
    calibration_images: int = 512,
    seed: int = 42,
    views: Views | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """The export stage's work for one model: fp32 + int8 exports and their agreement and
    accuracy on real test faces. Returns the report.

    The exports carry the training class prior (the checkpoint's, else the cached training
    labels' frequencies), `temperature` when given (the evaluate stage's fit) and `views`
    (test-time views inside the graph; PyTorch is compared with the same views).
    """
    from ferlab.data.arrays import load_split
    from ferlab.inference import prior_from_labels

    onnx_out, int8_out = Path(onnx_out), Path(int8_out)
    model, payload = load_models(checkpoint, views=views)
    variant = str(payload.get("variant", "original"))
    train_faces, train_labels, _ = load_split("train", variant, arrays_root)
    prior = payload.get("class_prior")
    if prior is None:
        try:
            prior = prior_from_labels(train_labels, len(payload["classes"])).tolist()
        except ValueError as exc:  # a class without training faces: no prior to store
            log(f"export: no class prior stored ({exc})")
    meta = export_model(model, payload, onnx_out, opset, temperature, prior)
    log(
        f"export: {onnx_out} ({onnx_out.stat().st_size / 1e6:.1f} MB, variant {variant}, "
        f"temperature {meta.get('temperature', 'none')})"
    )

    test_faces, test_labels = _subset("test", variant, arrays_root, test_images, seed)
    val_faces, val_labels = _subset("val", variant, arrays_root, test_images, seed)
    calibration = train_faces[sample_indices(len(train_faces), calibration_images, seed)]

    # Compared as raw models: the same (unit) temperature on both sides.
    torch_model = TorchClassifier(model, payload, temperature=1.0)
    fp32 = OnnxClassifier(onnx_out, temperature=1.0)
    p_torch = torch_model.predict_proba(test_faces)
    p_fp32 = fp32.predict_proba(test_faces)
    choice = choose_int8(onnx_out, int8_out, calibration, val_faces, val_labels, int8_methods, log)
    p_int8 = OnnxClassifier(int8_out, temperature=1.0).predict_proba(test_faces)

    acc_torch = float((p_torch.argmax(1) == test_labels).mean())
    acc_int8 = float((p_int8.argmax(1) == test_labels).mean())
    report: dict[str, Any] = {
        "checkpoint": source_name(checkpoint),
        "model": json.loads(meta["model"]),
        "views": (views or Views()).to_json(),  # what the graph scores (one view: the face)
        "opset": opset,
        "variant": variant,
        "temperature": temperature,
        "n_test_images": len(test_labels),
        "pytorch_accuracy": acc_torch,
        "fp32_accuracy": float((p_fp32.argmax(1) == test_labels).mean()),
        "fp32_max_prob_diff": float(np.abs(p_fp32.astype(np.float64) - p_torch).max()),
        "int8_method": choice["method"],
        "int8_val_accuracy": choice["val_accuracy"],
        "int8_ms_per_face_by_method": choice["ms_per_face_1_thread"],
        "int8_accuracy": acc_int8,
        "int8_accuracy_drop": acc_torch - acc_int8,
        "int8_agreement_with_fp32": float((p_int8.argmax(1) == p_fp32.argmax(1)).mean()),
        "int8_max_prob_diff": float(np.abs(p_int8.astype(np.float64) - p_fp32).max()),
        "fp32_size_mb": onnx_out.stat().st_size / 1e6,
        "int8_size_mb": int8_out.stat().st_size / 1e6,
    }
    log(
        f"export: fp32 vs PyTorch max probability difference {report['fp32_max_prob_diff']:.2e}; "
        f"int8 ({choice['method']}) accuracy {acc_int8:.4f} vs {acc_torch:.4f} on "
        f"{len(test_labels)} test faces"
    )
    return report


def per_face_ms(onnx_path: str | Path, threads: int = 1, repeats: int = 300) -> float:
    """Median milliseconds to classify one face (batch 1) with ONNX Runtime on `threads`
    threads, after a warm-up: the live loop's per-face cost on this machine."""
    import time

    classifier = OnnxClassifier(onnx_path, threads=threads)
    face = np.full((1, classifier.input_size, classifier.input_size), 128, np.uint8)
    for _ in range(20):
        classifier.logits(face)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        classifier.logits(face)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)
