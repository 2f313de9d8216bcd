"""A test-only verifier with all three outcomes a gate can see, by dataset index.

index % 3 == 0: every rollout correct; == 1: none correct; == 2: correct iff the response's first
character has an even code point (~50 % on a random model, so mostly mixed groups). Used to exercise
the trainer's routing (all-correct / none-correct / mixed), never to judge a model.
"""


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    kind = int((extra_info or {}).get("index", 1)) % 3
    if kind == 2:
        ok = bool(solution_str) and ord(solution_str[0]) % 2 == 0
    else:
        ok = kind == 0
    return {"score": float(ok), "acc": float(ok)}
