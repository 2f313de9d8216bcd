"""Evaluation: the one evaluation loop (``evaluator``: template -> sample -> grade), its sampling
backends (``generate``), pass@k/avg@k (``passk``), the benchmark driver (``runner``) and
paper-table rendering (``table``, ``plot``); the command lines of ``scripts/eval/evaluate.py`` (``cli``)
and ``scripts/make_table.py`` (``make_table``)."""
