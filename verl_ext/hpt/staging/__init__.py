"""Staged generation (``hpt.stages``): a question's n rollouts drawn in stages, with a decision after each.

- :mod:`.stages`: the stage settings and the pure driver (:func:`~.stages.run_stages`);
- :mod:`.manager`: the rollout manager wrapping verl's, one generation call per stage;
- :mod:`.prefix`: the demonstration prefixes of ``continue_with_prefix`` stages;
- :mod:`.prefix_agent_loop`: verl's single-turn agent loop continuing such a prefix (registered as
  ``hpt_prefix_agent``).

A run without ``hpt.stages`` uses none of them.
"""
