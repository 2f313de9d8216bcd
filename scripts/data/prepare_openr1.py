#!/usr/bin/env python
"""OpenR1-Math-46k-8192 -> verl RL parquet with the demonstration in extra_info["target"].

The command line of :mod:`verl_ext.data.openr1_cli` (``--help`` prints its usage).
"""

from verl_ext.data.openr1_cli import main

if __name__ == "__main__":
    main()
