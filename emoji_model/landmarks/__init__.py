"""Expression-aware landmarks: the FaceTrack type, MediaPipe extraction, control renders and masks.

* :mod:`.track` — :class:`FaceTrack` (per-frame landmarks, canonical vertices, pose, blendshapes),
  filling faceless frames, closing loops, eye aperture and the most neutral frame;
* :mod:`.group` — :class:`FaceGroup` (several faces, one track each) and track files;
* :mod:`.fit` — a canonical face fitted into a box, for faces MediaPipe misses;
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
    faces_controls,
    resolve_face_model,
)
from .group import FaceGroup, FYEFaces, faces_of, from_faces, load_faces, save_faces, single_face
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
    LOOP_BLEND,
    FaceTrack,
    close_loop,
    empty_track,
    eye_aperture,
    fill_invalid,
    neutral_frame,
)

__all__ = [
    "CONTOUR_COLOR", "EXTRACT_MODES", "HEAD_OVAL", "LEFT_EYE_APERTURE", "LEFT_IRIS", "LOOP_BLEND", "NUM_BLENDSHAPES",
    "NUM_POINTS", "PART_COLORS", "PUPIL_COLOR", "REFERENCE_SIZE", "RIGHT_EYE_APERTURE", "RIGHT_IRIS",
    "FYEFaces", "Face", "FaceGroup", "FaceLandmarker", "FaceTrack", "Topology",
    "as_rgb_uint8", "close_loop", "empty_track", "expression_mask", "extract_auto", "extract_controls", "extract_file",
    "extract_image", "extract_stills", "extract_video", "eye_aperture", "face_masks", "face_width", "faces_controls",
    "faces_of", "facial_mask", "fill_invalid", "from_faces", "iter_controls", "line_width", "load_faces",
    "neutral_frame", "pupil_half_width", "render_controls", "render_frame", "resolve_face_model", "save_faces",
    "single_face", "topology",
]
