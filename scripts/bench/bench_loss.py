"""Forward+backward time and peak memory of the UPGE loss against verl's vanilla PPO loss.

The command line of :mod:`verl_ext.loss.bench` (``--help`` prints its usage).
"""

from verl_ext.loss.bench import main

if __name__ == "__main__":
    main()
