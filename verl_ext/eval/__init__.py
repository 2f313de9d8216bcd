"""Evaluation helpers: pass@k/avg@k (``passk``), generation backends (``generate``), the
evaluation driver (``runner``) and paper-table rendering (``table``, ``plot``)."""
