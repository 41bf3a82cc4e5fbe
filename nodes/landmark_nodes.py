"""Landmark nodes: MediaPipe extraction with control renders and masks, and motion alignment."""

from __future__ import annotations

from emoji_model.constants import (
    EXTRACT_MODES,
    FACE_LANDMARKER_FILE,
    IRIS_MODES,
    LID_MODES,
    NEUTRAL_CHOICES,
    REGION_PRESETS,
    REGIONS,
    ROTATION_MODES,
    TRANSLATION_LIMIT,
    TRANSLATION_MODES,
)

from .categories import LANDMARKS
from .host import get_runtime, video_frames

DEFAULT_FACE_MODEL = f"{FACE_LANDMARKER_FILE} (default)"
# The samplers always draw what the model was trained on (no contour, inner lips only).
CONTOUR_TIP = "draw the face contour in this node's control images (a preview for comparison; not used by the samplers)"
OUTER_LIPS_TIP = "draw the outer lip line in this node's control images (a preview; not used by the samplers)"


def _face_model_choices() -> list[str]:
    names = [n for n in get_runtime().list_models("mediapipe") if n != FACE_LANDMARKER_FILE]
    return [DEFAULT_FACE_MODEL] + names


def _face_model(choice: str) -> str | None:
    return None if choice in ("", DEFAULT_FACE_MODEL) else choice


FACE_INDEX_TIP = "which face when there are several, by size: 0 = largest; -1 = every face (one track per face)"
FACE_BOX_TIP = ("X,Y,W,H in pixels of a face MediaPipe misses (an animal, a cartoon, a statue): the face inside "
                "is taken, or a frontal canonical face is fitted into the box; empty: off")
FACE_MASK_TIP = "the face painted as a mask, used like face_box (its bounding box)"


def face_box_of(face_box: str = "", face_mask=None):
    """(x, y, w, h) from the node's face_box text or face_mask, or None."""
    from emoji_model.landmarks.fit import box_from_mask, parse_face_box

    if face_mask is not None:
        return box_from_mask(face_mask.detach().cpu().numpy())
    return parse_face_box(face_box)


def face_notes(faces, what: str) -> list[str]:
    """What the user should see about extracted faces: frames without a face, fitted faces, how many faces."""
    from emoji_model.landmarks import faces_of
    from emoji_model.landmarks.extract import faceless_report

    tracks = faces_of(faces)
    notes = []
    if len(tracks) > 1:
        notes.append(f"{len(tracks)} faces found; one track per face, largest first")
    for j, track in enumerate(tracks):
        name = what if len(tracks) == 1 else f"{what} (face {j + 1})"
        report = faceless_report(track, name)
        if report:
            notes.append(report[0].upper() + report[1:])
        if track.any_fitted:
            notes.append(f"No face detected in {name}: a frontal canonical face is fitted into the face box")
    return notes


def with_notes(result: tuple, notes: list[str]):
    """The node's return value: the outputs, with the notes shown on the node (and logged) when there are any."""
    if not notes:
        return result
    runtime = get_runtime()
    for note in notes:
        runtime.notify(note)
    return {"ui": {"text": ["\n".join(notes)]}, "result": result}


def render_faces(faces, include_contour: bool = False, outer_lips: bool = False, runtime=None):
    """Control renders uint8 [N, H, W, 3] of every face, drawn over each other."""
    import numpy as np

    from emoji_model.landmarks import faces_of, render_controls

    out = None
    for track in faces_of(faces):
        frames = render_controls(track, include_contour=include_contour, outer_lips=outer_lips, runtime=runtime)
        out = frames if out is None else np.maximum(out, frames)
    return out


def _to_uint8(images):
    """IMAGE tensor [B, H, W, 3] float 0..1 -> numpy uint8."""
    import torch

    return (images.detach().to("cpu", torch.float32).clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy()


def _to_image(frames):
    """numpy uint8 [B, H, W, 3] -> IMAGE tensor."""
    import torch

    return torch.from_numpy(frames).to(torch.float32) / 255.0


class LandmarkExtractor:
    NODE_ID = "FYE_LandmarkExtractor"
    DISPLAY_NAME = "Face Landmarks (Follow-Your-Emoji)"
    CATEGORY = LANDMARKS
    DESCRIPTION = ("MediaPipe face landmarks of a portrait (one image), of a driving video (a VIDEO, decoded "
                   "frame by frame at its exact frame rate) or of an image batch: the face track, its "
                   "expression-aware control images (eyes, brows, lips, pupils; no face contour) and the face "
                   "mask. A frame without a face is filled from its neighbours.")
    RETURN_TYPES = ("FYE_FACES", "IMAGE", "MASK")
    RETURN_NAMES = ("faces", "controls", "face_mask")
    OUTPUT_TOOLTIPS = ("the face track (points, canonical vertices, pose, blendshapes per frame)",
                       "expression-aware control images, one per input image",
                       "expression mask (dilated eye, brow, lip points) united with the filled face contour")
    FUNCTION = "extract"

    @classmethod
    def INPUT_TYPES(cls):
        """Face choice and drawing toggles; the image batch or the VIDEO, mode, fps and face model optional."""
        return {
            "required": {
                "face_index": ("INT", {"default": 0, "min": -1, "max": 16, "tooltip": FACE_INDEX_TIP}),
                "include_contour": ("BOOLEAN", {"default": False, "tooltip": CONTOUR_TIP}),
                "outer_lips": ("BOOLEAN", {"default": False, "tooltip": OUTER_LIPS_TIP}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "a portrait, or the frames of a driving video as an image batch"}),
                "video": ("VIDEO", {"tooltip": "a driving video (Load Video): its frames are read one by one, "
                                              "at its exact frame rate; use instead of image"}),
                "mode": (list(EXTRACT_MODES), {
                    "default": "auto",
                    "tooltip": "auto: one image is a still, a batch is a video (tracked); image: every "
                               "image of the batch on its own"}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.5,
                                  "tooltip": "frame rate of an image batch as a video (tracking timestamps); "
                                             "a VIDEO brings its own"}),
                "face_model": (_face_model_choices(), {"default": DEFAULT_FACE_MODEL,
                                                       "tooltip": "MediaPipe face landmarker bundle "
                                                                  "(models/mediapipe)"}),
                "face_box": ("STRING", {"default": "", "tooltip": FACE_BOX_TIP}),
                "face_mask": ("MASK", {"tooltip": FACE_MASK_TIP}),
            },
        }

    def extract(self, image=None, face_index=0, include_contour=False, outer_lips=False, mode="auto", fps=25.0,
                face_model=DEFAULT_FACE_MODEL, face_box="", face_mask=None, video=None):
        """Extract the faces of the batch or the video, render their controls and masks (one progress bar)."""
        import torch

        from emoji_model.errors import InvalidRequestError
        from emoji_model.landmarks import extract_controls, extract_video, faces_controls

        if (image is None) == (video is None):
            raise InvalidRequestError("connect either an image (a portrait or an image batch) or a video, "
                                      f"not {'both' if image is not None else 'neither'}")
        rt = get_runtime()
        box = face_box_of(face_box, face_mask)
        with rt.stages(8, 1, 1, desc="face landmarks"):
            if video is not None:
                what = "the driving video"
                frames, rate, count = video_frames(video)
                faces = extract_video(frames, float(rate), face_index=face_index, face_model=_face_model(face_model),
                                      face_box=box, total=count, what=what, runtime=rt)
                controls, mask = faces_controls(faces, include_contour=include_contour, outer_lips=outer_lips,
                                                runtime=rt)
            else:
                many = mode == "video" or (mode == "auto" and len(image) > 1)
                what = "the driving video" if many else ("the images" if len(image) > 1 else "the portrait")
                faces, controls, mask = extract_controls(
                    _to_uint8(image), mode=mode, fps=fps, face_index=face_index, face_model=_face_model(face_model),
                    face_box=box, include_contour=include_contour, outer_lips=outer_lips, what=what, runtime=rt)
        result = (faces, _to_image(controls), torch.from_numpy(mask).to(torch.float32))
        return with_notes(result, face_notes(faces, what))


class MotionAligner:
    NODE_ID = "FYE_MotionAligner"
    DISPLAY_NAME = "Motion Alignment (Follow-Your-Emoji)"
    CATEGORY = LANDMARKS
    DESCRIPTION = ("Transfers the driving faces' expressions and head motion onto the reference face in "
                   "MediaPipe's canonical space, and renders the aligned control images at the reference "
                   "size — the motion the animation model follows. By default the portrait keeps its own pose "
                   "(a tilted or turned face stays so) and turns as the driver turns from the neutral frame; "
                   "the driver's movement in the frame moves it a little, softly limited, so the landmarks stay "
                   "on the face. A single driving photo transfers its expression. The released aligner is "
                   "head_rotation absolute, translation released, iris absolute, lids absolute. Several "
                   "reference faces are each driven, by one driving face or one each.")
    RETURN_TYPES = ("FYE_FACES", "IMAGE")
    RETURN_NAMES = ("aligned", "controls")
    OUTPUT_TOOLTIPS = ("the reference face moving like the driving faces, one frame per driving frame",
                       "its control images at the reference size, for the sampler")
    FUNCTION = "align"

    @classmethod
    def INPUT_TYPES(cls):
        """Reference and driving faces and the aligner's options, bounded."""
        optional = {
            "include_contour": ("BOOLEAN", {"default": False, "tooltip": CONTOUR_TIP}),
            "outer_lips": ("BOOLEAN", {"default": False, "tooltip": OUTER_LIPS_TIP}),
            "head_rotation": (list(ROTATION_MODES), {
                "default": "relative",
                "tooltip": "relative: the portrait's own pose, turned as the driver turns from the neutral frame; "
                           "absolute: the driver's rotation (released); off: the portrait's pose"}),
            "translation": (list(TRANSLATION_MODES), {
                "default": "relative",
                "tooltip": "relative: the driver's movement since the neutral frame, in face widths, softly "
                           "limited; released: since frame 0, as released; off: the portrait stays in place"}),
            "translation_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.05,
                                               "tooltip": "share of the driver's movement the portrait follows"}),
            "translation_limit": ("FLOAT", {"default": TRANSLATION_LIMIT, "min": 0.0, "max": 2.0, "step": 0.01,
                                            "tooltip": "soft limit of the relative movement, in face widths (half "
                                                       "of it toward or away from the camera)"}),
            "iris": (list(IRIS_MODES), {
                "default": "relative",
                "tooltip": "relative: the portrait's gaze moved as the driver's moves; absolute: the driver's "
                           "pupil places (released); off: the portrait's pupils"}),
            "lids": (list(LID_MODES), {
                "default": "relative",
                "tooltip": "relative: the lids close as far as the driver's, as a share of the eye's opening; "
                           "absolute: as far as the driver's (released)"}),
            "regions": (list(REGION_PRESETS), {
                "default": "all", "tooltip": "what follows the driver; the strengths below multiply the preset"}),
        }
        for region in REGIONS:
            optional[region] = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                          "tooltip": f"strength of the {'head pose' if region == 'head' else region}"})
        optional["loop"] = ("BOOLEAN", {"default": False,
                                        "tooltip": "close the track on its first frame (its last frames blend "
                                                   "into it) for a seamless loop"})
        return {
            "required": {
                "reference": ("FYE_FACES", {"tooltip": "the portrait's face (its first frame is used), or "
                                                       "several faces"}),
                "driving": ("FYE_FACES", {"tooltip": "the driving video's faces, or a driving photo's"}),
                "relative_head_pose": ("BOOLEAN", {"default": True,
                                                   "tooltip": "follow the driving head motion (as head_rotation "
                                                              "and translation say); off keeps the portrait's pose"}),
                "neutral_frame": ([*NEUTRAL_CHOICES, "index"], {
                    "default": "auto",
                    "tooltip": "the driving frame taken as expressionless: auto = lowest blendshape sum (a "
                               "driving photo: its blendshapes); blendshapes = each frame's expression from its "
                               "scores"}),
                "neutral_index": ("INT", {"default": 0, "min": 0, "max": 100000,
                                          "tooltip": "the neutral frame when neutral_frame is 'index'"}),
                "expression_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                               "tooltip": "strength of the transferred expression"}),
                "iris_tracking": ("BOOLEAN", {"default": True,
                                              "tooltip": "pupils follow the driving eyes (as iris says); off "
                                                         "keeps the portrait's gaze"}),
                "smoothing": ("INT", {"default": 0, "min": 0, "max": 31, "step": 1,
                                      "tooltip": "temporal Savitzky-Golay window in frames (0 = off)"}),
            },
            "optional": optional,
        }

    def align(self, reference, driving, relative_head_pose, neutral_frame, neutral_index, expression_scale,
              iris_tracking, smoothing, include_contour=False, outer_lips=False, head_rotation="relative",
              translation="relative", translation_strength=1.0, translation_limit=TRANSLATION_LIMIT,
              iris="relative", lids="relative", regions="all", loop=False, **strengths):
        """Align the driving motion onto every reference face and render it at the reference size."""
        from emoji_model.align import align_faces
        from emoji_model.landmarks import faces_of
        from emoji_model.landmarks.extract import faceless_report

        rt = get_runtime()
        neutral = neutral_index if neutral_frame == "index" else neutral_frame
        region_strengths = {"preset": regions, **{r: float(strengths.get(r, 1.0)) for r in REGIONS}}
        aligned = align_faces(reference, driving, relative_pose=relative_head_pose, rotation=head_rotation,
                              translation=translation, translation_strength=translation_strength,
                              translation_limit=translation_limit, iris=iris, lids=lids, regions=region_strengths,
                              neutral=neutral, expression_scale=expression_scale, iris_tracking=iris_tracking,
                              smoothing=smoothing, loop=loop, runtime=rt)
        controls = render_faces(aligned, include_contour=include_contour, outer_lips=outer_lips, runtime=rt)
        notes = []
        for j, track in enumerate(faces_of(driving)):
            if not track.valid.all():
                name = "the driving video" + ("" if len(faces_of(driving)) == 1 else f" (face {j + 1})")
                notes.append(faceless_report(track, name).replace("no face", "No face", 1))
        return with_notes((aligned, _to_image(controls)), notes)


NODES = [LandmarkExtractor, MotionAligner]
