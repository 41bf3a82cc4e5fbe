"""Landmark nodes: MediaPipe extraction with control renders and masks, and motion alignment."""

from __future__ import annotations

from emoji_model.constants import EXTRACT_MODES, FACE_LANDMARKER_FILE, NEUTRAL_CHOICES

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
                "face_index": ("INT", {"default": 0, "min": 0, "max": 16,
                                       "tooltip": "which face when there are several, by size: 0 = largest"}),
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
            },
        }

    def extract(self, image=None, face_index=0, include_contour=False, outer_lips=False, mode="auto", fps=25.0,
                face_model=DEFAULT_FACE_MODEL, video=None):
        """Extract the faces of the batch or the video, render their controls and masks (one progress bar)."""
        import torch

        from emoji_model.errors import InvalidRequestError
        from emoji_model.landmarks import extract_auto, extract_video, face_masks, render_controls

        if (image is None) == (video is None):
            raise InvalidRequestError("connect either an image (a portrait or an image batch) or a video, "
                                      f"not {'both' if image is not None else 'neither'}")
        rt = get_runtime()
        with rt.stages(8, 1, 1, desc="face landmarks"):
            if video is not None:
                frames, rate, count = video_frames(video)
                track = extract_video(frames, float(rate), face_index=face_index, face_model=_face_model(face_model),
                                      total=count, what="the driving video", runtime=rt)
            else:
                track = extract_auto(_to_uint8(image), mode=mode, fps=fps, face_index=face_index,
                                     face_model=_face_model(face_model), what="the input image", runtime=rt)
            controls = render_controls(track, include_contour=include_contour, outer_lips=outer_lips, runtime=rt)
            expression, facial = face_masks(track, runtime=rt)
        return (track, _to_image(controls), torch.from_numpy(expression | facial).to(torch.float32))


class MotionAligner:
    NODE_ID = "FYE_MotionAligner"
    DISPLAY_NAME = "Motion Alignment (Follow-Your-Emoji)"
    CATEGORY = LANDMARKS
    DESCRIPTION = ("Transfers the driving faces' expressions and head motion onto the reference face in "
                   "MediaPipe's canonical space, and renders the aligned control images at the reference "
                   "size — the motion the animation model follows.")
    RETURN_TYPES = ("FYE_FACES", "IMAGE")
    RETURN_NAMES = ("aligned", "controls")
    OUTPUT_TOOLTIPS = ("the reference face moving like the driving faces, one frame per driving frame",
                       "its control images at the reference size, for the sampler")
    FUNCTION = "align"

    @classmethod
    def INPUT_TYPES(cls):
        """Reference and driving faces and the aligner's options, bounded."""
        return {
            "required": {
                "reference": ("FYE_FACES", {"tooltip": "the portrait's face (its first frame is used)"}),
                "driving": ("FYE_FACES", {"tooltip": "the driving video's faces"}),
                "relative_head_pose": ("BOOLEAN", {"default": True,
                                                   "tooltip": "follow the driving head rotation and "
                                                              "movement; off keeps the portrait's pose"}),
                "neutral_frame": ([*NEUTRAL_CHOICES, "index"], {
                    "default": "auto",
                    "tooltip": "the driving frame taken as expressionless: auto = lowest blendshape sum"}),
                "neutral_index": ("INT", {"default": 0, "min": 0, "max": 100000,
                                          "tooltip": "the neutral frame when neutral_frame is 'index'"}),
                "expression_scale": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                               "tooltip": "strength of the transferred expression"}),
                "iris_tracking": ("BOOLEAN", {"default": True,
                                              "tooltip": "pupils follow the driving eyes; off keeps "
                                                         "the portrait's gaze"}),
                "smoothing": ("INT", {"default": 0, "min": 0, "max": 31, "step": 1,
                                      "tooltip": "temporal Savitzky-Golay window in frames (0 = off)"}),
            },
            "optional": {
                "include_contour": ("BOOLEAN", {"default": False, "tooltip": CONTOUR_TIP}),
                "outer_lips": ("BOOLEAN", {"default": False, "tooltip": OUTER_LIPS_TIP}),
            },
        }

    def align(self, reference, driving, relative_head_pose, neutral_frame, neutral_index, expression_scale,
              iris_tracking, smoothing, include_contour=False, outer_lips=False):
        """Align the driving motion onto the reference and render it at the reference size."""
        from emoji_model.align import align_motion
        from emoji_model.landmarks import render_controls

        rt = get_runtime()
        neutral = neutral_index if neutral_frame == "index" else neutral_frame
        aligned = align_motion(reference, driving, relative_pose=relative_head_pose, neutral=neutral,
                               expression_scale=expression_scale, iris_tracking=iris_tracking,
                               smoothing=smoothing, runtime=rt)
        controls = render_controls(aligned, include_contour=include_contour, outer_lips=outer_lips, runtime=rt)
        return (aligned, _to_image(controls))


NODES = [LandmarkExtractor, MotionAligner]
