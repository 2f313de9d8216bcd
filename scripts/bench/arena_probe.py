"""Probe a candidate arena base before paying for the arena: the command line of
``verl_ext.arena.probe`` (its docstring is this script's --help)."""

from verl_ext.arena.probe import main

if __name__ == "__main__":
    main()
