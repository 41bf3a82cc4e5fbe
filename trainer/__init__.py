"""The trainer: prepare a dataset from talking-head videos, train both stages, export checkpoints.

    python -m trainer prepare --videos DIR --out DATASET [--size 512] [--fps N] [--clip-length 16]
    python -m trainer train --config CONFIG.yaml [--set key=value] [--resume auto|never|PATH] [--stop-at N]
    python -m trainer plan --config CONFIG.yaml [--memory 24GiB] [--accelerate-config ACC.yaml]
    accelerate launch --config_file trainer/configs/accelerate/multi_gpu.yaml -m trainer train --config CONFIG.yaml
    python -m trainer export RUN_DIR --out FILE.safetensors [--ema] [--dtype fp16]

Modules: ``data`` (prepare, shards, the dataset and its batch order), ``config`` (every training knob
with its default), ``objectives`` (noise schedule, covering, L_LDM + L_FFG), ``step`` (networks,
trainable groups, one micro-step), ``optim`` (learning rate, AdamW / GaLore-style AdamW, EMA), ``coap`` (COAP), ``plan``
(memory per GPU on meta tensors), ``memory`` (counted tensor memory),
``checkpointing`` (atomic, resumable checkpoints), ``train``/``prepare``/``export`` (the commands) and
``make_demo_checkpoint`` (the small model shipped in emoji_model/assets/). Example configs are in
``trainer/configs/``.
"""

import logging

logger = logging.getLogger("emoji_model.trainer")
