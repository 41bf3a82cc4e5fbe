"""`trainer plan`: the meta-device estimate against counted allocations of real training steps (tiny
config, CPU), the largest batch, accelerate configs read for sharding, and the command line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO
from tiny_fye import tiny_clip, tiny_vae

SIZE = 64


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    tiny_vae().save_pretrained(root / "vae")
    tiny_clip().save_pretrained(root / "clip")
    return root


def _cfg(root, **kw):
    from trainer.config import TrainConfig

    # no reference dropout: the plan counts the larger case, the reference attended
    base = dict(model="tiny", model_overrides={"cover_channels": 5}, vae=str(root / "vae"),
                image_encoder=str(root / "clip"), batch_size=2, lr=1e-3, cfg_drop=0.0)
    base.update(kw)
    return TrainConfig.from_dict(base)


def measured_peak(cfg, frames: int, steps: int = 2) -> int:
    """Peak bytes of every tensor the trainer's pieces create: networks, encoders, optimizer, two steps."""
    from emoji_model.checkpoints import load_clip_vision, load_vae
    from trainer.memory import PeakTensorMemory
    from trainer.objectives import make_noise_scheduler
    from trainer.optim import build_optimizer
    from trainer.step import FrozenEncoders, TrainingForward, build_model, set_trainable, training_losses

    gen = torch.Generator().manual_seed(0)
    # safetensors reads do not pass the dispatch mode: the encoders' weights are added by hand
    vae, clip = load_vae(cfg.vae).requires_grad_(False), load_clip_vision(cfg.image_encoder).requires_grad_(False)
    weights = sum(p.numel() * p.element_size() for m in (vae, clip) for p in m.parameters())
    with PeakTensorMemory() as meter:
        model = build_model(cfg)
        named = set_trainable(model, cfg.trainable_groups(model.config.cover_channels))
        if cfg.gradient_checkpointing:
            model.enable_gradient_checkpointing(True)
        model.train()
        encoders = FrozenEncoders(vae, clip)
        optimizer = build_optimizer(named, cfg)
        forward = TrainingForward(model, temporal=cfg.stage == 2)
        sched = make_noise_scheduler(model.config.scheduler, model.config.prediction_type)
        b, h = cfg.batch_size, SIZE // 8
        for _ in range(steps):
            batch = {"pixels": torch.rand(b, 3, frames, SIZE, SIZE, generator=gen) * 2 - 1,
                     "reference": torch.rand(b, 3, SIZE, SIZE, generator=gen),
                     "control": torch.rand(b, 3, frames, SIZE, SIZE, generator=gen),
                     "masks": (torch.rand(b, 2, frames, h, h, generator=gen) > 0.5).float()}
            out = training_losses(forward, encoders, batch, sched, gen, cfg, model.config.cover_channels > 0)
            out["loss"].backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in named], cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            del out, batch
    return weights + meter.peak


@pytest.mark.parametrize("case", [
    dict(stage=1, optimizer="adamw"),
    dict(stage=1, optimizer="coap", gradient_checkpointing=True, batch_size=4),
    dict(stage=2, optimizer="adamw", frames=4, batch_size=1),
], ids=["stage1-adamw", "stage1-coap-checkpointing", "stage2-adamw"])
def test_plan_matches_counted_allocations_within_15_percent(encoders, case):
    from trainer.plan import estimate

    cfg = _cfg(encoders, **case)
    frames = cfg.sample_frames(16)
    plan = estimate(cfg, size=SIZE, device="cpu")
    measured = measured_peak(cfg, frames)
    assert abs(plan.total() - measured) / measured < 0.15, (plan.total(), measured)


def test_largest_batch_and_sharding(encoders):
    from trainer.plan import estimate

    cfg = _cfg(encoders, stage=1, optimizer="adamw")
    plan = estimate(cfg, size=SIZE, device="cpu")
    memory = plan.total(6) + plan.act_per_sample // 2
    assert plan.largest_batch(memory) == 6
    assert plan.largest_batch(plan.total(1) - 1) == 0
    full = estimate(cfg, size=SIZE, device="cpu", processes=4, sharding="full_shard")
    grad_op = estimate(cfg, size=SIZE, device="cpu", processes=4, sharding="shard_grad_op")
    ddp = estimate(cfg, size=SIZE, device="cpu", processes=4)
    assert full.optimizer_state == grad_op.optimizer_state == plan.optimizer_state // 4
    assert full.model_params == plan.model_params // 4 and grad_op.model_params == plan.model_params
    assert ddp.optimizer_state == plan.optimizer_state and ddp.ddp_buckets and not plan.ddp_buckets
    assert full.total() < grad_op.total() < ddp.total()


def test_accelerate_configs_are_read_for_processes_and_sharding(tmp_path):
    from trainer.plan import parse_bytes, read_accelerate_config

    root = REPO / "trainer" / "configs" / "accelerate"
    assert read_accelerate_config(root / "multi_gpu.yaml") == (2, "none")
    assert read_accelerate_config(root / "multi_node.yaml") == (16, "none")
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text("distributed_type: FSDP\nnum_processes: 8\nfsdp_config:\n  fsdp_version: 2\n"
                    "  fsdp_reshard_after_forward: true\n")
    assert read_accelerate_config(fsdp) == (8, "full_shard")
    fsdp.write_text("distributed_type: FSDP\nnum_processes: 4\nfsdp_config:\n  fsdp_reshard_after_forward: false\n")
    assert read_accelerate_config(fsdp) == (4, "shard_grad_op")
    assert parse_bytes("24GiB") == 24 * 2 ** 30 and parse_bytes("80 GB") == 80 * 10 ** 9


def test_plan_command_prints_the_sd15_stage1_figures():
    """The SD-1.5 stage-1 example config, on meta tensors: AdamW does not fit 24 GiB, COAP 8-bit does."""
    out = subprocess.run([sys.executable, "-m", "trainer", "plan", "--config",
                          str(REPO / "trainer" / "configs" / "sd15_stage1.yaml"), "--set", "optimizer=coap8bit",
                          "--memory", "24GiB"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert "1719.4M trained numbers, optimizer coap8bit" in text and "optimizer state" in text
    largest = int(text.split("largest batch per process in 24.0 GiB:")[1].split()[0])
    assert largest >= 1
