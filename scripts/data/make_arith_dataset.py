"""Write the synthetic arithmetic task as verl RL parquet files (train / held-out test).

The command line of :mod:`verl_ext.tasks.arith_dataset` (``--help`` prints its usage).
"""

from verl_ext.tasks.arith_dataset import main

if __name__ == "__main__":
    main()
