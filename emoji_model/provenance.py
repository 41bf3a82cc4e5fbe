"""What a face track or a reference encoding was made from: a coarse, resize-proof image signature.

The sampler compares the signature carried by an aligned track (its reference portrait) with the one
the reference encoding recorded, and rejects a track aligned to another portrait or another framing
of it (a crop on one side, the full image on the other) before any work is done.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

THUMB = 16              # side of the grey thumbnail
ASPECT_TOLERANCE = 0.02  # relative: rounding a side to a multiple of 8 stays within it
THUMB_TOLERANCE = 8.0   # mean absolute grey-level difference (of 255) of two thumbnails of one image


@dataclass(frozen=True)
class ImageSignature:
    """Size of an image and a 16×16 grey thumbnail of it: equal for resized copies, not for other images."""

    width: int
    height: int
    thumb: bytes  # THUMB × THUMB uint8, row-major

    def differences(self, other: ImageSignature) -> list[str]:
        """Why ``other`` is not the same picture (empty when it is)."""
        found = []
        mine, theirs = self.width / self.height, other.width / other.height
        if abs(mine - theirs) > ASPECT_TOLERANCE * max(mine, theirs):
            found.append(f"aspect {self.width}x{self.height} vs {other.width}x{other.height}")
        a = np.frombuffer(self.thumb, dtype=np.uint8).astype(np.float32)
        b = np.frombuffer(other.thumb, dtype=np.uint8).astype(np.float32)
        mad = float(np.abs(a - b).mean())
        if mad > THUMB_TOLERANCE:
            found.append(f"content differs by {mad:.0f} grey levels on average")
        return found

    def describe(self) -> str:
        """A short description for error messages."""
        return f"a {self.width}x{self.height} image"


def image_signature(image) -> ImageSignature:
    """Signature of one image: uint8 or float (0..1) [H,W,C] or [1,H,W,C], numpy or torch."""
    import cv2

    if hasattr(image, "detach"):
        image = image.detach().to("cpu").float().numpy()
    image = np.asarray(image)
    if image.ndim == 4:
        image = image[0]
    if np.issubdtype(image.dtype, np.floating):
        image = np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
    grey = image[..., :3].astype(np.float32).mean(axis=-1)
    thumb = cv2.resize(grey, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    return ImageSignature(width=int(image.shape[1]), height=int(image.shape[0]),
                          thumb=np.clip(thumb + 0.5, 0, 255).astype(np.uint8).tobytes())
