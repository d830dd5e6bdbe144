"""Real-time speed on this machine: ms per face (batch 1) for PyTorch, ONNX fp32 and ONNX int8,
and frames per second of the whole video loop (decode, detect, crop, classify, track, draw,
encode) on a 640×360 clip.

    python benchmarks/bench_realtime.py --model models/model.pt

Writes reports/benchmark_realtime.json and .md. Numbers depend on the machine and on what else
runs on it: the report names the CPU and the load average at the start.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ferlab.classes import CLASS_TO_INDEX, CLASSES
from ferlab.export import export_onnx, quantize_int8
from ferlab.faces.detect import FaceDetector
from ferlab.inference import Classifier, OnnxClassifier, bundled_model_path
from ferlab.io import write_json, write_text
from ferlab.realtime import FramePipeline, RealtimeSettings, annotate_video
from ferlab.realtime.overlay import draw_overlay
from ferlab.realtime.runtime import FaceResult, detect_faces, face_crop, label_of, to_gray

SHARED = Path(os.environ.get("FERLAB_SHARED_DATA", "../shared/data"))


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        return f"{fields['Model name'].strip()} ({fields['CPU(s)'].strip()} logical CPUs)"
    except (OSError, KeyError, subprocess.SubprocessError):
        return platform.processor() or platform.machine()


def real_faces(split: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Real FER2013+ faces from the shared archive (the first `per_class` of each class)."""
    archive = zipfile.ZipFile(SHARED / "fer2013plus.zip")
    images, labels = [], []
    for label in CLASSES:
        prefix = f"fer2013plus/{split}/{label}/"
        names = sorted(n for n in archive.namelist() if n.startswith(prefix))[:per_class]
        for name in names:
            data = np.frombuffer(archive.read(name), np.uint8)
            images.append(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE))
            labels.append(CLASS_TO_INDEX[label])
    return np.stack(images), np.array(labels)


def ms_per_face(classifier: Any, faces: np.ndarray, repeats: int) -> dict[str, float]:
    """Latency of one face at a time (batch 1), preprocessing included."""
    for face in faces[:10]:
        classifier.predict_proba(face[None])  # warm-up
    times = []
    for i in range(repeats):
        face = faces[i % len(faces)][None]
        start = time.perf_counter()
        classifier.predict_proba(face)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "median_ms": round(float(np.median(times)), 3),
        "p90_ms": round(float(np.percentile(times, 90)), 3),
    }


def loop_breakdown(video: Path, classifier: Any, settings: RealtimeSettings, frames: int) -> dict:
    """Mean ms per frame of each step of the loop, the steps run one by one."""
    detector = FaceDetector(score_threshold=settings.detect_score)
    pipeline = FramePipeline(classifier, settings, detector)
    capture = cv2.VideoCapture(str(video))
    steps: dict[str, list[float]] = {
        "decode": [],
        "detect": [],
        "crop": [],
        "classify": [],
        "track": [],
        "draw": [],
    }
    n_faces = []
    for _ in range(frames):
        t0 = time.perf_counter()
        ok, frame = capture.read()
        if not ok:
            break
        t1 = time.perf_counter()
        faces = detect_faces(detector, frame, settings.detect_max_side)
        t2 = time.perf_counter()
        gray = to_gray(frame)
        crops = [face_crop(gray, f, pipeline.input_size, pipeline.variant) for f in faces]
        t3 = time.perf_counter()
        probs = (
            classifier.predict_proba(np.stack(crops))
            if crops
            else np.zeros((0, len(CLASSES)), np.float32)
        )
        t4 = time.perf_counter()
        results = []
        for face, raw, (face_id, smoothed) in zip(
            faces, probs, pipeline.tracker.update([f.box for f in faces], probs), strict=True
        ):
            label, confidence = label_of(smoothed, settings.threshold)
            results.append(
                FaceResult(face_id, face.box, face.score, smoothed, raw, label, confidence)
            )
        t5 = time.perf_counter()
        draw_overlay(frame, results, 10.0)
        t6 = time.perf_counter()
        marks = (t0, t1, t2, t3, t4, t5, t6)
        for key, a, b in zip(steps, marks[:-1], marks[1:], strict=True):
            steps[key].append((b - a) * 1000)
        n_faces.append(len(faces))
    capture.release()
    return {
        "frames": len(n_faces),
        "faces_per_frame": round(float(np.mean(n_faces)), 2),
        "ms_per_frame": {k: round(float(np.mean(v)), 2) for k, v in steps.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/model.pt", help="checkpoint (.pt)")
    parser.add_argument("--int8", default=None, help="int8 ONNX (default: quantise here)")
    parser.add_argument("--video", default=str(SHARED / "videos/stage_clip.mp4"))
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--frames", type=int, default=0, help="frames of the clip (0 = all)")
    parser.add_argument("--note", default="", help="a remark written into the report")
    parser.add_argument("--out", default="reports/benchmark_realtime")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    faces, _ = real_faces("test", 25)
    work = Path(tempfile.mkdtemp(prefix="bench_realtime_"))
    fp32_path = work / "model.onnx"
    export_onnx(args.model, fp32_path)
    int8_path = Path(args.int8) if args.int8 else work / "model.int8.onnx"
    method = "given"
    if not args.int8:
        calibration, _ = real_faces("train", 16)
        method = "static"
        quantize_int8(fp32_path, int8_path, method, calibration)

    models = {
        "pytorch": Classifier.from_checkpoint(args.model),
        "onnx_fp32": OnnxClassifier(fp32_path),
        "onnx_int8": OnnxClassifier(int8_path),
        # What `ferlab predict/video/camera` use when no --model is given.
        "bundled_onnx": OnnxClassifier(bundled_model_path()),
    }
    latency = {}
    for name, model in models.items():
        latency[name] = ms_per_face(model, faces, args.repeats)
        print(f"{name}: {latency[name]['median_ms']:.3f} ms per face (batch 1, median)")

    settings = RealtimeSettings.load()
    video = Path(args.video)
    capture = cv2.VideoCapture(str(video))
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    capture.release()
    max_frames = args.frames or None
    loop = {}
    for name in ("onnx_fp32", "onnx_int8", "pytorch", "bundled_onnx"):
        pipeline = FramePipeline(models[name], settings)
        result = annotate_video(
            video, pipeline, work / f"{name}.mp4", work / f"{name}.csv", max_frames, log=print
        )
        loop[name] = {
            "frames": result.frames,
            "face_detections": result.faces,
            "fps": round(result.fps, 2),
        }
        print(f"video loop with {name}: {result.fps:.2f} FPS over {result.frames} frames")
    breakdown = loop_breakdown(video, models["onnx_fp32"], settings, min(result.frames, 150))

    model_meta = models["pytorch"].meta
    report = {
        "cpu": cpu_name(),
        "load_average_at_start": round(load, 2),
        "torch_threads": __import__("torch").get_num_threads(),
        "model": {
            "checkpoint": args.model,
            "spec": model_meta["model"],
            "input_size": model_meta["input_size"],
            "variant": model_meta.get("variant", "original"),
            "int8_method": method,
        },
        "bundled_model": {
            k: models["bundled_onnx"].meta[k]
            for k in ("model", "input_size", "variant", "precision")
        },
        "ms_per_face_batch1": latency,
        "video": {"file": video.name, "width": size[0], "height": size[1]},
        "video_loop_fps": loop,
        "loop_breakdown_onnx_fp32": breakdown,
        "note": args.note,
    }
    out = Path(args.out)
    write_json(out.with_suffix(".json"), report)
    write_text(out.with_suffix(".md"), markdown(report))
    print(json.dumps(report, indent=2))


def markdown(r: dict) -> str:
    lines = [
        "# Real-time benchmark",
        "",
        f"CPU: {r['cpu']}; load average at start {r['load_average_at_start']} (the machine is "
        f"shared); PyTorch threads {r['torch_threads']}.",
        f"Model: `{r['model']['checkpoint']}` ({r['model']['spec']['name']}, input "
        f"{r['model']['input_size']}, variant {r['model']['variant']}).",
    ]
    b = r["bundled_model"]
    lines.append(
        f"`bundled_onnx` is the model shipped in the package ({b['model']['name']}, "
        f"width {b['model'].get('width')}, {b['precision']}), the default of the commands."
    )
    if r["note"]:
        lines += ["", r["note"]]
    lines += [
        "",
        "| classifier | ms per face, batch 1 (median) | p90 | video loop FPS |",
        "|---|---|---|---|",
    ]
    for name, lat in r["ms_per_face_batch1"].items():
        fps = r["video_loop_fps"][name]["fps"]
        lines.append(f"| {name} | {lat['median_ms']:.2f} | {lat['p90_ms']:.2f} | {fps:.1f} |")
    v, b = r["video"], r["loop_breakdown_onnx_fp32"]
    lines += [
        "",
        f"Video loop: `{v['file']}` at {v['width']}×{v['height']}, decode → RetinaFace → crop → "
        "classify → track/smooth → draw → encode, one frame at a time.",
        "",
        f"Where a frame's time goes (ONNX fp32, {b['frames']} frames, "
        f"{b['faces_per_frame']} faces per frame on average), ms:",
        "",
        "| " + " | ".join(b["ms_per_frame"]) + " |",
        "|" + "---|" * len(b["ms_per_frame"]),
        "| " + " | ".join(f"{v:.1f}" for v in b["ms_per_frame"].values()) + " |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
