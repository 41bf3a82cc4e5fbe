"""Reusable face tracks: save faces to ComfyUI's output folder, load them from its input folder.

Like the released motion templates, a driving video's faces (or an edited, aligned or multi-face
track) are extracted once and reused: Save Faces writes an .npz the command line reads too
(``--driving track.npz``), Load Faces lists the .npz files of the input folder.
"""

from __future__ import annotations

from .categories import LANDMARKS
from .host import get_runtime

TRACK_SUFFIX = ".npz"
NO_TRACKS = "(no .npz track in the input folder)"


def _track_files() -> list[str]:
    root = get_runtime().input_dir()
    if not root.is_dir():
        return []
    return sorted(str(p.relative_to(root)).replace("\\", "/") for p in root.rglob(f"*{TRACK_SUFFIX}") if p.is_file())


class SaveFaces:
    NODE_ID = "FYE_SaveFaces"
    DISPLAY_NAME = "Save Faces (Follow-Your-Emoji)"
    CATEGORY = LANDMARKS
    DESCRIPTION = ("Writes a face track (a driving video's faces, aligned or edited faces, several faces) to "
                   "ComfyUI's output folder as an .npz, to reuse without extracting again: move it to the input "
                   "folder for Load Faces, or give it to the command line as --driving. Files are numbered, "
                   "never overwritten, and written whole or not at all.")
    RETURN_TYPES = ("FYE_FACES",)
    RETURN_NAMES = ("faces",)
    OUTPUT_TOOLTIPS = ("the same faces, passed through",)
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        """The faces and the file name prefix (subfolders allowed)."""
        return {
            "required": {
                "faces": ("FYE_FACES", {"tooltip": "the face track(s) to save"}),
                "filename_prefix": ("STRING", {"default": "fye/faces",
                                               "tooltip": "file name inside the output folder, without number "
                                                          "and suffix; may hold subfolders"}),
            },
        }

    def save(self, faces, filename_prefix):
        """Write the next free numbered file; show its name on the node."""
        from emoji_model.fileio import numbered_path
        from emoji_model.landmarks import faces_of, save_faces

        root = get_runtime().output_dir()
        path = save_faces(faces, numbered_path(root, filename_prefix, TRACK_SUFFIX))
        tracks = faces_of(faces)
        text = (f"saved {len(tracks)} face(s), {len(tracks[0])} frame(s) to "
                f"{path.relative_to(root).as_posix()} in the output folder")
        return {"ui": {"text": [text]}, "result": (faces,)}


class LoadFaces:
    NODE_ID = "FYE_LoadFaces"
    DISPLAY_NAME = "Load Faces (Follow-Your-Emoji)"
    CATEGORY = LANDMARKS
    DESCRIPTION = ("Reads a face track saved by Save Faces or the command line (`landmarks --out`, `align --out`, "
                   "`edit --out`) from ComfyUI's input folder: a driving video's motion, ready for the Motion "
                   "Aligner, without the video or MediaPipe.")
    RETURN_TYPES = ("FYE_FACES", "INT")
    RETURN_NAMES = ("faces", "frames")
    OUTPUT_TOOLTIPS = ("the face track(s) of the file", "frames per face")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        """A track file of the input folder."""
        files = _track_files() or [NO_TRACKS]
        return {
            "required": {
                "track": (files, {"tooltip": "an .npz face track in ComfyUI's input folder (subfolders too)"}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, track):
        """The file's size and modification time, so an overwritten file is read again."""
        path = get_runtime().input_dir() / track
        try:
            stat = path.stat()
        except OSError:
            return track
        return f"{track}:{stat.st_size}:{stat.st_mtime_ns}"

    @classmethod
    def VALIDATE_INPUTS(cls, track):
        """Refuse a missing file before the graph runs."""
        if track == NO_TRACKS or not (get_runtime().input_dir() / track).is_file():
            return (f"no face track '{track}' in the input folder: save one with Save Faces (output folder) and "
                    "move it to the input folder")
        return True

    def load(self, track):
        """Read the file."""
        from emoji_model.errors import InvalidRequestError
        from emoji_model.landmarks import faces_of, load_faces

        root = get_runtime().input_dir()
        path = (root / track).resolve()
        if root.resolve() not in path.parents:
            raise InvalidRequestError(f"'{track}' lies outside the input folder")
        faces = load_faces(path)
        return (faces, len(faces_of(faces)[0]))


NODES = [SaveFaces, LoadFaces]
