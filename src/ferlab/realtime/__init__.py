"""Real-time recognition: per-frame pipeline, face tracking and smoothing, overlay, video files,
cameras (window or MJPEG stream) and batch prediction on images."""

from ferlab.realtime.runtime import FaceResult, FramePipeline, RealtimeSettings
from ferlab.realtime.tracker import IouTracker, Smoother, iou
from ferlab.realtime.video import NO_FACE, StreamError, StreamResult, annotate_video

__all__ = [
    "NO_FACE",
    "FaceResult",
    "FramePipeline",
    "IouTracker",
    "RealtimeSettings",
    "Smoother",
    "StreamError",
    "StreamResult",
    "annotate_video",
    "iou",
]
