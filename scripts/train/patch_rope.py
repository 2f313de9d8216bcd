#!/usr/bin/env python3
"""Make a long-context copy of a Qwen2.5-Math checkpoint: rope_theta 40000, 16384 positions.

The command line of :mod:`verl_ext.models.rope` (``--help`` prints its usage).
"""

import sys

from verl_ext.models.rope import main

if __name__ == "__main__":
    sys.exit(main())
