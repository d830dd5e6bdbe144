"""Real-time speed on this machine, in one run:

- ms per face (batch 1, preprocessing included) of every candidate model, on 1 and 2 threads;
- RetinaFace at a few input sizes on both videos: ms per frame, and recall against the full-size
  detections (the `realtime.detect_max_side` trade-off);
- the whole video loop (decode, detect or track, crop, classify, smooth, draw, encode) on
  `stage_clip.mp4` and `single_face.mp4`: every frame detected and classified (the loop before
  tracking), the live settings on 2 threads (optical-flow and template tracking, and with
  classification every 6th frame instead of every 2nd) and on 1, and the `pi` profile
  (1 thread); FPS, ms per frame of each stage (`FramePipeline.timing`), and how the faces and
  labels agree with the every-frame loop.

    python benchmarks/bench_realtime.py                      # bundled model + models/onnx/*.onnx
    python benchmarks/bench_realtime.py --models models/model.pt models/onnx/fast.onnx
    python benchmarks/bench_realtime.py --frames 20 --repeats 20 --out /tmp/bench   # a quick check

Writes reports/benchmark_realtime.json and .md. Numbers depend on the machine and on what else
runs on it: the report names the CPU and the load average at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import zipfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from ferlab.classes import CLASSES
from ferlab.faces.detect import FaceDetector
from ferlab.inference import bundled_model_path, load_classifier, model_label
from ferlab.io import write_json, write_text
from ferlab.machine import cpu_name
from ferlab.realtime import FramePipeline, RealtimeSettings, annotate_video, iou
from ferlab.realtime.runtime import detect_faces, sized_classifier, sized_detector
from ferlab.realtime.video import NO_FACE

SHARED = Path(os.environ.get("FERLAB_SHARED_DATA", "../shared/data"))
VIDEOS = ("stage_clip.mp4", "single_face.mp4")
DETECT_SIDES = (640, 480, 400, 320)
MATCH_IOU = 0.5  # a face counts as found again when boxes overlap this much


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def shown(path: Path) -> str:
    """A model's path as the report names it: relative to this checkout where it is inside."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def candidate_models(given: list[str]) -> list[Path]:
    """The models named, or the bundled model and every models/onnx/*.onnx present."""
    if given:
        return [Path(m) for m in given]
    return [bundled_model_path(), *sorted(Path("models/onnx").glob("*.onnx"))]


def real_faces(per_class: int) -> np.ndarray:
    """Real FER2013+ test faces from the shared archive (the first `per_class` of each class)."""
    with zipfile.ZipFile(SHARED / "fer2013plus.zip") as archive:
        names = sorted(archive.namelist())
        faces = []
        for label in CLASSES:
            prefix = f"fer2013plus/test/{label}/"
            for name in [n for n in names if n.startswith(prefix)][:per_class]:
                data = np.frombuffer(archive.read(name), np.uint8)
                faces.append(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE))
    return np.stack(faces)


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


def describe(classifier: Any) -> dict[str, Any]:
    meta = classifier.meta
    return {
        "model": model_label(meta["model"]) if "model" in meta else None,
        "input_size": meta.get("input_size"),
        "precision": meta.get("precision", "fp32"),
    }


def read_frames(video: Path, limit: int | None) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(video))
    frames: list[np.ndarray] = []
    while limit is None or len(frames) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames


def detection_sizes(
    video: Path, limit: int | None, threads: int, score: float, every: int
) -> dict[str, Any]:
    """RetinaFace at each DETECT_SIDES size on every `every`-th frame: ms per frame, recall of
    the full-size detections, and faces found only at that size."""
    frames = read_frames(video, limit)[::every]
    detector = sized_detector(FaceDetector(score_threshold=score), threads)
    full = max(frames[0].shape[:2])
    reference = [detect_faces(detector, f, full) for f in frames]
    out: dict[str, Any] = {"frames": len(frames), "reference_side": full, "sizes": {}}
    for side in sorted({min(s, full) for s in DETECT_SIDES}, reverse=True):
        detect_faces(detector, frames[0], side)  # warm-up: priors, session buffers
        found = total = extra = 0
        seconds = 0.0
        for frame, truth in zip(frames, reference, strict=True):
            start = time.perf_counter()
            faces = detect_faces(detector, frame, side)
            seconds += time.perf_counter() - start
            found += sum(any(iou(t.box, f.box) >= MATCH_IOU for f in faces) for t in truth)
            extra += sum(not any(iou(t.box, f.box) >= MATCH_IOU for t in truth) for f in faces)
            total += len(truth)
        out["sizes"][str(side)] = {
            "ms_per_frame": round(seconds * 1000 / len(frames), 2),
            "recall_vs_full": round(found / total, 3) if total else None,
            "faces_full": total,
            "extra_faces": extra,
        }
    return out


def agreement(reference: pd.DataFrame, other: pd.DataFrame) -> dict[str, float | None]:
    """How a loop's faces match the every-frame loop's: the share of reference faces it shows
    (same frame, IoU ≥ MATCH_IOU), and of those the share with the same label."""
    ref = reference[reference["label"] != NO_FACE]
    got = other[other["label"] != NO_FACE]
    by_frame = {frame: rows for frame, rows in got.groupby("frame")}
    matched = same = 0
    for frame, rows in ref.groupby("frame"):
        if frame not in by_frame:
            continue
        candidates = by_frame[frame]
        boxes = candidates[["box_x", "box_y", "box_w", "box_h"]].to_numpy()
        for row in rows.itertuples():
            box = (row.box_x, row.box_y, row.box_w, row.box_h)
            overlaps = [iou(box, tuple(b)) for b in boxes]
            if overlaps and max(overlaps) >= MATCH_IOU:
                matched += 1
                same += candidates["label"].iloc[int(np.argmax(overlaps))] == row.label
    return {
        "faces_found": round(matched / len(ref), 3) if len(ref) else None,
        "same_label": round(same / matched, 3) if matched else None,
    }


def run_loop(
    video: Path, classifier: Any, settings: RealtimeSettings, limit: int | None, work: Path
) -> tuple[dict[str, Any], pd.DataFrame]:
    """The whole loop (`annotate_video`, annotated video and CSV written) with `settings`."""
    pipeline = FramePipeline(classifier, settings)
    tag = "_".join(
        map(
            str,
            (
                video.stem,
                settings.profile,
                settings.threads,
                settings.detect_every,
                settings.track_method,
                settings.classify_every,
            ),
        )
    )
    csv_path = work / f"{tag}.csv"
    result = annotate_video(video, pipeline, work / f"{tag}.mp4", csv_path, limit, log=print)
    summary = pipeline.timing.summary()
    return {
        "threads": pipeline.threads,
        "settings": {
            k: v
            for k, v in asdict(settings).items()
            if k
            in (
                "profile",
                "detect_every",
                "detect_max_side",
                "track_method",
                "classify_every",
                "classify_shift",
            )
        },
        "frames": result.frames,
        "fps": round(result.fps, 2),
        "faces_per_frame": round(summary["faces"] / max(summary["frames"], 1), 2),
        **summary,
    }, pd.read_csv(csv_path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=[], help=".onnx or .pt models to time")
    parser.add_argument(
        "--loop-model", default=None, help="model of the video loops (default: the bundled one)"
    )
    parser.add_argument("--repeats", type=int, default=300, help="faces timed per model")
    parser.add_argument("--frames", type=int, default=0, help="frames of each video (0 = all)")
    parser.add_argument("--note", default="", help="a remark written into the report")
    parser.add_argument("--out", default="reports/benchmark_realtime")
    args = parser.parse_args()

    report: dict[str, Any] = {"cpu": cpu_name(), "load_average_at_start": load_average()}
    limit = args.frames or None
    faces = real_faces(25)

    latency: dict[str, Any] = {}
    for path in candidate_models(args.models):
        entry: dict[str, Any] = {}
        for threads in (1, 2):
            classifier = sized_classifier(load_classifier(path, threads=threads), threads)
            entry.setdefault("about", describe(classifier))
            entry[f"{threads}_threads"] = ms_per_face(classifier, faces, args.repeats)
            print(f"{path}: {entry[f'{threads}_threads']['median_ms']:.2f} ms per face, {threads}t")
        latency[shown(path)] = entry
    report["ms_per_face_batch1"] = latency

    live = RealtimeSettings.load()
    loops = {
        "every frame": replace(live, detect_every=1, classify_every=1, threads=2),
        "live, 2 threads": replace(live, threads=2),
        "live, template tracking": replace(live, threads=2, track_method="template"),
        # the classification interval's trade-off: the live loop with the previous default
        "live, classify every 6th frame": replace(live, threads=2, classify_every=6),
        "live, 1 thread": replace(live, threads=1),
        "pi profile, 1 thread": RealtimeSettings.load(profile="pi"),
    }
    loop_model = args.loop_model or bundled_model_path()
    report["loop_model"] = {"path": shown(loop_model), **describe(load_classifier(loop_model))}
    report["settings"] = {name: asdict(s) for name, s in loops.items()}
    report["detection_sizes"], report["video_loop"], report["videos"] = {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_realtime_") as tmp:
        work = Path(tmp)
        for name in VIDEOS:
            video = SHARED / "videos" / name
            capture = cv2.VideoCapture(str(video))
            report["videos"][name] = {
                "width": int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
                "height": int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                "fps": round(capture.get(cv2.CAP_PROP_FPS), 2),
            }
            capture.release()
            report["detection_sizes"][name] = detection_sizes(
                video, limit, 2, live.detect_score, every=1 if limit else 3
            )
            runs: dict[str, Any] = {}
            reference: pd.DataFrame | None = None
            for loop, settings in loops.items():
                classifier = load_classifier(loop_model, threads=settings.total_threads())
                runs[loop], timeline = run_loop(video, classifier, settings, limit, work)
                if reference is None:
                    reference = timeline
                runs[loop]["vs_every_frame"] = agreement(reference, timeline)
                print(f"{name}, {loop}: {runs[loop]['fps']:.1f} FPS")
            report["video_loop"][name] = runs
    report["load_average_at_end"] = load_average()
    report["note"] = args.note
    out = Path(args.out)
    write_json(out.with_suffix(".json"), report)
    write_text(out.with_suffix(".md"), markdown(report))
    print(json.dumps(report, indent=2))


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Real-time benchmark",
        "",
        f"CPU: {r['cpu']}; load average {r['load_average_at_start']} at the start and "
        f"{r['load_average_at_end']} at the end (1 minute; the machine may be shared).",
    ]
    if r["note"]:
        lines += ["", r["note"]]
    lines += [
        "",
        "## Classifiers: ms per face, batch 1 (median / p90)",
        "",
        "| model | kind | 1 thread | 2 threads |",
        "|---|---|---|---|",
    ]
    for path, e in r["ms_per_face_batch1"].items():
        about = e["about"]
        kind = f"{about['model']}, {about['input_size']} px, {about['precision']}"
        one, two = e["1_threads"], e["2_threads"]
        lines.append(
            f"| `{path}` | {kind} | {one['median_ms']:.2f} / {one['p90_ms']:.2f} | "
            f"{two['median_ms']:.2f} / {two['p90_ms']:.2f} |"
        )
    lines += [
        "",
        "## Detector input size (`realtime.detect_max_side`)",
        "",
        "RetinaFace on frames shrunk to the size; recall of the faces found at full size "
        f"(IoU ≥ {MATCH_IOU}), and faces found only at that size.",
        "",
        "| video | side | ms per frame | recall | extra faces |",
        "|---|---|---|---|---|",
    ]
    for video, d in r["detection_sizes"].items():
        for side, s in d["sizes"].items():
            lines.append(
                f"| {video} ({d['frames']} frames) | {side} | {s['ms_per_frame']:.1f} | "
                f"{s['recall_vs_full']} of {s['faces_full']} | {s['extra_faces']} |"
            )
    m = r["loop_model"]
    lines += [
        "",
        f"## Whole loop (model `{Path(m['path']).name}`: {m['model']}, {m['precision']})",
        "",
        "Decode → detect (or track) → crop → classify (or reuse) → smooth → draw → encode (mp4 "
        "and CSV written). Faces found and same label: against the every-frame loop.",
        "",
        "| video | loop | threads | FPS | faces/frame | detect frames | classified faces "
        "| faces found | same label |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for video, runs in r["video_loop"].items():
        for loop, x in runs.items():
            agree = x["vs_every_frame"]
            lines.append(
                f"| {video} | {loop} | {x['threads']} | {x['fps']:.1f} | "
                f"{x['faces_per_frame']} | {x['detect_frames']}/{x['frames']} | "
                f"{x['classified_faces']}/{x['faces']} | {agree['faces_found']} | "
                f"{agree['same_label']} |"
            )
    stages = next(iter(next(iter(r["video_loop"].values())).values()))["ms_per_frame"]
    lines += [
        "",
        "Where a frame's time goes, mean ms per frame:",
        "",
        "| video | loop | " + " | ".join(stages) + " | total |",
        "|---|---|" + "---|" * (len(stages) + 1),
    ]
    for video, runs in r["video_loop"].items():
        for loop, x in runs.items():
            cells = " | ".join(f"{v:.1f}" for v in x["ms_per_frame"].values())
            lines.append(f"| {video} | {loop} | {cells} | {x['total_ms_per_frame']:.1f} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
