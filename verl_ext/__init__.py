"""hpt-verl extensions to verl 0.9.1.

They plug into verl through its own registries (platform, rollout replica, policy loss), its
actor's ``set_loss_fn`` and the trainer's overridable methods; nothing in verl is copied or patched
on disk. ``verl_ext.plugins`` is the single module that performs the registrations; it is imported
in every process (driver, TaskRunner, Ray workers) through ``VERL_USE_EXTERNAL_MODULES``.

Where verl has no public hook, the change is made at run time in ONE module,
:mod:`verl_ext.verl_patches` (a private rollout-adapter registry, the CPU process-group backend, the
optimizer-step guard around the FSDP engine's methods), which names the upstream behaviour, checks
the verl version and is pinned by ``tests/unit/test_verl_patches.py``. The one vLLM patch (CPU only) is
:mod:`verl_ext.vllm_cpu`.
"""

__version__ = "0.1.0"
