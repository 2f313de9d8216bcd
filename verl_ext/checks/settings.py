"""Settings of verl's config that HPT cannot honour, refused at start-up with the reason and the fix.

HPT runs inside verl's own step (``recipe/hpt/hpt_ray_trainer.py``): a verl setting that would make
that step train something else than the user asked, silently, is refused here before Ray starts
(:func:`verl_ext.checks.startup_checks`); one that runs as asked but deserves a word is a warning.
"""

from __future__ import annotations


# Advantage estimators computed from each row's outcome score and uid group alone (verl's
# core_algos): they work unchanged on the merged batch (demonstration rows, inert padding rows).
SUPPORTED_ADV_ESTIMATORS = frozenset({
    "grpo", "grpo_vectorized", "rloo", "rloo_vectorized", "reinforce_plus_plus", "reinforce_plus_plus_baseline"})


def unsupported_settings(config) -> list[str]:
    """verl settings this trainer cannot honour, each with its reason (empty list: none).

    Checked once, by :func:`verl_ext.checks.startup_checks`, before Ray starts.
    """
    problems = []
    if not config.trainer.get("balance_batch", True):
        problems.append(
            "trainer.balance_batch=false: RayHPTTrainer gates and merges inside verl's _balance_batch hook, "
            "which RayPPOTrainer.fit only calls when trainer.balance_batch=true")
    rollout_corr = (config.get("algorithm", None) or {}).get("rollout_correction", None) or {}
    if rollout_corr.get("bypass_mode", False):
        problems.append(
            "algorithm.rollout_correction.bypass_mode=true: bypass mode applies its correction inside verl's own "
            "policy loss (loss_mode=bypass_mode), which the HPT loss replaces, and demonstration rows have no "
            "rollout log-probs to stand in for old log-probs. Use decoupled mode (bypass_mode=false, verl's "
            "default): the HPT loss applies verl's rollout_is_weights to rollout rows.")
    algorithm = config.get("algorithm", None) or {}
    estimator = str(algorithm.get("adv_estimator", "grpo"))
    if estimator not in SUPPORTED_ADV_ESTIMATORS:
        problems.append(
            f"algorithm.adv_estimator={estimator}: RayHPTTrainer supports {sorted(SUPPORTED_ADV_ESTIMATORS)}, the "
            "estimators computed from each row's outcome score and its uid group alone. "
            + ("GAE needs a critic, whose values and update would also run on demonstration rows. "
               if estimator == "gae" else
               "Others need inputs the merged batch does not provide for demonstration rows (a second "
               "generation, per-token baselines, several reward heads). "))
    critic = config.get("critic", None) or {}
    if critic.get("enable", None):
        problems.append(
            "critic.enable=true: RayHPTTrainer trains no value model; demonstration rows have no values, and "
            "the HPT loss's rollout arm takes verl's outcome advantages (set critic.enable=null or false)")
    distillation = config.get("distillation", None) or {}
    if distillation.get("enabled", False):
        problems.append(
            "distillation.enabled=true: verl adds its distillation loss inside its own actor loss_fn, which the "
            "HPT worker replaces with verl_ext.loss.actor_loss.hpt_actor_loss (the teacher term would be "
            "dropped without a word)")
    actor = (config.get("actor_rollout_ref", None) or {}).get("actor", None) or {}
    loss_mode = str((actor.get("policy_loss", None) or {}).get("loss_mode", "vanilla"))
    if loss_mode != "vanilla":
        problems.append(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={loss_mode}: the HPT worker replaces verl's whole "
            "actor loss (hpt_actor_loss, configured by hpt.loss), so a verl policy loss would be ignored. "
            "Choose the HPT loss with hpt/loss=<preset> (the upge* loss modes are for plain verl runs).")
    if actor.get("use_prefix_grouper", False):
        problems.append(
            "actor_rollout_ref.actor.use_prefix_grouper=true: verl's prefix grouping balances whole uid groups and "
            "needs their count to be a multiple of the DP size, but HPT's merge changes the groups every step "
            "(a demonstration row under its own uid, padding rows with one uid each)")
    if actor.get("shuffle", False):
        problems.append(
            "actor_rollout_ref.actor.shuffle=true: the HPT loss normalises each arm by its token total per "
            "mini-batch, computed before the update (verl_ext.loss.batch_keys.annotate_arm_token_counts); "
            "shuffling regroups rows into other mini-batches afterwards. Use shuffle=false.")
    rollout = (config.get("actor_rollout_ref", None) or {}).get("rollout", None) or {}
    temperature = rollout.get("temperature", 1.0)
    if temperature is not None and float(temperature) <= 0:
        problems.append(
            f"actor_rollout_ref.rollout.temperature={temperature}: the training rollouts' temperature also divides "
            "the actor's logits in verl's log-prob pass (clamped to 1e-8 by its FSDP engine), so old log-probs, "
            "entropies and gradients blow up (grad norms near 1e9) instead of sampling greedily. For greedy "
            "training rollouts keep temperature=1.0 and set actor_rollout_ref.rollout.top_k=1; validation is "
            "greedy through actor_rollout_ref.rollout.val_kwargs (temperature 0 is fine there).")
    problems.extend(_lora_problems(config))
    from verl_ext.loss.fused_old_log_prob import fusion_problems  # its home; imports torch, so not at load

    problems.extend(fusion_problems(config))
    reward_model = (config.get("reward", None) or {}).get("reward_model", None) or {}
    if reward_model.get("enable", False) and not reward_model.get("enable_resource_pool", False):
        problems.append(
            "reward.reward_model.enable=true with reward.reward_model.enable_resource_pool=false: a colocated "
            "reward model scores the batch after verl's _balance_batch hook (RayPPOTrainer.fit's 'reward' "
            "phase), but HPT's gate needs every rollout's score (rm_scores) in that hook. Give the reward model "
            "its own resource pool (reward.reward_model.enable_resource_pool=true), which makes verl score "
            "each rollout inside the agent loop, before the hook.")
    return problems


def settings_warnings(config) -> list[str]:
    """Settings HPT runs as asked but that the user should know about (logged by ``main_hpt``)."""
    from verl_ext.loss.config import load_upge_config, split_dependence_warning

    hpt = config.get("hpt", None) or {}
    if hpt.get("loss", None) is None:
        return []
    actor = config.actor_rollout_ref.actor
    warning = split_dependence_warning(load_upge_config(hpt.loss), use_dynamic_bsz=bool(actor.get("use_dynamic_bsz")),
                                       entropy_coeff=float(actor.get("entropy_coeff", 0.0) or 0.0))
    return [warning] if warning else []


def _lora_problems(config) -> list[str]:
    """LoRA settings (``actor_rollout_ref.model.lora_rank`` > 0) that verl 0.9.1 runs silently wrong or
    that this recipe's rollouts cannot take, each with its fix."""
    arr = config.get("actor_rollout_ref", None) or {}
    model, rollout = arr.get("model", None) or {}, arr.get("rollout", None) or {}
    lora = model.get("lora", None) or {}
    fsdp_rank = int(model.get("lora_rank", 0) or 0)
    other_rank = int(lora.get("rank", 0) or 0)
    problems = []
    if fsdp_rank <= 0 and (other_rank > 0 or model.get("lora_adapter_path")):
        problems.append(
            "actor_rollout_ref.model.lora.rank or lora_adapter_path is set while actor_rollout_ref.model.lora_rank=0: "
            "verl's FSDP engine builds its adapter from lora_rank only, but its trainer then computes the reference "
            "as the actor with the adapter disabled and vLLM enables LoRA. Set actor_rollout_ref.model.lora_rank.")
    if fsdp_rank <= 0:
        return problems
    merge = bool(lora.get("merge", False))
    backend = str((rollout.get("checkpoint_engine", None) or {}).get("backend", "naive"))
    if backend != "naive" and not merge:
        problems.append(
            f"actor_rollout_ref.rollout.checkpoint_engine.backend={backend} with LoRA in adapter mode: in verl 0.9.1 "
            "that path pushes the base weights only and never the adapter (verl issue #7495), so the rollout keeps "
            "sampling from the initial policy. Use backend=naive (verl's default) or "
            "actor_rollout_ref.model.lora.merge=true.")
    # The hf rollout serves adapter mode by merging each pushed lora_A/lora_B pair into its Linear
    # (verl_ext.rollout.hf_server.merged_lora_weights); LoRA on bare nn.Parameters is no such pair.
    if str(rollout.get("name", "vllm")) == "hf" and not merge and model.get("target_parameters"):
        problems.append(
            f"actor_rollout_ref.model.target_parameters={model.get('target_parameters')} with "
            "actor_rollout_ref.rollout.name=hf and LoRA in adapter mode: the hf rollout merges adapters into "
            "Linear modules (lora_A/lora_B of target_modules) only, not LoRA on nn.Parameters. Set "
            "actor_rollout_ref.model.lora.merge=true (verl pushes the merged weights) or drop target_parameters.")
    return problems
