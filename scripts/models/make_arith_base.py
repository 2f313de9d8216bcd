"""Make the embedded default's base model: the tiny Qwen2, warmed up on easy arithmetic.

The command line of :mod:`verl_ext.tasks.arith_base` (``--help`` prints its usage).
"""

from verl_ext.tasks.arith_base import main

if __name__ == "__main__":
    main()
