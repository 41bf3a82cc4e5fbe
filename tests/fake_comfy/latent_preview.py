"""Stand-in for ComfyUI's latent_preview: a previewer that records what it was given."""
from types import SimpleNamespace

args = SimpleNamespace(preview_method="latent2rgb")
decoded = []


class RecordingPreviewer:
    def decode_latent_to_preview_image(self, preview_format, x0):
        decoded.append(tuple(x0.shape))
        return (preview_format, "image", 512)


def get_previewer(device, latent_format):
    return None if args.preview_method == "none" else RecordingPreviewer()
