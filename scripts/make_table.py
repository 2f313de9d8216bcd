#!/usr/bin/env python
"""Evaluation summaries -> the paper's tables and a pass@k plot: the command line of
``verl_ext.eval.make_table`` (its docstring is this script's --help)."""

from verl_ext.eval.make_table import main

if __name__ == "__main__":
    main()
