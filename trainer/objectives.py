"""The training objective: noise schedule, progressive covering, L_LDM + L_FFG (paper 4.2, 4.3).

Symbols (diffusers' DDPM notation): ``z`` the clean latents (VAE latents × 0.18215), ``ε`` the noise,
``ᾱ_t`` the cumulative product of the rescaled alphas, ``x_t = √ᾱ_t·z + √(1−ᾱ_t)·ε`` (``add_noise``) and
the v-prediction target ``v = √ᾱ_t·ε − √(1−ᾱ_t)·z`` (``get_velocity``). The schedule is the one the
checkpoint's config names and inference samples with: SD-1.5's scaled-linear betas rescaled to zero
terminal SNR (Lin et al. 2024), v-prediction.

**FFG.** Eq. 2 of the paper, ``L_FFG = E‖M_e⊙(z−ẑ) + M_f⊙(z−ẑ)‖²``, implemented literally as
``mean((M_e + M_f)² ⊙ (z − ẑ)²)`` over every latent element (batch, channels, frames, rows, columns):
where both masks hold the error counts 4×, where one holds 1×, outside both 0×. With both masks all
ones it is exactly 4 × MSE(z, ẑ). The masks come at latent resolution (see
``trainer.data.downsample_mask``). In ``ffg_space="latent"`` (the paper's definition, the default) ``ẑ``
is the clean latent the model predicts, ``ẑ = √ᾱ_t·x_t − √(1−ᾱ_t)·v̂``, so ``z − ẑ = √(1−ᾱ_t)(v̂ − v)``:
the FFG term weighs noisy steps more than clean ones. In ``ffg_space="v"`` the same masked formula is
applied to the v error itself (``z → v``, ``ẑ → v̂``), a face-weighted copy of L_LDM.

**Covering** (paper 4.3). Per clip sample, with probability ``p_keyframes`` every frame but the first and
the last is covered; otherwise each frame is covered independently with probability ``p_frame``. The
covered-latent input is the clean latents with covered frames zeroed, beside a mask that is 1 on
covered frames — the convention of ``FollowYourEmoji.denoise`` and of the progressive sampler. The
scheme is defined for keyframes and the gaps between them, so it applies to clips of three frames or
more; a shorter sample (stage 1's single frames) is always wholly covered — otherwise the network would
be handed its own clean target beside x_t and could learn to copy it.
"""

from __future__ import annotations

from typing import Any

import torch

from emoji_model.networks.config import RELEASED_SCHEDULER


def make_noise_scheduler(scheduler_config: dict[str, Any] | None = None, prediction_type: str = "v_prediction"):
    """diffusers DDPMScheduler with the betas, zero-terminal-SNR rescaling and prediction type of the model."""
    from diffusers import DDPMScheduler

    sc = dict(RELEASED_SCHEDULER)
    sc.update(scheduler_config or {})
    return DDPMScheduler(num_train_timesteps=int(sc["num_train_timesteps"]), beta_start=float(sc["beta_start"]),
                         beta_end=float(sc["beta_end"]), beta_schedule=sc["beta_schedule"],
                         rescale_betas_zero_snr=bool(sc.get("rescale_betas_zero_snr", False)),
                         prediction_type=sc.get("prediction_type", prediction_type), clip_sample=False)


def sample_covering(batch: int, frames: int, generator: torch.Generator, p_keyframes: float = 0.5,
                    p_frame: float = 0.5, device: torch.device | str | None = None) -> torch.Tensor:
    """bool [batch, frames], True = covered (unknown), drawn by the paper's two schemes (4.3).

    Both schemes' random numbers are always drawn, so every call consumes the generator alike. Samples
    of fewer than three frames are wholly covered (see the module docstring).
    """
    device = device if device is not None else generator.device
    choose = torch.rand(batch, generator=generator, device=device) < p_keyframes           # [B]
    independent = torch.rand(batch, frames, generator=generator, device=device) < p_frame  # [B,F]
    if frames < 3:
        return torch.ones(batch, frames, dtype=torch.bool, device=device)
    inner = torch.zeros(frames, dtype=torch.bool, device=device)
    inner[1:frames - 1] = True  # every frame but the first and the last (none for 1 or 2 frames)
    return torch.where(choose[:, None], inner[None].expand(batch, frames), independent)


def cover_inputs(latents: torch.Tensor, covered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(covered latents [B,C,F,h,w] with covered frames zeroed, cover mask [B,1,F,h,w] 1 = covered)."""
    b, _, f, h, w = latents.shape
    mask = covered.to(latents.dtype)[:, None, :, None, None].expand(b, 1, f, h, w)
    return latents * (1 - mask), mask.contiguous()


def predicted_latents(alphas_cumprod: torch.Tensor, noisy: torch.Tensor, v_pred: torch.Tensor,
                      timesteps: torch.Tensor) -> torch.Tensor:
    """ẑ = √ᾱ_t·x_t − √(1−ᾱ_t)·v̂: the clean latents a v-prediction implies ([B,...] with t [B])."""
    a = alphas_cumprod.to(noisy.device, torch.float32)[timesteps].reshape(-1, *([1] * (noisy.ndim - 1)))
    return a.sqrt() * noisy.float() - (1 - a).sqrt() * v_pred.float()


def _mean(values: torch.Tensor, frame_weight: torch.Tensor | None) -> torch.Tensor:
    """Mean over every element, or over the frames ``frame_weight`` [B,F] selects (values [B,C,F,h,w])."""
    if frame_weight is None:
        return values.mean()
    w = frame_weight.to(values.dtype)[:, None, :, None, None]
    count = (w.sum() * values.shape[1] * values.shape[3] * values.shape[4]).clamp(min=1)
    return (values * w).sum() / count


def ffg_loss(z: torch.Tensor, z_hat: torch.Tensor, expression: torch.Tensor, facial: torch.Tensor,
             frame_weight: torch.Tensor | None = None) -> torch.Tensor:
    """L_FFG = mean(|M_e⊙(z−ẑ) + M_f⊙(z−ẑ)|²) over all elements (of the weighted frames); masks broadcast over channels."""
    diff = z.float() - z_hat.float()
    weight = expression.float() + facial.float()
    return _mean((weight * diff).square(), frame_weight)


def diffusion_losses(v_pred: torch.Tensor, v_target: torch.Tensor, latents: torch.Tensor, noisy: torch.Tensor,
                     timesteps: torch.Tensor, masks: torch.Tensor, alphas_cumprod: torch.Tensor, *,
                     ldm_weight: float = 1.0, ffg_weight: float = 1.0, ffg_space: str = "latent",
                     frame_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{"loss", "ldm", "ffg"}: L = w_ldm·MSE(v̂, v) + w_ffg·L_FFG (eq. 3), in float32.

    ``masks`` [B,2,F,h,w] holds the expression and facial masks on the latent grid; ``frame_weight``
    [B,F] (1 = counts) restricts both terms to some frames (e.g. the covered ones).
    """
    ldm = _mean((v_pred.float() - v_target.float()).square(), frame_weight)
    expression, facial = masks[:, 0:1].float(), masks[:, 1:2].float()
    if ffg_space == "latent":
        ffg = ffg_loss(latents, predicted_latents(alphas_cumprod, noisy, v_pred, timesteps), expression, facial,
                       frame_weight)
    elif ffg_space == "v":
        ffg = ffg_loss(v_target, v_pred, expression, facial, frame_weight)
    else:
        raise ValueError(f"ffg_space must be 'latent' or 'v', got {ffg_space!r}")
    return {"loss": ldm_weight * ldm + ffg_weight * ffg, "ldm": ldm.detach(), "ffg": ffg.detach()}
