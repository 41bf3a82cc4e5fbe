"""Evaluation during training: the `evaluate` command's self-reenactment metrics on held-out clips.

Every ``eval_every`` optimizer steps the main process generates ``eval_frames`` frames of each of the
first ``eval_clips`` clips of ``eval_dataset`` (frame 0 is the reference, the following frames are the
driving landmarks and the ground truth) with the EMA weights when the run keeps an EMA (what
``export --ema`` writes), and logs ``eval_l1``, ``eval_ssim``, ``eval_psnr``, ``eval_landmark_error``,
``eval_face_found`` and ``eval_motion_corr`` beside the losses. It draws no random number from the
training streams (its noise comes from its own seeded generator), so a run with evaluation trains
exactly like one without.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger("emoji_model.trainer.evaluation")

LOGGED = ("l1", "ssim", "psnr", "landmark_error", "face_found", "motion_corr")


class TrainingEvaluation:
    """Held-out clips and the frozen encoders, ready to score the model at a step."""

    def __init__(self, cfg, vae, image_encoder):
        from .data import load_index, read_shard

        self.every = int(cfg.eval_every)
        self.vae, self.image_encoder = vae, image_encoder
        index = load_index(cfg.eval_dataset)
        clips = [c for c in index["clips"] if not c.get("still")][: cfg.eval_clips]
        if not clips:
            from emoji_model.errors import InvalidRequestError

            raise InvalidRequestError(f"eval_dataset '{cfg.eval_dataset}' has no video clip to evaluate on")
        self.clips = []
        for clip in clips:
            data = read_shard(Path(cfg.eval_dataset) / clip["shard"])
            n = min(len(data["frames"]), cfg.eval_frames + 1)
            self.clips.append((data["frames"][:n], data["controls"][:n], data["points"][:n]))
        from emoji_model.sampling import SamplerSettings

        window = min(n - 1, 16)
        self.settings = SamplerSettings(steps=cfg.eval_steps, window=max(1, window), overlap=0, seed=cfg.seed)

    def due(self, step: int) -> bool:
        """True at the steps an evaluation runs."""
        return self.every > 0 and step % self.every == 0

    @torch.no_grad()
    def __call__(self, model, ema=None) -> dict[str, Any]:
        """{"eval_<metric>": mean over clips} for the model (its EMA weights swapped in when given)."""
        from emoji_model.evaluate import self_reenactment

        start = time.perf_counter()
        params = dict(model.named_parameters())
        saved = {}
        if ema is not None:
            for name, shadow in ema.shadow.items():
                saved[name] = params[name].detach().clone()
                params[name].copy_(shadow.to(params[name].dtype))
        was_training = model.training
        model.eval()
        try:
            reports = [self_reenactment(model, self.vae, self.image_encoder, frames, controls, points, self.settings,
                                        device=model.weight_device())[0] for frames, controls, points in self.clips]
        finally:
            for name, value in saved.items():
                params[name].copy_(value)
            model.train(was_training)
        out: dict[str, Any] = {}
        for key in LOGGED:
            values = [r.metrics[key] for r in reports if r.metrics.get(key) is not None]
            out[f"eval_{key}"] = float(np.mean(values)) if values else None
        log.info("evaluation (%d clip(s), %.1f s): %s", len(reports), time.perf_counter() - start,
                 ", ".join(f"{k[5:]} {v:.4g}" for k, v in out.items() if v is not None))
        return out
