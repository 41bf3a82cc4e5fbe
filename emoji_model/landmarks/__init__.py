"""Expression-aware landmarks: the FaceTrack type, MediaPipe extraction, control renders and masks.

* :mod:`.track` — :class:`FaceTrack` (per-frame landmarks, canonical vertices, pose, blendshapes),
  filling faceless frames, eye aperture and the most neutral frame;
* :mod:`.extract` — MediaPipe's face landmarker on stills, videos, files and batches;
* :mod:`.topology` — the face-mesh parts (eyes, brows, lip chains, contour) from MediaPipe's topology;
* :mod:`.render` — the control images the networks see (no contour, inner lips, pupils; paper 4.1);
* :mod:`.masks` — the expression and face masks of the facial fine-grained loss (paper 4.2).
"""

from ..constants import EXTRACT_MODES
from .extract import (
    Face,
    FaceLandmarker,
    as_rgb_uint8,
    extract_auto,
    extract_controls,
    extract_file,
    extract_image,
    extract_stills,
    extract_video,
    resolve_face_model,
)
from .masks import HEAD_OVAL, expression_mask, face_masks, face_width, facial_mask
from .render import (
    CONTOUR_COLOR,
    PART_COLORS,
    PUPIL_COLOR,
    REFERENCE_SIZE,
    iter_controls,
    line_width,
    pupil_half_width,
    render_controls,
    render_frame,
)
from .topology import Topology, topology
from .track import (
    LEFT_EYE_APERTURE,
    LEFT_IRIS,
    NUM_BLENDSHAPES,
    NUM_POINTS,
    RIGHT_EYE_APERTURE,
    RIGHT_IRIS,
    FaceTrack,
    empty_track,
    eye_aperture,
    fill_invalid,
    neutral_frame,
)

__all__ = [
    "CONTOUR_COLOR", "EXTRACT_MODES", "HEAD_OVAL", "LEFT_EYE_APERTURE", "LEFT_IRIS", "NUM_BLENDSHAPES", "NUM_POINTS",
    "PART_COLORS", "PUPIL_COLOR", "REFERENCE_SIZE", "RIGHT_EYE_APERTURE", "RIGHT_IRIS",
    "Face", "FaceLandmarker", "FaceTrack", "Topology",
    "as_rgb_uint8", "empty_track", "expression_mask", "extract_auto", "extract_controls", "extract_file",
    "extract_image", "extract_stills", "extract_video", "eye_aperture", "face_masks", "face_width",
    "facial_mask", "fill_invalid", "iter_controls", "line_width", "neutral_frame", "pupil_half_width", "render_controls",
    "render_frame", "resolve_face_model", "topology",
]
