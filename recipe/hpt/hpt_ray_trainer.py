"""RayHPTTrainer: verl's RayPPOTrainer with HPT's gate and demonstration merge."""

from __future__ import annotations

from verl.trainer.ppo.ray_trainer import RayPPOTrainer


class RayHPTTrainer(RayPPOTrainer):
    pass
