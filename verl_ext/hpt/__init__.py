"""HPT's per-question gate and the demonstration/rollout batch merge (paper Algorithm 1)."""
