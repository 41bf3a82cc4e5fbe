"""Named failures of the pack: each says what was expected, what was found, what to do."""

from __future__ import annotations

from collections.abc import Sequence


class FYEError(Exception):
    """Base class of every error the pack raises on purpose."""


class InvalidRequestError(FYEError, ValueError):
    """A request that cannot be carried out as asked (zero frames, bad sizes, bad options)."""


FACE_BOX_HINT = ("For a face MediaPipe cannot find (an animal, a cartoon, a statue), give its box: "
                 "--face-box X,Y,W,H on the command line, or a face_box / face_mask input on the node; a "
                 "frontal face is then fitted into it.")
HINTS = {
    "portrait": "Use a portrait whose face is visible, roughly frontal and not tiny in the frame (crop the face "
                "first with FYE_CropFace for large images). " + FACE_BOX_HINT,
    "driving video": "Use a driving video in which the face is visible, roughly frontal and not tiny in the frame "
                     "in at least one frame (frames without a face are filled from their neighbours).",
}


class NoFaceDetectedError(FYEError):
    """No face was found where one is required (the reference, or every driving frame).

    ``subject`` ("portrait" or "driving video") picks the advice; ``hint`` replaces it.
    """

    def __init__(self, what: str, hint: str | None = None, subject: str = "portrait"):
        self.what = what
        self.subject = subject
        msg = f"No face detected in {what}."
        msg += " " + (hint or HINTS.get(subject, HINTS["portrait"]))
        super().__init__(msg)


class LandmarkerError(FYEError):
    """MediaPipe's face landmarker failed on an image (a failure of MediaPipe, not a missing face)."""


class VideoReadError(FYEError):
    """A video file that cannot be opened, decoded, or holds no frame."""


class MissingModelError(FYEError):
    """A weight or model file the user must place is not where the pack looked."""

    def __init__(self, filename: str, searched: Sequence[str], where_to_get: str):
        self.filename = filename
        self.searched = list(searched)
        self.where_to_get = where_to_get
        looked = "\n".join(f"  - {p}" for p in self.searched) or "  (no folder configured)"
        super().__init__(
            f"Model file '{filename}' was not found.\nLooked in:\n{looked}\n"
            f"Put the file in one of those folders. Where to get it: {where_to_get}"
        )


class CheckpointMismatchError(FYEError):
    """A checkpoint whose tensors do not fit the network: lists missing, unexpected, mis-shaped."""

    def __init__(self, source: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                 mismatched: Sequence[str] = (), note: str = ""):
        self.source = source
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)
        parts = [f"Checkpoint '{source}' does not match the network."]
        for title, names in (("missing", self.missing), ("unexpected", self.unexpected),
                             ("mis-shaped", self.mismatched)):
            if names:
                more = f" (and {len(names) - 20} more)" if len(names) > 20 else ""
                parts.append(f"{len(names)} {title} tensors{more}:\n  " + "\n  ".join(names[:20]))
        if note:
            parts.append(note)
        super().__init__("\n".join(parts))
