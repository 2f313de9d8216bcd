"""The README's main job: HPT on CPU on the embedded arithmetic task or on your files.

The command line of :mod:`verl_ext.tasks.main_job` (``--help`` prints its usage).
"""

from verl_ext.tasks.main_job import main

if __name__ == "__main__":
    main()
