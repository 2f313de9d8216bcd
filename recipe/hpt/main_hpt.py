"""Hydra entry point of the HPT recipe: ``python -m recipe.hpt.main_hpt [overrides]``.

Same shape as verl's recipes (e.g. DAPO): a TaskRunner that builds verl's workers, datasets and
the trainer subclass, launched through verl's own ``run_ppo`` (Ray init + remote runner).

Start-up checks (:mod:`verl_ext.checks`): the config in ``run_hpt`` before Ray starts
(:func:`verl_ext.checks.startup_checks`); the data rows (:func:`verl_ext.checks.data.validate_data`)
in ``HPTTaskRunner.run`` with the run's tokenizer, before the datasets, the trainer or any worker
exist (a bad row raises, or with ``hpt.data.on_bad_row=skip`` is removed and counted, and
``data.*_files`` point at the filtered copies; the counts reach the trainer's first-step metrics and
``hpt_summary.json``). The reward function in use is printed
(:func:`verl_ext.checks.reward.resolve_reward`) and every data_source and a sample of the
demonstrations are scored with it before any worker starts.
"""

from __future__ import annotations

import os
import socket

import hydra
import ray
from omegaconf import OmegaConf, open_dict

from recipe.hpt.runtime import prepare_runtime
from verl_ext.checks import startup_checks
from verl_ext.checks.data import validate_data
from verl_ext.checks.reward import resolve_reward
from verl_ext.hpt.config import HPTConfig
from verl.trainer.main_ppo import run_ppo
from verl.trainer.main_ppo_v0 import BaseTaskRunner
from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler, need_critic, need_reference_policy
from verl.utils.config import validate_config


class HPTTaskRunner(BaseTaskRunner):
    """Mirrors ``verl.trainer.main_ppo_v0.TaskRunner.run`` with the HPT worker and trainer."""

    def add_actor_rollout_worker(self, config):
        actor_rollout_cls, ray_worker_group_cls = super().add_actor_rollout_worker(config)
        # Same role/pool as verl chose; only the worker class changes (it installs the HPT loss).
        from recipe.hpt.hpt_worker import HPTActorRolloutRefWorker

        for role in list(self.role_worker_mapping):
            if role.name in ("ActorRollout", "ActorRolloutRef"):
                self.role_worker_mapping[role] = ray.remote(HPTActorRolloutRefWorker)
        return HPTActorRolloutRefWorker, ray_worker_group_cls

    def run(self, config):
        from verl.utils.config import omega_conf_to_dataclass
        from verl.utils.dataset.rl_dataset import collate_fn
        from verl.workers.config import HFModelConfig

        from recipe.hpt.hpt_ray_trainer import RayHPTTrainer

        print(f"HPTTaskRunner hostname: {socket.gethostname()}, PID: {os.getpid()}")
        OmegaConf.resolve(config)
        # Workers are built from `actor_rollout_ref` only: hand them the hpt node (loss preset,
        # step skip). The user-facing keys stay under `hpt.`.
        with open_dict(config):
            config.actor_rollout_ref.hpt = config.get("hpt", None)

        model_config: HFModelConfig = omega_conf_to_dataclass(config.actor_rollout_ref.model)
        tokenizer, processor = model_config.tokenizer, model_config.processor
        # Which function grades the rollouts, and why (custom function or verl's data_source dispatch).
        reward = resolve_reward(config)
        print(reward.describe())
        # Every row checked before anything is built (the contract, verl_ext/data/contract.py; each
        # data_source and a sample of demonstrations scored with `reward`). verl reads the files the
        # report names: the inputs, or filtered copies of those that lost rows.
        hpt = HPTConfig.from_config(config)  # the hpt node, parsed once for the data check and the trainer
        data_report = validate_data(config, tokenizer, reward=reward, hpt=hpt)
        with open_dict(config):
            config.data.train_files = data_report.train_files
            config.data.val_files = data_report.val_files

        actor_rollout_cls, ray_worker_group_cls = self.add_actor_rollout_worker(config)
        self.add_critic_worker(config)
        self.add_reward_model_resource_pool(config)
        self.add_ref_policy_worker(config, actor_rollout_cls)
        validate_config(config=config, use_reference_policy=need_reference_policy(config),
                        use_critic=need_critic(config))

        resource_pool_manager = self.init_resource_pool_mgr(config)

        train_dataset = create_rl_dataset(config.data.train_files, config.data, tokenizer, processor, is_train=True,
                                          max_samples=config.data.get("train_max_samples", -1))
        val_dataset = create_rl_dataset(config.data.val_files, config.data, tokenizer, processor, is_train=False,
                                        max_samples=config.data.get("val_max_samples", -1))
        train_sampler = create_rl_sampler(config.data, train_dataset)

        trainer = RayHPTTrainer(
            config=config,
            tokenizer=tokenizer,
            processor=processor,
            role_worker_mapping=self.role_worker_mapping,
            resource_pool_manager=resource_pool_manager,
            ray_worker_group_cls=ray_worker_group_cls,
            train_dataset=train_dataset,
            val_dataset=val_dataset,
            collate_fn=collate_fn,
            train_sampler=train_sampler,
            data_report=data_report,
            hpt=hpt,
        )
        trainer.init_workers()
        trainer.fit()
        return trainer.final_summary()


@hydra.main(config_path="config", config_name="hpt_trainer", version_base=None)
def main(config):
    run_hpt(config)


def run_hpt(config):
    """Run HPT training for a composed config (also the programmatic entry used by tests)."""
    from verl.experimental.reward_loop import migrate_legacy_reward_impl
    from verl.utils.device import auto_set_device

    startup_checks(config)  # every config check, before Ray and any worker: a bad setting fails in seconds
    prepare_runtime(config)
    auto_set_device(config)
    config = migrate_legacy_reward_impl(config)
    run_ppo(config, task_runner_class=ray.remote(num_cpus=1)(HPTTaskRunner))


if __name__ == "__main__":
    main()
