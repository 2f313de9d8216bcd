"""Dataset preparation: prompt formats (``prompts``), the evaluation benchmarks
(``benchmarks``) and the OpenR1-Math demonstration set (``openr1``) as verl parquet rows."""
