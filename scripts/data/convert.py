#!/usr/bin/env python
"""Convert a dataset you have into HPT's row contract (README "Your own data").

The command line of :mod:`verl_ext.data.convert_cli` (``--help`` prints its usage).
"""

from verl_ext.data.convert_cli import main

if __name__ == "__main__":
    main()
