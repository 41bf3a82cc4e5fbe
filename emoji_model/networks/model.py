"""The container the loaders return: appearance net, denoising UNet, landmark guider, image prompt."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..errors import InvalidRequestError
from .appearance import AppearanceNet
from .config import FYEConfig
from .guider import LandmarkGuider
from .image_prompt import build_image_prompt
from .reference_attention import ReferenceContext
from .unet import DenoisingUNet

COMPONENTS = ("appearance", "unet", "guider", "image_prompt")


class FollowYourEmoji(nn.Module):
    """Follow-Your-Emoji networks with the calls a sampler needs.

    Conventions: latents are VAE latents × 0.18215 (SD-1.5 scaling); timesteps are DDPM indices
    0..999 (the appearance net runs at t=0); control renders are RGB in 0..1; CLIP tokens are the image
    encoder's ``last_hidden_state`` (ViT-L/14: [B,257,1024]); the model output is what
    ``config.prediction_type`` says (v-prediction for the released weights).
    """

    def __init__(self, config: FYEConfig):
        super().__init__()
        self.config = config
        self.appearance = AppearanceNet(config)
        self.unet = DenoisingUNet(config)
        self.guider = LandmarkGuider(config)
        self.image_prompt = build_image_prompt(config)

    # -- properties --------------------------------------------------------------------------------
    @property
    def max_frames(self) -> int:
        """Longest clip the temporal layers can take (length of their position encoding; 32 released)."""
        return self.config.motion_max_len

    @property
    def bank_count(self) -> int:
        """Number of appearance banks (one per spatial transformer block; 16 for SD-1.5)."""
        return self.appearance.bank_count

    @property
    def dtype(self) -> torch.dtype:
        """Parameter dtype of the networks."""
        return self.unet.conv_in.weight.dtype

    def get_dtype(self) -> torch.dtype:
        """Parameter dtype (the name ComfyUI's model management asks for)."""
        return self.dtype

    def weight_device(self) -> torch.device:
        """Device the weights are on now. (``device`` itself is left free: ComfyUI's ModelPatcher sets it.)"""
        return self.unet.conv_in.weight.device

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute activations in backward (per resnet / attention / temporal module) to save memory."""
        self.appearance.gradient_checkpointing = enabled
        self.unet.gradient_checkpointing = enabled

    def set_motion_norm_groups(self, groups: int) -> None:
        """Make the temporal layers normalise with ``groups`` GroupNorm groups (the config records it)."""
        from .blocks import TemporalTransformer

        config = self.config.replace(motion_norm_groups=int(groups))  # validates the channel counts
        for module in self.unet.modules():
            if isinstance(module, TemporalTransformer):
                module.norm.num_groups = int(groups)
        self.config = self.appearance.config = self.unet.config = config

    # -- the sampler's interface ---------------------------------------------------------------------
    def encode_image_prompt(self, clip_tokens: torch.Tensor, for_appearance: bool = False) -> torch.Tensor:
        """CLIP tokens [B,T,clip_dim] → prompt tokens [B,T',D] for the UNet (or the appearance net)."""
        if clip_tokens.ndim != 3 or clip_tokens.shape[-1] != self.config.clip_dim:
            raise InvalidRequestError(f"CLIP tokens must be [B,T,{self.config.clip_dim}] (the image encoder's "
                                      f"last_hidden_state); got {tuple(clip_tokens.shape)}")
        if for_appearance and self.appearance.image_prompt is not None:
            return self.appearance.image_prompt(clip_tokens)
        return self.image_prompt(clip_tokens)

    def encode_landmarks(self, control: torch.Tensor) -> torch.Tensor:
        """Control renders [B,3,F,H,W] in 0..1 → landmark features [B,C0,F,H/8,W/8] (C0=320 for SD-1.5)."""
        if control.ndim != 5 or control.shape[1] != self.config.guider_in_channels:
            raise InvalidRequestError(f"control must be [B,{self.config.guider_in_channels},F,H,W]; "
                                      f"got {tuple(control.shape)}")
        if control.shape[-1] % 8 or control.shape[-2] % 8:
            raise InvalidRequestError("control height and width must be multiples of 8; "
                                      f"got {tuple(control.shape[-2:])}")
        return self.guider(control)

    def appearance_banks(self, ref_latent: torch.Tensor, prompt_tokens: torch.Tensor | None = None, *,
                         clip_tokens: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Appearance banks, one [B, h_i·w_i, C_i] per spatial transformer block, in UNet order.

        ``ref_latent`` [B,4,h,w] is already × 0.18215. The appearance net's cross-attention context is
        ``clip_tokens`` through its own projection when it has one (released weights: referencenet's
        clip_fc differs from the UNet's), otherwise ``prompt_tokens`` from :meth:`encode_image_prompt`.
        """
        if ref_latent.ndim != 4 or ref_latent.shape[1] != self.config.in_channels:
            raise InvalidRequestError(f"ref_latent must be [B,{self.config.in_channels},h,w]; got "
                                      f"{tuple(ref_latent.shape)}")
        if self.appearance.image_prompt is not None:
            if clip_tokens is None:
                raise InvalidRequestError(
                    "this model's appearance net has its own image-prompt projection (as the released "
                    "referencenet): pass clip_tokens=<CLIP last_hidden_state> to appearance_banks, or use "
                    "emoji_model.reference.encode_reference")
            context = self.encode_image_prompt(clip_tokens, for_appearance=True)
        elif prompt_tokens is not None:
            context = prompt_tokens
        elif clip_tokens is not None:
            context = self.encode_image_prompt(clip_tokens)
        else:
            raise InvalidRequestError("appearance_banks needs prompt_tokens or clip_tokens")
        if context.shape[0] != ref_latent.shape[0]:
            raise InvalidRequestError(f"batch of prompt tokens ({context.shape[0]}) differs from the reference "
                                      f"latent's ({ref_latent.shape[0]})")
        return self.appearance(ref_latent, context)

    def prepare_reference(self, prompt_tokens: torch.Tensor, banks: Sequence[torch.Tensor] | None,
                          bank_mask: torch.Tensor | None = None) -> ReferenceContext:
        """The per-video part of :meth:`denoise`: key/value projections of the banks and prompt tokens.

        Pass the result as ``banks`` (with ``prompt_tokens=None``) to every :meth:`denoise` of the video; it
        computes what those arguments would, without projecting them again at every step and window.
        """
        self._check_banks(prompt_tokens.shape[0], banks, bank_mask)
        return self.unet.prepare_reference(prompt_tokens, banks, bank_mask)

    def _check_banks(self, b: int, banks, bank_mask) -> None:
        if banks is not None:
            banks = list(banks)
            if len(banks) != self.bank_count:
                raise InvalidRequestError(f"expected {self.bank_count} appearance banks, got {len(banks)}")
            bad = [i for i, bank in enumerate(banks) if bank.shape[0] != b]
            if bad:
                raise InvalidRequestError(f"appearance banks {bad} have batch {banks[bad[0]].shape[0]}, the sample "
                                          f"{b}; stack the banks like the sample (uncond, cond)")
        if bank_mask is not None and tuple(bank_mask.shape) != (b,):
            raise InvalidRequestError(f"bank_mask must be [{b}] booleans; got {tuple(bank_mask.shape)}")

    def denoise(self, sample: torch.Tensor, timestep: torch.Tensor | int, prompt_tokens: torch.Tensor | None,
                banks: Sequence[torch.Tensor] | ReferenceContext | None,
                landmark_features: torch.Tensor | None = None,
                covered: torch.Tensor | None = None, cover_mask: torch.Tensor | None = None,
                temporal: bool = True, bank_mask: torch.Tensor | None = None,
                on_block: Callable[[str], None] | None = None) -> torch.Tensor:
        """One UNet evaluation: sample [B,4,F,h,w] at ``timestep`` → model output [B,4,F,h,w].

        ``prompt_tokens`` [B,T',D]; ``banks`` from :meth:`appearance_banks` with the same batch B (or
        None: no reference attention), or what :meth:`prepare_reference` made of both (then
        ``prompt_tokens`` may be None); ``bank_mask`` [B] bool, False rows ignore their bank (the released
        unconditional branch); ``landmark_features`` [B,C0,F,h,w]; ``covered`` [B,4,F,h,w] are the known
        latents with covered frames zeroed and ``cover_mask`` [B,1,F,h,w] is 1 where a frame is covered
        (unknown), 0 where it is given — both only with ``config.cover_channels``; when omitted, every frame
        counts as covered. ``temporal=False`` skips the temporal layers (frames independent). ``on_block(name)``
        is called after every resnet, transformer and temporal module (the sampler checks Cancel there). The
        output has the dtype of ``sample``.
        """
        cfg = self.config
        if sample.ndim != 5 or sample.shape[1] != cfg.in_channels:
            raise InvalidRequestError(f"sample must be [B,{cfg.in_channels},F,h,w]; got {tuple(sample.shape)}")
        b, _, frames, h, w = sample.shape
        if temporal and frames > self.max_frames:
            raise InvalidRequestError(f"{frames} frames exceed the temporal layers' maximum of {self.max_frames}; "
                                      "split the video into context windows")
        if isinstance(banks, ReferenceContext):
            if banks.batch != b:
                raise InvalidRequestError(f"the prepared reference holds {banks.batch} clips, the sample {b}")
        else:
            if prompt_tokens is None or prompt_tokens.shape[0] != b:
                raise InvalidRequestError(f"prompt tokens must have the sample's batch {b}; got "
                                          f"{None if prompt_tokens is None else prompt_tokens.shape[0]}")
            self._check_banks(b, banks, bank_mask)
        if landmark_features is not None:
            expected = (b, cfg.guider_out_channels, frames, h, w)
            if tuple(landmark_features.shape) != expected:
                raise InvalidRequestError(f"landmark features must be {expected}; got {tuple(landmark_features.shape)}")
        cover = None
        if cfg.cover_channels:
            cover = self._cover_input(sample, covered, cover_mask)
        elif covered is not None or cover_mask is not None:
            raise InvalidRequestError("this checkpoint has no covered-latent input channels (cover_channels=0); "
                                      "impose known frames by replacing their noised latents instead")
        out = self.unet(sample, timestep, prompt_tokens, banks=banks, bank_mask=bank_mask,
                        landmark_features=landmark_features, cover=cover, temporal=temporal, on_block=on_block)
        return out.to(sample.dtype)

    def _cover_input(self, sample: torch.Tensor, covered: torch.Tensor | None,
                     cover_mask: torch.Tensor | None) -> torch.Tensor:
        b, c, f, h, w = sample.shape
        if covered is None:
            covered = sample.new_zeros(b, c, f, h, w)
        if cover_mask is None:
            cover_mask = sample.new_ones(b, 1, f, h, w)
        if tuple(covered.shape) != (b, c, f, h, w):
            raise InvalidRequestError(f"covered latents must be {(b, c, f, h, w)}; got {tuple(covered.shape)}")
        if cover_mask.shape[1] != 1 or tuple(cover_mask.shape[2:]) != (f, h, w) or cover_mask.shape[0] != b:
            raise InvalidRequestError(f"cover_mask must be {(b, 1, f, h, w)}; got {tuple(cover_mask.shape)}")
        return torch.cat([covered.to(sample.dtype), cover_mask.to(sample.dtype)], dim=1)


def build_model(config: FYEConfig, device: torch.device | str = "meta",
                dtype: torch.dtype = torch.float32) -> FollowYourEmoji:
    """Build the networks on ``device`` (``"meta"``: shapes only, for loading with assign=True)."""
    with torch.device(device):
        model = FollowYourEmoji(config)
    if dtype != torch.float32:
        model = model.to(dtype)
    return model.eval()
