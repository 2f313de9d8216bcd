"""Evaluation: the one evaluation loop (``evaluator``: template -> sample -> grade), its sampling
backends (``generate``), pass@k/avg@k (``passk``), the benchmark driver (``runner``) and
paper-table rendering (``table``, ``plot``)."""
