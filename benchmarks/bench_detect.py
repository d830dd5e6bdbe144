"""Detection + alignment speed, and the detection-rate sweep that chose the preprocess settings.

    python benchmarks/bench_detect.py                 # images/s for 48×48 crops, ms per frame
    python benchmarks/bench_detect.py --sweep         # detection rate per upscale/threshold

Reads FER2013+ images straight from the archive (no extraction) and frames from the shared
640×360 video. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np

from ferlab.faces import FaceDetector, align_face

SHARED = Path(os.environ.get("FERLAB_SHARED_DATA", "../shared/data"))


def fer_sample(archive: Path, split: str, per_class: int, seed: int = 0) -> tuple[np.ndarray, list]:
    """A class-stratified random sample of one split: (N×48×48 uint8, class names)."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(archive) as zf:
        by_class: dict[str, list[str]] = {}
        for name in sorted(zf.namelist()):
            parts = name.split("/")
            if len(parts) >= 3 and parts[-3] == split and name.endswith(".png"):
                by_class.setdefault(parts[-2], []).append(name)
        images, labels = [], []
        for label, names in by_class.items():
            chosen = rng.choice(len(names), size=min(per_class, len(names)), replace=False)
            for i in sorted(chosen):
                data = np.frombuffer(zf.read(names[i]), np.uint8)
                images.append(cv2.imdecode(data, cv2.IMREAD_GRAYSCALE))
                labels.append(label)
    return np.stack(images), labels


def bench_crops(detector: FaceDetector, images: np.ndarray, batch_size: int, size: int) -> dict:
    """Batched detection + alignment of 48×48 crops: images per second (best of 3 passes)."""
    detector.detect_batch(images[:batch_size])  # warm-up: session start, prior tables
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        for begin in range(0, len(images), batch_size):
            chunk = images[begin : begin + batch_size]
            for image, faces in zip(chunk, detector.detect_batch(chunk), strict=True):
                if faces:
                    align_face(image, faces[0].landmarks, size)
        rates.append(len(images) / (time.perf_counter() - start))
    return {"images": len(images), "batch_size": batch_size, "images_per_second": max(rates)}


def bench_frames(detector: FaceDetector, video: Path, size: int, frames: int = 60) -> dict:
    """Detection + alignment of every face in a video frame: milliseconds per frame."""
    capture = cv2.VideoCapture(str(video))
    items = []
    while len(items) < frames:
        ok, frame = capture.read()
        if not ok:
            break
        items.append(frame)
    capture.release()
    if not items:
        raise SystemExit(f"{video}: no frames could be read")
    detector.detect(items[0])
    times, faces_per_frame = [], []
    for frame in items:
        start = time.perf_counter()
        faces = detector.detect(frame)
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        for face in faces:
            align_face(gray, face.landmarks, size)
        times.append((time.perf_counter() - start) * 1000)
        faces_per_frame.append(len(faces))
    return {
        "video": video.name,
        "frame_size": f"{items[0].shape[1]}x{items[0].shape[0]}",
        "frames": len(items),
        "ms_per_frame_median": statistics.median(times),
        "ms_per_frame_p90": float(np.percentile(times, 90)),
        "faces_per_frame_mean": float(np.mean(faces_per_frame)),
    }


def sweep(archive: Path, per_class: int, size: int) -> list[dict]:
    """Detection rate (best face above threshold) per upscale and score threshold.

    Also the share of found faces whose landmarks are plausibly placed (eyes above the nose,
    nose above the mouth, right features left of left ones), a cheap check that a higher rate
    is not bought with bad landmarks.
    """
    images, labels = fer_sample(archive, "train", per_class)
    rows = []
    for upscale in (96, 128, 160, 224):
        detector = FaceDetector(score_threshold=0.3, upscale=upscale)
        start = time.perf_counter()
        best = []
        for begin in range(0, len(images), 64):
            best += [f[0] if f else None for f in detector.detect_batch(images[begin : begin + 64])]
        speed = len(images) / (time.perf_counter() - start)
        for threshold in (0.5, 0.7, 0.9):
            found = [
                (f, lab) for f, lab in zip(best, labels, strict=True) if f and f.score > threshold
            ]
            per_class_rate = {
                c: sum(1 for _, lab in found if lab == c) / labels.count(c)
                for c in sorted(set(labels))
            }
            rows.append(
                {
                    "upscale": upscale,
                    "score_threshold": threshold,
                    "detection_rate": round(len(found) / len(images), 4),
                    "lowest_class_rate": round(min(per_class_rate.values()), 4),
                    "plausible_landmarks": round(
                        float(np.mean([plausible(f.landmarks) for f, _ in found])), 4
                    ),
                    "images_per_second": round(speed, 1),
                }
            )
    return [{"sample": f"train, {per_class} per class (seed 0)", "images": len(images)}, *rows]


def plausible(lm: np.ndarray) -> bool:
    eyes_y, mouth_y = max(lm[0, 1], lm[1, 1]), min(lm[3, 1], lm[4, 1])
    return bool(lm[0, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0] and eyes_y < lm[2, 1] < mouth_y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=SHARED / "fer2013plus.zip")
    parser.add_argument("--video", type=Path, default=SHARED / "videos" / "stage_clip.mp4")
    parser.add_argument("--images", type=int, default=1024, help="48×48 crops to time")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--upscale", type=int, default=160)
    parser.add_argument("--size", type=int, default=48, help="side of the aligned crop")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = all)")
    parser.add_argument("--sweep", action="store_true", help="detection rate per setting")
    parser.add_argument("--per-class", type=int, default=250, help="sweep sample per class")
    args = parser.parse_args()
    if not args.archive.is_file():
        raise SystemExit(f"{args.archive}: not found; pass --archive or set FERLAB_SHARED_DATA")

    if args.sweep:
        print(json.dumps(sweep(args.archive, args.per_class, args.size), indent=2))
        return
    detector = FaceDetector(upscale=args.upscale, threads=args.threads)
    images, _ = fer_sample(args.archive, "train", per_class=-(-args.images // 8))
    result = {
        "settings": detector.settings(),
        "threads": args.threads or "default",
        "cpu_count": os.cpu_count(),
        "crops": bench_crops(detector, images[: args.images], args.batch_size, args.size),
        "frames": bench_frames(detector, args.video, args.size),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
