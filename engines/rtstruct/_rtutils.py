"""rt-utils and OpenCV, imported in one place with an actionable message when missing."""

from __future__ import annotations

try:
    import cv2
    from rt_utils import ds_helper
    from rt_utils.image_helper import find_mask_contours
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the RTSTRUCT writer needs rt-utils and OpenCV: "
        "pip install opencv-python-headless && pip install --no-deps rt-utils==1.2.7"
    ) from exc

__all__ = ["cv2", "ds_helper", "find_mask_contours"]
