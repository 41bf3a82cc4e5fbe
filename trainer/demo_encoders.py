"""The bundled demo's frozen encoders: a small VAE and a small CLIP image encoder, fitted to diverse images.

Both are fitted once by ``python -m trainer.make_demo_checkpoint`` from data that ships with the pack's
dependencies (nothing is downloaded): frames of the shared driving video, the 80 training faces of
scikit-image's LFW subset, and scikit-image's sample photographs — each drawn at a random scale and
position and often given one of the training looks of :mod:`trainer.augment`. The astronaut, the
cameraman and LFW faces 80–99 are kept out: they are evaluation portraits.

* **VAE**: a diffusers ``AutoencoderKL`` with ÷8 latents of 4 channels, 32-group norms and channel
  counts that are multiples of 32, so that ComfyUI's own ldm autoencoder can hold it (``DEMO_VAE``);
  fitted with L1 + MSE + a small KL, then its latent space rescaled so that latents × 0.18215 have unit
  standard deviation, the SD-1.5 convention the pipeline assumes.
* **Image encoder**: a transformers ``CLIPVisionModelWithProjection`` (32-pixel inputs, 8-pixel patches:
  17 tokens of 48). Fitted so that its tokens carry the reference: a linear head must recover each
  patch's 2×2 mean colours from its token, and the class token the image's mean colour — so the image
  prompt tells the networks the reference's colours and layout, not a random projection of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emoji_model.constants import LATENT_SCALE

log = logging.getLogger("emoji_model.trainer.demo")

DEMO_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[32, 32, 64, 64], layers_per_block=1,
                latent_channels=4, norm_num_groups=32, sample_size=64, scaling_factor=LATENT_SCALE)
DEMO_CLIP = dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=2, image_size=32,
                 patch_size=8, projection_dim=16, hidden_act="quick_gelu")
LFW_TRAIN = range(0, 80)
LFW_HELD_OUT = range(80, 100)


def lfw_faces(indices) -> list[np.ndarray]:
    """scikit-image's LFW faces (25×25 grey) as RGB uint8 images, padded with black so MediaPipe finds them."""
    import cv2
    from skimage import data

    faces = data.lfw_subset()
    out = []
    for i in indices:
        grey = cv2.resize((faces[i] * 255).astype(np.uint8), (96, 96), interpolation=cv2.INTER_CUBIC)
        grey = cv2.copyMakeBorder(grey, 32, 32, 32, 32, cv2.BORDER_CONSTANT)
        out.append(np.repeat(grey[..., None], 3, axis=-1))
    return out


def image_sampler(video_frames: np.ndarray, size: int, seed: int) -> Callable[[], np.ndarray]:
    """A seeded source of diverse RGB uint8 [size,size,3] crops: video frames, LFW faces, photographs, looks."""
    import cv2

    from .augment import APPEARANCE_LOOKS, BACKGROUND_IMAGES, _look_params, apply_look, background_image

    rng = np.random.default_rng(seed)
    faces = lfw_faces(LFW_TRAIN)
    photos = [background_image(i) for i in range(len(BACKGROUND_IMAGES))]  # scikit-image's photographs

    def crop(image: np.ndarray, lo: float) -> np.ndarray:
        h, w = image.shape[:2]
        side = int(min(h, w) * rng.uniform(lo, 1.0))
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        patch = cv2.resize(image[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
        return patch[:, ::-1] if rng.random() < 0.5 else patch

    def sample() -> np.ndarray:
        r = rng.random()
        if r < 0.45:
            image = crop(video_frames[int(rng.integers(len(video_frames)))], 0.35)
        elif r < 0.7:
            image = crop(faces[int(rng.integers(len(faces)))], 0.45)
        else:
            image = crop(photos[int(rng.integers(len(photos)))], 0.1)
        if rng.random() < 0.6:
            look = APPEARANCE_LOOKS[int(rng.integers(len(APPEARANCE_LOOKS)))]
            image = apply_look(np.ascontiguousarray(image), look, _look_params(look, rng.random(6)))
        return np.ascontiguousarray(image)

    return sample


def fit_vae(sample: Callable[[], np.ndarray], steps: int, seed: int, batch: int = 8, lr: float = 2e-3,
            small_share: float = 0.75):
    """A small AutoencoderKL fitted to ``sample()`` crops, its latents rescaled to unit std (× 0.18215).

    The first ``small_share`` of the steps see random quarter-area crops (32 of 64 pixels, twice the
    batch): a convolutional autoencoder learns the same local code from them at a quarter of the cost;
    the last steps see whole images, so the mid-block attention learns the full layout.
    """
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL(**DEMO_VAE).train()
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)

    def batch_of(n: int, crop: int | None = None) -> torch.Tensor:
        images = np.stack([sample() for _ in range(n)])
        if crop is not None:
            s = images.shape[1]
            ys, xs = rng.integers(0, s - crop + 1, n), rng.integers(0, s - crop + 1, n)
            images = np.stack([im[y:y + crop, x:x + crop] for im, y, x in zip(images, ys, xs)])
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # n h w c -> n c h w

    small_steps = int(steps * small_share)
    for step in range(steps):
        for g in opt.param_groups:  # cosine decay to a tenth
            g["lr"] = lr * (0.1 + 0.45 * (1 + np.cos(np.pi * step / max(1, steps))))
        small = step < small_steps
        x = batch_of(2 * batch, 32) if small else batch_of(batch)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample(generator=gen)).sample
        err = recon - x
        loss = err.abs().mean() + err.square().mean() + 1e-6 * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("vae step %d/%d (%d px): L1 %.4f, MSE %.4f", step + 1, steps, x.shape[-1],
                     err.abs().mean().item(), err.square().mean().item())
    vae.eval()
    with torch.no_grad():
        data = batch_of(256)
        mean = torch.cat([vae.encode(data[s:s + 32]).latent_dist.mean for s in range(0, len(data), 32)])
        # z' = a·z with a chosen so that std(0.18215·z') = 1: scale the posterior mean (quant_conv's first
        # half), shift its log-variance by 2·log(a), and undo the scale at the decoder's input.
        a = 1.0 / (DEMO_VAE["scaling_factor"] * mean.std().item())
        c = DEMO_VAE["latent_channels"]
        vae.quant_conv.weight[:c] *= a
        vae.quant_conv.bias[:c] *= a
        vae.quant_conv.bias[c:] += 2 * float(np.log(a))
        vae.post_quant_conv.weight /= a
        recon = vae.decode(vae.encode(data[:64]).latent_dist.mean).sample
        log.info("vae latents rescaled by %.3f; reconstruction L1 on fresh crops %.2f grey levels", a,
                 (recon - data[:64]).abs().mean().item() * 127.5)
    return vae


def fit_image_encoder(sample: Callable[[], np.ndarray], steps: int, seed: int, batch: int = 32, lr: float = 3e-3):
    """A small CLIPVisionModelWithProjection whose tokens carry their patch's colours (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from einops import rearrange
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from emoji_model.reference import clip_preprocess

    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**DEMO_CLIP)).train()
    width, patch = DEMO_CLIP["hidden_size"], DEMO_CLIP["patch_size"]
    head = torch.nn.Linear(width, 3 * 4)  # each token -> 2x2 mean colours of its patch (the class token: 4x the mean)
    opt = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=lr, weight_decay=0.0)
    for step in range(steps):
        images = torch.from_numpy(np.stack([sample() for _ in range(batch)])).permute(0, 3, 1, 2).float() / 255
        x = clip_preprocess(images, DEMO_CLIP["image_size"])
        tokens = model(pixel_values=x).last_hidden_state  # [B, 1 + P, width]
        small = F.avg_pool2d(x, patch // 2)  # [B,3,8,8]: 2x2 colours per 8-px patch
        target = rearrange(small, "b c (ph a) (pw d) -> b (ph pw) (c a d)", a=2, d=2)
        target = torch.cat([small.mean((2, 3))[:, None].repeat_interleave(4, -1), target], 1)
        loss = (head(tokens) - target).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("image encoder step %d/%d: colour reconstruction MSE %.4f", step + 1, steps, loss.item())
    return model.eval()


def save_encoders(vae, encoder, vae_dir: Path, clip_dir: Path) -> None:
    """Write both as save_pretrained folders in float16, readable by every user of the pack."""
    import shutil

    import torch

    for module, folder in ((vae, vae_dir), (encoder, clip_dir)):
        shutil.rmtree(folder, ignore_errors=True)
        module.to(torch.float16).save_pretrained(folder)
        module.float()
        for f in Path(folder).iterdir():
            f.chmod(0o644)  # safetensors writes 0600; these files ship with the pack
