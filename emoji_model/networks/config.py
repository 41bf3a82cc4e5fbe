"""The one typed description of the Follow-Your-Emoji networks, for SD-1.5 and for tiny test sizes."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequestError

IMAGE_PROMPT_KINDS = ("linear", "qformer")
MOTION_NORM_GROUPS = 32
"""GroupNorm groups of AnimateDiff's (and the released) temporal transformers, whatever the UNet's own count."""

# The scheduler the released weights were trained with (configs/infer.yaml of the authors' code, with
# `enable_zero_snr: True`): DDIM over the SD-1.5 betas, v-prediction, zero terminal SNR, trailing steps.
RELEASED_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "steps_offset": 1,
    "clip_sample": False,
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
    "prediction_type": "v_prediction",
}


@dataclass
class FYEConfig:
    """Sizes of the appearance net, denoising UNet, landmark guider and image prompt.

    The spatial layout follows the SD-1.5 UNet (``block_out_channels``, ``layers_per_block``, cross
    attention at the levels where ``attention_levels`` is true); the temporal layers follow AnimateDiff
    (one temporal transformer after every spatial resnet/attention pair, and in the mid block).
    """

    # -- spatial UNet (shared by the appearance net and the denoising UNet) ------------------------
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_levels: tuple[bool, ...] = (True, True, True, False)
    attention_heads: int = 8
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    use_linear_projection: bool = False
    in_channels: int = 4
    out_channels: int = 4
    # Progressive strategy (paper 4.3): covered latents (4) + cover mask (1) concatenated on conv_in.
    cover_channels: int = 0
    # -- temporal layers ---------------------------------------------------------------------------
    motion_heads: int = 8
    motion_layers: int = 1
    motion_max_len: int = 32
    motion_mid_block: bool = True
    # GroupNorm groups of the temporal transformers. AnimateDiff's and the released motion modules never
    # pass the UNet's group count and normalise with 32 groups at every size; configs stored before this
    # field existed (this pack's own trainings) used norm_num_groups, which from_dict restores.
    motion_norm_groups: int = MOTION_NORM_GROUPS
    # -- landmark guider ---------------------------------------------------------------------------
    guider_channels: tuple[int, ...] = (16, 32, 96, 256)
    guider_in_channels: int = 3
    # -- image prompt ------------------------------------------------------------------------------
    image_prompt: str = "linear"
    clip_dim: int = 1024
    # The released appearance net carries its own clip_fc (referencenet.pth has one, unet.pth another).
    appearance_own_prompt: bool = True
    qformer_layers: int = 4
    qformer_queries: int = 16
    qformer_heads: int = 8
    # -- what the weights expect from the sampler --------------------------------------------------
    prediction_type: str = "v_prediction"
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(RELEASED_SCHEDULER))

    def __post_init__(self) -> None:
        self.block_out_channels = tuple(int(c) for c in self.block_out_channels)
        self.attention_levels = tuple(bool(a) for a in self.attention_levels)
        self.guider_channels = tuple(int(c) for c in self.guider_channels)
        self.validate()

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def sd15(cls, **overrides: Any) -> FYEConfig:
        """The released configuration: SD-1.5 UNet sizes, AnimateDiff v2 temporal layers, clip_fc prompt."""
        return cls(**overrides)

    @classmethod
    def tiny(cls, **overrides: Any) -> FYEConfig:
        """A few-million-parameter configuration with the released structure, for CPU tests."""
        base = dict(
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            attention_levels=(True, True, False),
            attention_heads=2,
            cross_attention_dim=32,
            norm_num_groups=8,
            motion_heads=2,
            motion_max_len=16,
            guider_channels=(8, 8, 16, 16),
            clip_dim=48,
            qformer_layers=2,
            qformer_queries=4,
            qformer_heads=2,
        )
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> FYEConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    # -- serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists)."""
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FYEConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error, missing keys take defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InvalidRequestError(f"unknown FYEConfig fields {unknown}; known fields: {sorted(names)}")
        data = dict(data)
        if "motion_norm_groups" not in data:
            # Stored before the field existed: the temporal layers then used the spatial group count.
            data["motion_norm_groups"] = data.get("norm_num_groups", cls.norm_num_groups)
        return cls(**data)

    def to_json(self) -> str:
        """The config as a compact JSON string (stored in safetensors metadata)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> FYEConfig:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    # -- derived -----------------------------------------------------------------------------------
    @property
    def levels(self) -> int:
        """Number of resolution levels of the UNet."""
        return len(self.block_out_channels)

    @property
    def time_embed_dim(self) -> int:
        """Width of the timestep embedding (4 × the first level's channels, as in SD)."""
        return self.block_out_channels[0] * 4

    @property
    def guider_out_channels(self) -> int:
        """The guider's output width: the UNet's conv_in width (320 for SD-1.5)."""
        return self.block_out_channels[0]

    @property
    def unet_in_channels(self) -> int:
        """conv_in input channels of the denoising UNet (latents + optional covered latents and mask)."""
        return self.in_channels + self.cover_channels

    def validate(self) -> None:
        """Raise InvalidRequestError when the sizes cannot make a network."""
        problems = []
        if len(self.attention_levels) != self.levels:
            problems.append(f"attention_levels has {len(self.attention_levels)} entries for {self.levels} levels")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                problems.append(f"channels {c} not divisible by norm_num_groups {self.norm_num_groups}")
            if c % self.attention_heads:
                problems.append(f"channels {c} not divisible by attention_heads {self.attention_heads}")
            if c % self.motion_heads:
                problems.append(f"channels {c} not divisible by motion_heads {self.motion_heads}")
            if c % self.motion_norm_groups:
                problems.append(f"channels {c} not divisible by motion_norm_groups {self.motion_norm_groups} (the "
                                f"temporal layers' GroupNorm; released and AnimateDiff weights use "
                                f"{MOTION_NORM_GROUPS})")
        if self.cover_channels not in (0, self.in_channels + 1):
            problems.append(f"cover_channels must be 0 or {self.in_channels + 1} (covered latents + mask), "
                            f"got {self.cover_channels}")
        if len(self.guider_channels) != 4:
            # Three stride-2 convolutions take the control image to latent resolution (÷8).
            problems.append(f"guider_channels needs 4 entries (three ÷2 stages), got {self.guider_channels}")
        if self.image_prompt not in IMAGE_PROMPT_KINDS:
            problems.append(f"image_prompt must be one of {IMAGE_PROMPT_KINDS}, got {self.image_prompt!r}")
        if self.image_prompt == "qformer" and self.cross_attention_dim % self.qformer_heads:
            problems.append(f"cross_attention_dim {self.cross_attention_dim} not divisible by qformer_heads")
        if self.motion_max_len < 1:
            problems.append("motion_max_len must be positive")
        if problems:
            raise InvalidRequestError("invalid FYEConfig: " + "; ".join(problems))
