#!/usr/bin/env python
"""Benchmark JSON files -> verl validation parquet files (one per benchmark).

The command line of :mod:`verl_ext.data.benchmarks_cli` (``--help`` prints its usage).
"""

from verl_ext.data.benchmarks_cli import main

if __name__ == "__main__":
    main()
