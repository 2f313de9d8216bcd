#!/usr/bin/env python
"""Evaluate a model on the math benchmarks: the command line of ``verl_ext.eval.cli`` (its docstring is
this script's --help)."""

from verl_ext.eval.cli import main

if __name__ == "__main__":
    main()
