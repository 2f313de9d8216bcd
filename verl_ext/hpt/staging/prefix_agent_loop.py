"""``hpt_prefix_agent``: verl's single-turn agent loop, continuing a given response prefix.

Staged generation's ``continue_with_prefix`` stages (:mod:`verl_ext.hpt.staging.stages`) send a question's rows
here with a per-row ``hpt_prefix_ids`` (the first tokens of its demonstration, laid out after the prompt
as a demonstration row's response, :mod:`verl_ext.hpt.staging.prefix`). The row's prompt is built as verl's
``SingleTurnAgentLoop`` builds it; the server then generates from prompt + prefix with ``max_tokens``
reduced by the prefix length, and the row's response is prefix + generated tokens:

- ``response_mask`` 1 on every response token (the prefix is part of the response the reward and
  the loss see; which tokens are prefix is ``extra_fields["hpt_prefix_len"]``, the staged manager's
  ``hpt_prefix_mask``);
- ``response_logprobs`` (when the request asks for them: ``rollout.calculate_log_probs``) 0.0 on the
  prefix tokens: they were not sampled;
- a prefix that already ends with EOS (the whole demonstration, fraction 1) or fills the response
  length is returned without a server call.

The reward, computed by verl's agent loop on the decoded response, therefore scores prefix +
continuation. A row without a prefix (``hpt_prefix_ids`` missing, None or empty) is exactly verl's
single-turn loop. Text-only, like the ``hf`` rollout.

Registered with verl's public ``register`` decorator when this module is imported
(:mod:`verl_ext.plugins` imports it in every process).
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
from verl.utils.profiler import simple_timer

from verl_ext.hpt.staging.stages import PREFIX_AGENT, PREFIX_IDS_KEY, PREFIX_LEN_KEY


@register(PREFIX_AGENT)
class PrefixAgentLoop(SingleTurnAgentLoop):
    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs) -> AgentLoopOutput:
        prefix = kwargs.get(PREFIX_IDS_KEY)
        prefix = [int(t) for t in prefix] if prefix is not None else []
        if not prefix:
            output = await super().run(sampling_params, priority=priority, **kwargs)
            output.extra_fields[PREFIX_LEN_KEY] = 0
            return output
        priority = int(priority)
        messages = list(kwargs["raw_prompt"])
        multi_modal_data = await self.process_multi_modal_info(messages)
        if multi_modal_data.get("images") or multi_modal_data.get("videos") or multi_modal_data.get("audios"):
            raise NotImplementedError(f"{PREFIX_AGENT}: demonstration prefixes are text-only")
        prompt_ids = await self.ct_build_initial_tokens(messages)
        prefix = prefix[: self.response_length]
        want_logprobs = bool(sampling_params.get("logprobs"))
        eos = self.tokenizer.eos_token_id
        room = self.response_length - len(prefix)
        metrics: dict[str, Any] = {}
        generated, gen_logprobs, extra = [], [], {}
        if room > 0 and prefix[-1] != eos:
            params = dict(sampling_params)
            params["max_tokens"] = min(int(params.get("max_tokens") or room), room)
            with simple_timer("generate_sequences", metrics):
                request_id = (f"det-{priority}" if getattr(self.rollout_config, "full_determinism", False)
                              else uuid4().hex)
                out = await self.server_manager.generate(request_id=request_id, prompt_ids=prompt_ids + prefix,
                                                         sampling_params=params, priority=priority)
            generated = list(out.token_ids)[:room]
            gen_logprobs = list(out.log_probs or [])[: len(generated)]
            extra = dict(out.extra_fields or {})
            metrics["num_preempted"] = out.num_preempted if out.num_preempted is not None else -1
        else:
            metrics["num_preempted"] = -1
        logprobs = None
        if want_logprobs:
            logprobs = [0.0] * len(prefix) + (gen_logprobs if len(gen_logprobs) == len(generated)
                                               else [0.0] * len(generated))
        merge_result, response_mask, response_logprobs = await self.ct_merge_assistant_token(
            prompt_ids, prefix + generated, [], [] if logprobs is not None else None, assistant_logprobs=logprobs)
        response_ids = merge_result.token_ids[-len(response_mask):] if response_mask else []
        prompt_ids = merge_result.token_ids[: len(merge_result.token_ids) - len(response_mask)]
        output = AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids[: self.response_length],
            response_mask=response_mask[: self.response_length],
            response_logprobs=response_logprobs[: self.response_length] if response_logprobs else None,
            multi_modal_data=multi_modal_data,
            num_turns=2,
            metrics=metrics,
            extra_fields=extra,
        )
        output.extra_fields.update({"turn_scores": [], "tool_rewards": [], PREFIX_LEN_KEY: len(prefix)})
        return output
