"""The training configuration: one flat dataclass of commented defaults, read from YAML.

Read it top to bottom like nanoGPT's ``train.py`` header: every knob of a run is here with its default
and why. A YAML file sets any subset of these keys (unknown keys are an error); ``--set key=value`` on
the command line overrides single keys. Relative paths are taken relative to the working directory.
The whole config is stored in every training checkpoint, so resuming rebuilds the same run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emoji_model.errors import InvalidRequestError

STAGES = (1, 2)
OPTIMIZERS = ("adamw", "adamw8bit", "galore", "coap", "coap8bit")
LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("no", "fp16", "bf16")
FFG_SPACES = ("latent", "v")
MASK_DOWNSAMPLING = ("max", "area")
TRAINABLE_GROUPS = ("appearance", "unet_spatial", "unet_temporal", "unet_conv_in", "unet_cover_in", "guider",
                    "image_prompt")

# Keys a resumed run may change without changing what the run computes (its length, its bookkeeping).
RESUME_MUTABLE = ("max_steps", "checkpoint_every", "keep_checkpoints", "log_every", "num_workers", "tensorboard",
                  "resume", "run_dir", "eval_every", "eval_dataset", "eval_clips", "eval_frames", "eval_steps")


@dataclass
class TrainConfig:
    """Every setting of a training run (see the comments for defaults and meaning)."""

    # -- the run ---------------------------------------------------------------------------------
    run_dir: str = "runs/fye"             # checkpoints/, metrics.jsonl and config.yaml are written here
    seed: int = 0                         # model init, data order, noise, covering and dropout all follow it
    stage: int = 1                        # 1: single frames; 2: 16-frame clips, temporal layers only (paper 5.1)

    # -- the networks and where their starting weights come from ----------------------------------
    model: str = "sd15"                   # FYEConfig preset: "sd15" (released sizes) or "tiny" (CPU tests)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # FYEConfig fields, e.g. {cover_channels: 5}
    init_checkpoint: str | None = None    # released Follow-Your-Emoji weights or a checkpoint of ours (its config wins)
    init_sd_unet: str | None = None       # SD-1.5 single file or diffusers folder -> appearance net + UNet spatial layers
    init_sd_base: str | None = None       # base SD-1.5 of a personalised init_sd_unet: merge the difference instead
    init_motion_module: str | None = None  # AnimateDiff motion modules (mm_sd_v15_v2.ckpt) -> temporal layers
    image_encoder: str | None = None      # CLIP vision encoder (sd-image-variations image_encoder/), frozen
    vae: str | None = None                # SD VAE (sd-vae-ft-mse), frozen
    appearance_from_unet: bool = True     # a fresh appearance net starts as a copy of the UNet (as SD-initialised ones do)
    trainable: list[str] | None = None    # parameter groups to train; null = the stage's default (see below)
    # Groups: appearance, unet_spatial (conv_in's latent channels but not its covered-latent inputs),
    # unet_temporal, unet_cover_in (only conv_in's covered-latent input channels), unet_conv_in (all of
    # conv_in), guider, image_prompt.

    # -- data ------------------------------------------------------------------------------------
    dataset: str | None = None            # a folder written by `python -m trainer prepare`
    frames: int | None = None             # frames per sample; null = 1 in stage 1, the clip length in stage 2
    max_clips: int | None = None          # use only the first N clips of the dataset (overfitting, smoke tests)
    num_workers: int = 0                  # DataLoader worker processes

    # -- optimisation ------------------------------------------------------------------------------
    batch_size: int = 1                   # samples per process and micro-step
    grad_accum: int = 1                   # micro-steps per optimizer step (global batch = batch_size·grad_accum·processes)
    max_steps: int = 30000                # optimizer steps (paper: 30k in stage 1, 10k in stage 2, global batch 32)
    lr: float = 1e-5                      # peak learning rate (paper: 1e-5 in both stages)
    lr_schedule: str = "constant"         # "constant" after warm-up, or "cosine" down to min_lr at max_steps
    min_lr: float = 0.0                   # floor of the cosine schedule
    warmup_steps: int = 0                 # linear warm-up from 0
    weight_decay: float = 1e-2            # AdamW weight decay on matrices and kernels (not biases or norms)
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0                # max global gradient norm; 0 = off
    optimizer: str = "adamw"              # "adamw", "galore", "coap" (low-rank moments); "adamw8bit", "coap8bit" (bitsandbytes)
    galore_rank: int = 128                # rank of the gradient projection of each matrix
    galore_update_every: int = 200        # steps between SVD refreshes of the projection
    galore_scale: float = 0.25            # scale of the projected-back update (GaLore's alpha)
    # COAP (optimizer: coap or coap8bit; trainer/coap.py). The defaults keep ~1/3 of AdamW's state.
    coap_rank: int | None = None          # fixed rank of every matrix's projection; null = smaller side / coap_rank_ratio
    coap_rank_ratio: float = 4.0          # matrices (and 1x1 convs): rank = min(m, n) / ratio
    coap_conv_rank_ratio: float = 4.0     # 3x3 convs: Tucker-2 core = kernel / ratio (each channel mode / sqrt(ratio))
    coap_update_interval: int = 32        # steps between correlation-aware updates of the projection (paper's T_u)
    coap_reproject_factor: int = 5        # every N-th update is a randomized-SVD refresh instead (paper: T = T_u x N)
    coap_scale: float = 2.0               # scale of the projected-back update; ~sqrt(rank ratio) gives AdamW's step size
    mixed_precision: str = "no"           # accelerate's mixed precision: "no", "fp16" or "bf16"
    gradient_checkpointing: bool = False  # recompute activations in backward (needed for SD-1.5 on 24 GB)
    ema_decay: float = 0.0                # EMA of the trained parameters; 0 = off (e.g. 0.9999)

    # -- loss and conditioning (paper 4.2, 4.3) ----------------------------------------------------
    ldm_weight: float = 1.0               # weight of L_LDM: MSE between predicted and true v
    ffg_weight: float = 1.0               # weight of L_FFG, the facial fine-grained loss (eq. 2)
    ffg_space: str = "latent"             # "latent": z vs the predicted clean latent (the paper); "v": masked v error
    mask_downsample: str = "max"          # pixel masks -> latent grid: "max" (any pixel of the 8x8 cell) or "area" (>= half)
    cover: bool = True                    # progressive covering when the model has covered-latent inputs
    cover_keyframes_prob: float = 0.5     # P(cover every frame but the first and the last)
    cover_frame_prob: float = 0.5         # otherwise each frame is covered independently with this probability
    cfg_drop: float = 0.1                 # P(drop the reference: zeroed CLIP tokens) for classifier-free guidance
    cfg_drop_bank: bool = True            # a dropped reference also drops the appearance bank (released uncond branch)
    latent_sample: bool = True            # sample the VAE posterior for targets (else its mean)
    # Frames given uncovered (known) count in the stage-2 loss: the sampler evolves their noisy latents
    # beside the unknown frames, which attend to them, so they are trained to stay put (a cheap target).
    loss_known_frames: bool = True

    # -- paired augmentation (trainer/augment.py): one draw changes a sample's reference and target alike -
    augment_appearance: float = 0.0       # P(a new look: colour, grey, tint, stylisation, cartoon, sketch)
    augment_background: float = 0.0       # P(a new background outside the head, from scikit-image's samples)
    augment_flip: float = 0.0             # P(the mirror image, landmarks relabelled)
    augment_warp: float = 0.0             # P(a synthetic head motion) for video clips; still portraits always move
    augment_rotation: float = 12.0        # largest rotation of a synthetic motion, degrees
    augment_scale: float = 0.12           # largest relative zoom
    augment_shift: float = 0.08           # largest shift, as a share of the side

    # -- evaluation during training (emoji_model.evaluate, the `evaluate` command's metrics) ----------
    eval_every: int = 0                   # optimizer steps between evaluations; 0 = off
    eval_dataset: str | None = None       # a prepared dataset of held-out clips (frame 0 is the reference)
    eval_clips: int = 1                   # how many of its clips
    eval_frames: int = 8                  # frames generated per clip
    eval_steps: int = 10                  # sampling steps of the evaluation (DDIM, the model's schedule)

    # -- checkpoints and logging -------------------------------------------------------------------
    checkpoint_every: int = 500           # optimizer steps between checkpoints (one is also written at the end)
    keep_checkpoints: int = 3             # the last N are kept
    resume: str = "auto"                  # "auto": from the run's latest checkpoint if any; "never"; or a checkpoint folder
    log_every: int = 1                    # optimizer steps between log lines
    tensorboard: str = "auto"             # "auto": log to TensorBoard when it is installed; "true"; "false"
    find_unused_parameters: bool = True   # DDP: parameters may get no gradient (dropped banks, the last appearance block)

    # -- derived -----------------------------------------------------------------------------------
    def sample_frames(self, clip_length: int) -> int:
        """Frames per training sample."""
        if self.frames is not None:
            return int(self.frames)
        return 1 if self.stage == 1 else int(clip_length)

    def trainable_groups(self, cover_channels: int) -> list[str]:
        """Parameter groups trained: the configured ones, or the stage's defaults.

        Stage 1 trains the appearance net, the UNet's spatial layers (not conv_in's covered-latent inputs:
        single frames are always fully covered), the guider and the image prompt; stage 2 the temporal
        layers (paper 5.1), plus conv_in's covered-latent input channels when the model has them (only
        clips teach what the covered frames mean) — not its latent channels nor its bias.
        """
        if self.trainable is not None:
            return list(self.trainable)
        if self.stage == 1:
            return ["appearance", "unet_spatial", "guider", "image_prompt"]
        return ["unet_temporal"] + (["unet_cover_in"] if cover_channels and self.cover else [])

    def augment_options(self):
        """The paired augmentations as trainer.augment.AugmentOptions."""
        from .augment import AugmentOptions

        return AugmentOptions(appearance=self.augment_appearance, background=self.augment_background,
                              flip=self.augment_flip, warp=self.augment_warp, rotation=self.augment_rotation,
                              scale=self.augment_scale, shift=self.augment_shift)

    # -- validation and IO -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise InvalidRequestError listing every impossible setting."""
        p = []
        if self.stage not in STAGES:
            p.append(f"stage must be 1 or 2, got {self.stage}")
        for name, allowed in (("optimizer", OPTIMIZERS), ("lr_schedule", LR_SCHEDULES),
                              ("mixed_precision", PRECISIONS), ("ffg_space", FFG_SPACES),
                              ("mask_downsample", MASK_DOWNSAMPLING)):
            if getattr(self, name) not in allowed:
                p.append(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.model not in ("sd15", "tiny"):
            p.append(f"model must be 'sd15' or 'tiny', got {self.model!r}")
        for name in ("batch_size", "grad_accum", "max_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
            if int(getattr(self, name)) < 1:
                p.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.frames is not None and self.frames < 1:
            p.append(f"frames must be at least 1, got {self.frames}")
        for name in ("cover_keyframes_prob", "cover_frame_prob", "cfg_drop"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                p.append(f"{name} must be a probability, got {getattr(self, name)}")
        if not 0.0 <= self.ema_decay < 1.0:
            p.append(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr <= 0:
            p.append(f"lr must be positive, got {self.lr}")
        if self.galore_rank < 1 or self.galore_update_every < 1:
            p.append("galore_rank and galore_update_every must be at least 1")
        if self.coap_rank is not None and self.coap_rank < 1:
            p.append(f"coap_rank must be at least 1 or null, got {self.coap_rank}")
        if self.coap_rank_ratio < 1 or self.coap_conv_rank_ratio < 1:
            p.append("coap_rank_ratio and coap_conv_rank_ratio must be at least 1")
        if self.coap_update_interval < 1 or self.coap_reproject_factor < 1:
            p.append("coap_update_interval and coap_reproject_factor must be at least 1")
        if self.trainable is not None:
            bad = [g for g in self.trainable if g not in TRAINABLE_GROUPS]
            if bad or not self.trainable:
                p.append(f"trainable must list groups of {TRAINABLE_GROUPS}, got {self.trainable}")
        for name in ("dataset", "image_encoder", "vae"):
            if not getattr(self, name):
                p.append(f"{name} is required")
        if self.resume not in ("auto", "never") and not Path(self.resume).exists():
            p.append(f"resume must be 'auto', 'never' or an existing checkpoint folder, got {self.resume!r}")
        try:
            self.augment_options().validate()
        except InvalidRequestError as exc:
            p.append(str(exc))
        if self.eval_every < 0 or self.eval_clips < 1 or self.eval_frames < 1 or self.eval_steps < 1:
            p.append("eval_every must be >= 0 and eval_clips, eval_frames, eval_steps at least 1")
        if self.eval_every and not self.eval_dataset:
            p.append("eval_every needs eval_dataset (a prepared dataset of held-out clips)")
        if self.tensorboard not in ("auto", "true", "false"):
            p.append(f"tensorboard must be 'auto', 'true' or 'false', got {self.tensorboard!r}")
        if p:
            raise InvalidRequestError("invalid training config: " + "; ".join(p))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict of every key."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys raise InvalidRequestError naming the known ones."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise InvalidRequestError(f"unknown training config keys {unknown}; known keys: {list(fields)}")
        return cls(**{k: _coerce(k, str(fields[k].type), v) for k, v in data.items()})

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some keys changed."""
        return dataclasses.replace(self, **changes)


def _coerce(name: str, annotation: str, value: Any) -> Any:
    """Numbers as the field's type (YAML reads ``1e-5`` as a string, ``3`` for a float field as an int)."""
    if value is None or isinstance(value, bool):
        return value
    kind = annotation.split("|")[0].strip()
    try:
        if kind == "float" and isinstance(value, (int, str)):
            return float(value)
        if kind == "int" and isinstance(value, str):
            return int(value)
        if kind == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
    except ValueError:
        raise InvalidRequestError(f"training config key {name} must be a {kind}, got {value!r}") from None
    return value


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["key=value", ...]`` → dict, each value parsed as YAML (numbers, booleans, lists, null)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InvalidRequestError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a YAML config (or start from the defaults when ``path`` is None) and apply ``overrides``."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise InvalidRequestError(f"training config '{path}' does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise InvalidRequestError(f"training config '{path}' must be a mapping of keys to values")
        data.update(loaded)
    data.update(overrides or {})
    return TrainConfig.from_dict(data)


def dump_yaml(cfg: TrainConfig) -> str:
    """The config as YAML (written beside the checkpoints for the record)."""
    import yaml

    return yaml.safe_dump(json.loads(json.dumps(cfg.to_dict())), sort_keys=False)
