"""Editing nodes: face crop and paste-back for large images, and the keyframed expression editor."""

from __future__ import annotations

from emoji_model.constants import BATCH_BOXES, CONTROLS, INTERPOLATIONS, PAD_MODES

from .categories import COMPOSE, LANDMARKS
from .host import get_runtime, make_video, video_audio
from .landmark_nodes import (
    CONTOUR_TIP,
    DEFAULT_FACE_MODEL,
    FACE_BOX_TIP,
    FACE_INDEX_TIP,
    FACE_MASK_TIP,
    OUTER_LIPS_TIP,
    _face_model,
    _face_model_choices,
    _to_image,
    face_box_of,
    face_notes,
    render_faces,
    with_notes,
)

DEFAULT_KEYS = """# FRAME: control=value ... (FRAME may be seconds: 1.5s)
# controls: blink blink_left blink_right smile mouth_open brow_raise pupil_x pupil_y yaw pitch roll
0: blink=0 smile=0 yaw=0
10: blink=1
14: blink=0
36: smile=0.8 yaw=12
"""
# One slider per control; the per-eye blinks are left to the keys.
SLIDERS = {name: (c.lo, c.hi, 0.5 if c.degrees else 0.01, c.help) for name, c in CONTROLS.items()
           if name not in ("blink_left", "blink_right")}


def _to_float(images):
    """IMAGE tensor [B, H, W, C] -> numpy float32 [B, H, W, 3] (shares memory when it can)."""
    import torch

    return images.detach().to("cpu", torch.float32)[..., :3].numpy()


class CropFace:
    NODE_ID = "FYE_CropFace"
    DISPLAY_NAME = "Crop Face (Follow-Your-Emoji)"
    CATEGORY = COMPOSE
    DESCRIPTION = ("Cuts a square around the face at the model's size, for portraits where the face is small or "
                   "off-centre (large photos, group shots). Finds small faces in large images by itself, or "
                   "uses the faces you connect. A video batch gets one box for all frames, so the crop does not "
                   "jitter. face_index -1 crops every face (the crops one face after the other, for Encode "
                   "Reference with 'each image'); face_box or face_mask places a face MediaPipe misses. Keep "
                   "the crop output for FYE_PasteBack.")
    RETURN_TYPES = ("IMAGE", "FYE_FACES", "FYE_CROP")
    RETURN_NAMES = ("image", "faces", "crop")
    OUTPUT_TOOLTIPS = ("the face crop at size x size",
                       "the face track inside the crop (use it as the reference faces)",
                       "where the crop came from, for FYE_PasteBack")
    FUNCTION = "crop"

    @classmethod
    def INPUT_TYPES(cls):
        """The image batch, crop size, margin, padding, batch box; faces, face choice and model optional."""
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "a portrait, or the frames of a video"}),
                "size": ("INT", {"default": 512, "min": 64, "max": 2048, "step": 8,
                                 "tooltip": "side of the crop in pixels (the model's resolution)"}),
                "margin": ("FLOAT", {"default": 1.8, "min": 1.0, "max": 4.0, "step": 0.05,
                                     "tooltip": "crop side as a multiple of the face size"}),
                "pad_mode": (list(PAD_MODES), {"default": "edge",
                                         "tooltip": "how to fill the part of the crop beyond the image border"}),
                "batch_box": (list(BATCH_BOXES), {"default": "union",
                                            "tooltip": "for a video: union keeps the face of every frame inside; "
                                                       "median follows the typical face position"}),
            },
            "optional": {
                "faces": ("FYE_FACES", {"tooltip": "the faces of this image (from FYE_LandmarkExtractor); "
                                                   "without them the face is searched for"}),
                "face_index": ("INT", {"default": 0, "min": -1, "max": 16,
                                       "tooltip": FACE_INDEX_TIP + " (when searching)"}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.5,
                                  "tooltip": "frame rate of a video batch (landmark tracking in the crop)"}),
                "face_model": (_face_model_choices(), {"default": DEFAULT_FACE_MODEL,
                                                       "tooltip": "MediaPipe face landmarker bundle"}),
                "face_box": ("STRING", {"default": "", "tooltip": FACE_BOX_TIP}),
                "face_mask": ("MASK", {"tooltip": FACE_MASK_TIP}),
            },
        }

    def crop(self, image, size, margin, pad_mode, batch_box, faces=None, face_index=0, fps=25.0,
             face_model=DEFAULT_FACE_MODEL, face_box="", face_mask=None):
        """Find the face box and cut the crop; the faces come back in crop coordinates."""
        import torch

        from emoji_model.crop import crop_face

        rt = get_runtime()
        with rt.stages(1, 1, desc="crop face"):  # the face search, then the crop's landmarks
            crops, info, track = crop_face(_to_float(image), faces, margin=margin, size=size, batch_box=batch_box,
                                           pad_mode=pad_mode, face_index=face_index, fps=fps,
                                           face_box=face_box_of(face_box, face_mask),
                                           face_model=_face_model(face_model), runtime=rt)
        what = "the driving video" if len(image) > 1 else "the portrait"
        return with_notes((torch.from_numpy(crops), track, info), face_notes(track, what) if faces is None else [])


class PasteBack:
    NODE_ID = "FYE_PasteBack"
    DISPLAY_NAME = "Paste Back (Follow-Your-Emoji)"
    CATEGORY = COMPOSE
    DESCRIPTION = ("Puts animated face crops back into the full image (or video) they were cut from, blended "
                   "through a feathered mask around the face (the face contour of the connected faces, grown "
                   "and softened; a soft-edged square without faces). Pixels outside the mask stay exactly "
                   "as they were. With the crops of every face (Crop Face, face_index -1) every face is pasted "
                   "in one pass.")
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("the full-size frames, one per animated frame",)
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        """Animated crops, the original image(s), the crop info, mask growth and feathering; faces optional."""
        return {
            "required": {
                "frames": ("IMAGE", {"tooltip": "the animated frames at the crop's size"}),
                "original": ("IMAGE", {"tooltip": "the image that was cropped (one image, or the same "
                                                  "number of frames)"}),
                "crop": ("FYE_CROP", {"tooltip": "the crop output of FYE_CropFace"}),
                "mask_expand": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 0.5, "step": 0.01,
                                          "tooltip": "grow the face mask by this share of the face width"}),
                "feather": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 0.3, "step": 0.01,
                                      "tooltip": "soften the mask edge over this share of the face width"}),
            },
            "optional": {
                "faces": ("FYE_FACES", {"tooltip": "the faces of the animated frames (the aligned or edited "
                                                   "faces); without them a soft-edged square is blended"}),
            },
        }

    def paste(self, frames, original, crop, mask_expand, feather, faces=None):
        """Composite every animated frame into its original frame."""
        import torch

        from emoji_model.crop import paste_back

        out = paste_back(_to_float(frames), _to_float(original), crop, faces, expand=mask_expand, feather=feather,
                         runtime=get_runtime())
        return (torch.from_numpy(out),)


class ExpressionEditor:
    NODE_ID = "FYE_ExpressionEditor"
    DISPLAY_NAME = "Expression Editor (Follow-Your-Emoji)"
    CATEGORY = LANDMARKS
    DESCRIPTION = ("Animates a face without a driving video: blinks, smiles, an open mouth, brows, gaze and head "
                   "turns, keyed over time. From a still's faces it makes 'frames' frames; a video's faces are "
                   "edited frame by frame. Keys: one per line (or separated by ';'), 'FRAME: control=value ...', "
                   "FRAME a frame number or seconds like 1.5s; values are interpolated between keys and held "
                   "before the first and after the last. The sliders add a constant on top. loop closes the "
                   "animation on its first frame. Several faces are edited alike.")
    RETURN_TYPES = ("FYE_FACES", "IMAGE")
    RETURN_NAMES = ("faces", "controls")
    OUTPUT_TOOLTIPS = ("the edited face track, like the aligned faces of FYE_MotionAligner",
                       "its control images, for the sampler")
    FUNCTION = "edit"

    @classmethod
    def INPUT_TYPES(cls):
        """Faces, length, frame rate, keyframe text, interpolation and one slider per control."""
        required = {
            "faces": ("FYE_FACES", {"tooltip": "the portrait's faces (one frame), or a face track to edit"}),
            "frames": ("INT", {"default": 48, "min": 1, "max": 10000,
                               "tooltip": "length of the animation made from a still (a track keeps its own)"}),
            "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.5,
                              "tooltip": "frame rate (for keys given in seconds)"}),
            "keyframes": ("STRING", {"default": DEFAULT_KEYS, "multiline": True,
                                     "tooltip": "FRAME: control=value ... per line or separated by ';'"}),
            "interpolation": (list(INTERPOLATIONS), {"default": "smoothstep",
                                               "tooltip": "how values move between keys"}),
        }
        for name, (lo, hi, step, tip) in SLIDERS.items():
            required[name] = ("FLOAT", {"default": 0.0, "min": lo, "max": hi, "step": step,
                                        "tooltip": tip + "; added to the keyed value"})
        return {
            "required": required,
            "optional": {
                "include_contour": ("BOOLEAN", {"default": False, "tooltip": CONTOUR_TIP}),
                "outer_lips": ("BOOLEAN", {"default": False, "tooltip": OUTER_LIPS_TIP}),
                "loop": ("BOOLEAN", {"default": False,
                                     "tooltip": "close the animation on its first frame: after the last key every "
                                                "control returns to its first key's value, for a seamless loop"}),
            },
        }

    def edit(self, faces, frames, fps, keyframes, interpolation, include_contour=False, outer_lips=False,
             loop=False, **sliders):
        """Parse the keys, edit every face, render their controls."""
        from emoji_model.editor import animate_face
        from emoji_model.landmarks import faces_of, from_faces

        rt = get_runtime()
        constants = {name: float(sliders.get(name, 0.0)) for name in SLIDERS}
        with rt.stages(1, 1, desc="expression editor"):
            edited = from_faces([animate_face(face, keyframes, frames=frames, fps=fps, interpolation=interpolation,
                                              constants=constants, loop=loop, runtime=rt) for face in faces_of(faces)])
            controls = render_faces(edited, include_contour=include_contour, outer_lips=outer_lips, runtime=rt)
        return (edited, _to_image(controls))


class MakeVideo:
    NODE_ID = "FYE_MakeVideo"
    DISPLAY_NAME = "Video with Driving Audio (Follow-Your-Emoji)"
    CATEGORY = COMPOSE
    DESCRIPTION = ("Makes the animated frames a VIDEO at the driving video's exact frame rate (29.97 stays "
                   "30000/1001) with the driving video's audio, cut to the animation's length, for Save Video. "
                   "Only the driving video's audio is decoded, not its frames. Without a driving video, fps "
                   "is used and the audio input, if any.")
    RETURN_TYPES = ("VIDEO",)
    RETURN_NAMES = ("video",)
    OUTPUT_TOOLTIPS = ("the animation with the driving audio, for Save Video",)
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        """Frames, the driving video whose rate and audio they get, fallbacks for both."""
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "the animated frames (Paste Back or VAE Decode)"}),
                "keep_audio": ("BOOLEAN", {"default": True,
                                           "tooltip": "carry the driving video's audio (or the audio input)"}),
            },
            "optional": {
                "driving": ("VIDEO", {"tooltip": "the driving video: its exact frame rate and its audio"}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 240.0, "step": 0.01,
                                  "tooltip": "frame rate when no driving video is connected"}),
                "audio": ("AUDIO", {"tooltip": "audio to use instead of the driving video's"}),
            },
        }

    def make(self, images, keep_audio, driving=None, fps=25.0, audio=None):
        """Frames + exact frame rate + the driving audio, cut to the frames' duration."""
        from fractions import Fraction

        from emoji_model.video import frame_rate_fraction

        rate = Fraction(driving.get_frame_rate()) if driving is not None else frame_rate_fraction(fps)
        duration = float(len(images) / rate)
        sound = None
        if keep_audio:
            if audio is not None:
                keep = int(round(duration * int(audio["sample_rate"])))
                sound = {"waveform": audio["waveform"][..., :keep], "sample_rate": audio["sample_rate"]}
            elif driving is not None:
                sound = video_audio(driving, duration)
        return (make_video(images, rate, sound),)


NODES = [CropFace, PasteBack, ExpressionEditor, MakeVideo]
