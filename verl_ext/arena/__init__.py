"""The arena (scripts/arena.py): every post-training method through one trainer, compared fairly."""
