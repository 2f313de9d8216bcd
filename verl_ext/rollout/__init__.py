"""An ``hf`` rollout backend for verl 0.9.1: Hugging Face models served on CPU.

verl 0.9 generates only through rollout *servers* (``RolloutReplica`` + a ``BaseRollout``
server adapter inside the hybrid worker), and registers only vllm / sglang / trtllm, all of which
need their CUDA engines. This backend implements the same server protocol on plain PyTorch so
verl's unchanged ``RayPPOTrainer`` + agent loop + reward loop run on a CPU-only machine.
Select it with ``actor_rollout_ref.rollout.name=hf``; GPU runs keep ``rollout.name=vllm``.
"""
