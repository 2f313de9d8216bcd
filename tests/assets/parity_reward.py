"""A test-only verifier with ~50% pass rate on a random model's output.

Correct iff the response's first character has an even code point. An untrained model samples
its first token close to uniformly, so questions land on both sides of a pass-rate gate: some
gated to SFT, some kept for RL. Used to exercise the trainer, never to judge a model.
"""


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    ok = bool(solution_str) and ord(solution_str[0]) % 2 == 0
    return {"score": float(ok), "acc": float(ok)}
