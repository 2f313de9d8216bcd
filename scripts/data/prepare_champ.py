#!/usr/bin/env python
"""CHAMP (the installed ``champ-dataset`` package) -> verl RL parquet with demonstrations.

The command line of :mod:`verl_ext.data.champ` (``--help`` prints its usage).
"""

from verl_ext.data.champ import main

if __name__ == "__main__":
    main()
