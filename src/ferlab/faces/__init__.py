"""Face detection (RetinaFace, 5 landmarks) and 5-point similarity alignment."""

from ferlab.faces.align import (
    FIVE_POINT_TEMPLATE_112,
    align_face,
    plain_crop,
    similarity_matrix,
    transform_points,
)
from ferlab.faces.detect import Face, FaceDetector

__all__ = [
    "FIVE_POINT_TEMPLATE_112",
    "Face",
    "FaceDetector",
    "align_face",
    "plain_crop",
    "similarity_matrix",
    "transform_points",
]
