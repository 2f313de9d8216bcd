"""A test-only verifier that ignores the response: correct iff the question's dataset index is even.

Every rollout of a question gets the same score, so gate decisions are fixed by the data alone
(half the questions to SFT, half to RL) whatever the rollouts are. Used where two runs must see the
same batch, never to judge a model.
"""


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    ok = int((extra_info or {}).get("index", 1)) % 2 == 0
    return {"score": float(ok), "acc": float(ok)}
