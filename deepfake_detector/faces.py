"""Finding the face in a frame and cropping it, as FaceForensics++ does: dlib's frontal face
detector (HOG, built into dlib: no model file to download), the largest face, a square box of
`scale` (1.3) times its size around its centre, clipped to the frame.

Detection runs on a copy of the frame scaled down to `detect_width` pixels wide (speed), and the
box is mapped back to the frame's own pixels; the crop is taken from the full-size frame.

dlib comes with the `[faces]` extra (the dlib-bin distribution, import name dlib);
load_detector("dlib") without it raises a MissingFacesExtra of one line naming the extra.
No torch here; nothing is written.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .extras import MissingExtraError

if TYPE_CHECKING:  # numpy is imported where frames are handled, not by the command line's --help
    import numpy as np

FACE_MODES = ("dlib", "none")
DEFAULT_SCALE = 1.3         # FaceForensics++'s margin: the square box is 1.3 x the face's size
DEFAULT_DETECT_WIDTH = 640  # frames wider than this are scaled down to it for detection
FACES_EXTRA_HINT = ('dlib is not installed: --faces dlib needs the [faces] extra: '
                    'pip install "resnet18-deepfake-gradcam[faces]" (or use --faces none to keep '
                    'whole frames)')


class MissingFacesExtra(MissingExtraError):
    """dlib is missing: the message is one line naming the [faces] extra (a MissingExtraError,
    which the command line prints as one line, like the app's missing Streamlit)."""


def check_faces_extra(mode: str = "dlib") -> None:
    """MissingFacesExtra now, without importing dlib (a second), when `mode` needs it and it is
    not installed; ValueError for a mode not in FACE_MODES."""
    import importlib.util
    if mode not in FACE_MODES:
        raise ValueError(f"--faces {mode!r}: choose one of {', '.join(FACE_MODES)}")
    if mode == "dlib" and importlib.util.find_spec("dlib") is None:
        raise MissingFacesExtra(FACES_EXTRA_HINT)


def load_detector(mode: str = "dlib"):
    """The face detector of `mode`: dlib's frontal face detector for "dlib", None for "none"
    (whole frames are kept). MissingFacesExtra without dlib; ValueError for another mode."""
    if mode == "none":
        return None
    if mode != "dlib":
        raise ValueError(f"--faces {mode!r}: choose one of {', '.join(FACE_MODES)}")
    try:
        import dlib
    except ImportError:
        raise MissingFacesExtra(FACES_EXTRA_HINT) from None
    return dlib.get_frontal_face_detector()


def detect_faces(rgb: np.ndarray, detector, detect_width: int = DEFAULT_DETECT_WIDTH
                 ) -> list[tuple[tuple[float, float, float, float], float]]:
    """Every face dlib finds in `rgb` (H x W x 3 uint8): [((x0, y0, x1, y1), score), ...] in the
    frame's own pixels (floats), found on a copy scaled down to `detect_width` wide."""
    import cv2
    import numpy as np
    height, width = rgb.shape[:2]
    factor = min(1.0, detect_width / width) if detect_width else 1.0
    small = rgb if factor >= 1.0 else cv2.resize(
        rgb, (max(1, round(width * factor)), max(1, round(height * factor))),
        interpolation=cv2.INTER_AREA)
    gray = cv2.cvtColor(np.ascontiguousarray(small), cv2.COLOR_RGB2GRAY)
    rectangles, scores, _ = detector.run(gray, 0, 0.0)
    return [((r.left() / factor, r.top() / factor, r.right() / factor, r.bottom() / factor),
             float(s)) for r, s in zip(rectangles, scores)]


def square_box(face: tuple[float, float, float, float], width: int, height: int,
               scale: float = DEFAULT_SCALE) -> tuple[int, int, int, int]:
    """FaceForensics++'s crop box of a face box: a square of `scale` times the face's larger side
    around its centre, moved inside the frame at its top-left and shrunk (still square) to fit at
    its bottom-right. (x0, y0, x1, y1), integers, x1 and y1 exclusive."""
    x0, y0, x1, y1 = face
    size = int(max(x1 - x0, y1 - y0) * scale)
    size = max(1, min(size, width, height))
    left = max(int((x0 + x1) / 2 - size // 2), 0)
    top = max(int((y0 + y1) / 2 - size // 2), 0)
    size = min(size, width - left, height - top)
    return left, top, left + size, top + size


def face_box(rgb: np.ndarray, detector, scale: float = DEFAULT_SCALE,
             detect_width: int = DEFAULT_DETECT_WIDTH
             ) -> tuple[tuple[int, int, int, int] | None, float]:
    """(the crop box of the largest face, its detector score), or (None, nan) when no face is
    found. With detector None (--faces none): the whole frame, score nan."""
    height, width = rgb.shape[:2]
    if detector is None:
        return (0, 0, width, height), float("nan")
    faces = detect_faces(rgb, detector, detect_width)
    if not faces:
        return None, float("nan")
    face, score = max(faces, key=lambda f: (f[0][2] - f[0][0]) * (f[0][3] - f[0][1]))
    return square_box(face, width, height, scale), score


def crop(rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """The pixels of `box` (x0, y0, x1, y1; x1, y1 exclusive) of `rgb`, a contiguous copy."""
    import numpy as np
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(rgb[y0:y1, x0:x1])
