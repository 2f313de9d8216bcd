"""CHAMP (the installed ``champ-dataset`` package) -> verl RL parquet with demonstrations.

    pip install -e ".[smollm2]"      # champ-dataset==1.0.0 (MIT): 270 competition problems
    python scripts/data/prepare_champ.py --out data/champ \
        [--tokenizer models/smollm2-135m-instruct] [--max-prompt-tokens 128] [--max-target-tokens 256] \
        [--length-policy filter|truncate|keep] [--val-size 32] [--mix-easy 64] [--seed 0]

Writes, in ``--out``:
* ``train.parquet``: CHAMP training problems (+ ``--mix-easy N`` generated arithmetic problems);
* ``val.parquet``: the held-out CHAMP slice (never in train), for ``data.val_files``;
* ``benchmarks/CHAMP.json``: the same held-out slice in the evaluation script's benchmark format
  (``[{"prompt": question, "answer": ground truth}]``), for ``scripts/eval/evaluate.py``;
* ``report.json``: the counts printed at the end.

Row format (as ``scripts/data/prepare_openr1.py``): ``data_source``, ``prompt`` (chat list),
``ability``, ``reward_model {style: rule, ground_truth}``, ``extra_info {index, split, target,
source, problem_id, category}`` with the demonstration in ``extra_info["target"]``.

CHAMP problem -> row:
* prompt: the paper's evaluation prompt (``simplerl``: the "reason step by step ... \\boxed{}"
  system message + the problem), identical to what ``evaluate.py`` renders by default, so the
  held-out accuracy is measured on the prompt the model is trained on;
* demonstration: the reference solution's steps, one per line, then
  ``The final answer is \\boxed{<answer>}.``;
* ground truth: the final answer. CHAMP marks the mathematical part of an answer with ``@@``
  (``"@@C(10, 5)@@, or equivalently @@252@@"``, ``"The limit ... is @@2/3@@"``); the marked part is
  used, and for "A, or equivalently B" the last form (the explicit one) is boxed. Unmarked answers
  are used as they are when they are a number/expression or Yes/No, with a few fixed phrasings
  unwrapped ("3 is the only possible value", "100 (i.e., all values)", "98 values"), and number lists
  ("376 and 625") written as "376, 625". Answers that
  are free text ("No integer solutions", "The sequence is not periodic") or compound ("x(n)<y(n-1)
  for all n>=3") cannot be graded by a boxed-answer verifier: those problems are skipped and counted
  by reason. ``--strict`` turns every skip into an error instead.
* every demonstration is checked with the project's reward: its boxed answer must grade correct
  against the ground truth (else the problem is skipped and counted).

Held-out slice: ``--val-size`` gradeable problems, drawn per category (round-robin over the 5
categories in a seeded order) before any length filtering, so it does not depend on the tokenizer.
Length handling (needs ``--tokenizer``): training prompts longer than ``--max-prompt-tokens``
(chat template applied) are dropped; demonstrations (+1 for the EOS the trainer appends) longer
than ``--max-target-tokens`` are dropped (``filter``, the default: every kept demonstration still
ends in its boxed answer), cut (``truncate``) or kept (``keep``). Held-out prompts that exceed the
prompt limit are dropped from ``val.parquet`` (verl would reject them) but kept in CHAMP.json.

``--mix-easy N`` adds N generated arithmetic problems (``verl_ext.tasks.arithmetic``, levels 1
and 2, with step-by-step demonstrations) so that a 135M model passes some questions and both arms of
HPT's gate fire. Their prompt is the same system message, then one worked example turn
(``Compute 3+4.`` -> ``3+4=7. \\boxed{7}``) before the question. In a check at temperature 1,
SmolLM2-135M answered 0 of 64 such samples correctly with the system message alone (it answers in
prose, without a box), and 10 of 48 (21%) with the example turn (half of them boxed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from verl_ext.data.prompts import SIMPLERL_SYSTEM, build_messages

DATA_SOURCE = "champ"
EASY_SOURCE = "hpt_arith"
PROMPT_STYLE = "simplerl"
EASY_LEVELS = (1, 2)
EASY_EXAMPLE = ("Compute 3+4.", "3+4=7. \\boxed{7}")
DEFAULT_TOKENIZER = "models/smollm2-135m-instruct"
LENGTH_POLICIES = ("filter", "truncate", "keep")


class BadProblemError(ValueError):
    """A CHAMP problem that cannot become a gradeable row (message names it and the reason)."""

    def __init__(self, problem_id: str, reason: str):
        super().__init__(f"{problem_id}: {reason}")
        self.problem_id, self.reason = problem_id, reason


# --- answers --------------------------------------------------------------------------------
_MARK = re.compile(r"@@(.*?)@@")
_ALTERNATIVES = re.compile(r"or (?:equivalently|an equivalent form)", re.I)
_UNWRAP = [
    re.compile(r"^(.+?) is the only possible value$"),
    re.compile(r"^The only possible value for the limit is (.+)$"),
    re.compile(r"^The limit exists and is equal to (.+)$"),
    re.compile(r"^(-?\d+) \([^)]*\)$"),
    re.compile(r"^(\d+) (?:values|inequalities|roots|pairs)$"),
]
# "376 and 625", "1, 4 and 9": several numbers -> "376, 625" (graded as that exact list).
_NUMBER_LIST = re.compile(r"^-?\d+(?:(?:, | and |, and )-?\d+)+$")
_YES_NO = {"yes": "Yes", "no": "No"}
# A gradeable expression: digits, single-letter names and function names, operators, brackets.
_EXPR = re.compile(r"^[0-9A-Za-z_ ^*/+\-=().,!\[\]{}±√≥≤<>']+$")
_WORD = re.compile(r"[A-Za-z]{2,}")
_MATH_WORDS = {"sqrt", "floor", "ceil", "sum", "log", "ln", "sin", "cos", "tan", "exp", "mod", "gcd", "lcm", "max",
               "min"}


def champ_answer(problem_id: str, raw_answer: str) -> tuple[str, list[str]]:
    """(boxed answer for the demonstration, all acceptable forms) or BadProblemError."""
    if not isinstance(raw_answer, str) or not raw_answer.strip():
        raise BadProblemError(problem_id, "empty answer")
    spans = [s.strip() for s in _MARK.findall(raw_answer)]
    if spans:
        if len(spans) == 1:
            forms = spans
        elif _ALTERNATIVES.search(raw_answer) and len(spans) == 2:
            forms = spans
        else:
            raise BadProblemError(problem_id, "compound answer")
        return forms[-1], forms
    text = raw_answer.strip()
    for pat in _UNWRAP:
        m = pat.match(text)
        if m:
            text = m.group(1).strip()
            break
    if _NUMBER_LIST.match(text):
        text = ", ".join(re.findall(r"-?\d+", text))
        return text, [text]
    if text.lower() in _YES_NO:
        return _YES_NO[text.lower()], [_YES_NO[text.lower()]]
    words = {w.lower() for w in _WORD.findall(text)}
    if _EXPR.match(text) and not (words - _MATH_WORDS - {"c"}):
        return text, [text]
    raise BadProblemError(problem_id, "free-text answer")


def champ_demonstration(steps: list[str], boxed: str) -> str:
    body = "\n".join(s.strip() for s in steps if s and s.strip())
    return (body + "\n" if body else "") + f"The final answer is \\boxed{{{boxed}}}."


@dataclass
class ChampItem:
    problem_id: str
    category: str
    question: str
    demonstration: str
    answer: str  # the boxed form: the ground truth of the row
    forms: list[str]


def load_champ(version: str = "v0") -> list:
    try:
        import champ_dataset
    except ImportError as e:
        raise SystemExit('error: champ-dataset is not installed: pip install champ-dataset==1.0.0 '
                         '(or pip install -e ".[smollm2]")') from e
    ds = champ_dataset.load(version)
    ds.sort()
    return list(ds.problems.values())


def parse_problem(p) -> ChampItem:
    pid = getattr(p, "identifier", None) or "<no id>"
    if not isinstance(getattr(p, "text", None), str) or not p.text.strip():
        raise BadProblemError(pid, "empty problem text")
    steps = [s.text for s in (p.solution.steps if p.solution and p.solution.steps else [])]
    if not steps:
        raise BadProblemError(pid, "no reference solution")
    boxed, forms = champ_answer(pid, p.raw_answer)
    return ChampItem(pid, p.category or "", p.text.strip(), champ_demonstration(steps, boxed), boxed, forms)


# --- rows -----------------------------------------------------------------------------------
def champ_row(item: ChampItem, index: int, split: str) -> dict:
    return {
        "data_source": DATA_SOURCE,
        "prompt": build_messages(item.question, PROMPT_STYLE),
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": item.answer},
        "extra_info": {"index": index, "split": split, "target": item.demonstration, "source": "champ",
                       "problem_id": item.problem_id, "category": item.category},
    }


def easy_messages(question: str) -> list[dict]:
    q, a = EASY_EXAMPLE
    return [{"role": "system", "content": SIMPLERL_SYSTEM}, {"role": "user", "content": q},
            {"role": "assistant", "content": a}, {"role": "user", "content": question}]


def easy_rows(n: int, seed: int, start_index: int) -> list[dict]:
    from verl_ext.tasks.arithmetic import generate_rows

    out = []
    for j, r in enumerate(generate_rows(n, EASY_LEVELS, seed=seed, split="train", exclude={"3+4"})):
        q = r["prompt"][-1]["content"]
        out.append({
            "data_source": EASY_SOURCE,
            "prompt": easy_messages(q),
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": r["reward_model"]["ground_truth"]},
            "extra_info": {"index": start_index + j, "split": "train", "target": r["extra_info"]["target"],
                           "source": "arith", "problem_id": f"arith-{r['extra_info']['question']}",
                           "category": f"arith-level-{r['extra_info']['level']}"},
        })
    return out


def prompt_tokens(tokenizer, messages: list[dict]) -> int:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def held_out_split(items: list[ChampItem], val_size: int, seed: int) -> tuple[list[ChampItem], list[ChampItem]]:
    """(train, val): val takes problems round-robin over the categories, each in a seeded order."""
    rng = random.Random(seed)
    by_cat: dict[str, list[ChampItem]] = defaultdict(list)
    for it in items:
        by_cat[it.category].append(it)
    queues = []
    for cat in sorted(by_cat):
        q = list(by_cat[cat])
        rng.shuffle(q)
        queues.append(q)
    val: list[ChampItem] = []
    while len(val) < min(val_size, len(items)):
        for q in queues:
            if q and len(val) < val_size:
                val.append(q.pop())
    val_ids = {it.problem_id for it in val}
    return [it for it in items if it.problem_id not in val_ids], val


@dataclass
class Report:
    champ_total: int = 0
    skipped: Counter = field(default_factory=Counter)
    gradeable: int = 0
    val_held_out: int = 0
    val_rows: int = 0
    val_dropped_long_prompt: int = 0
    train_champ_candidates: int = 0
    train_dropped_long_prompt: int = 0
    train_dropped_long_target: int = 0
    train_truncated_target: int = 0
    train_long_target_kept: int = 0
    train_champ_rows: int = 0
    train_easy_rows: int = 0
    train_rows: int = 0
    max_prompt_tokens_seen: int = 0
    max_target_tokens_seen: int = 0

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d["skipped"] = dict(self.skipped)
        return d


def verify_demonstrations(items: list[ChampItem]) -> list[tuple[ChampItem, str]]:
    """Problems whose demonstration does not grade correct against its own ground truth."""
    from verl_ext.reward import compute_score

    bad = []
    for it in items:
        res = compute_score(DATA_SOURCE, it.demonstration, it.answer)
        if res["score"] != 1.0:
            bad.append((it, f"demonstration does not verify (pred {res['pred']!r})"))
    return bad


def prepare(out: str, tokenizer=None, max_prompt_tokens: int | None = 128, max_target_tokens: int | None = 256,
            length_policy: str = "filter", val_size: int = 32, mix_easy: int = 0, seed: int = 0,
            strict: bool = False, verify: bool = True, version: str = "v0") -> dict:
    if length_policy not in LENGTH_POLICIES:
        raise ValueError(f"length_policy must be one of {LENGTH_POLICIES}")
    if (max_prompt_tokens or max_target_tokens) and tokenizer is None:
        raise ValueError("a tokenizer is required for token limits (pass 0 to disable them)")
    rep = Report()
    problems = load_champ(version)
    rep.champ_total = len(problems)

    items: list[ChampItem] = []
    for p in problems:
        try:
            items.append(parse_problem(p))
        except BadProblemError as e:
            if strict:
                raise
            rep.skipped[e.reason] += 1
    if verify:
        bad = verify_demonstrations(items)
        if bad and strict:
            raise BadProblemError(bad[0][0].problem_id, bad[0][1])
        for it, _ in bad:
            rep.skipped["demonstration does not verify"] += 1
        bad_ids = {it.problem_id for it, _ in bad}
        items = [it for it in items if it.problem_id not in bad_ids]
    rep.gradeable = len(items)

    train_items, val_items = held_out_split(items, val_size, seed)
    rep.val_held_out = len(val_items)
    rep.train_champ_candidates = len(train_items)

    val_rows = []
    for it in val_items:
        row = champ_row(it, len(val_rows), "test")
        if max_prompt_tokens and tokenizer is not None:
            n = prompt_tokens(tokenizer, row["prompt"])
            if n > max_prompt_tokens:
                rep.val_dropped_long_prompt += 1
                continue
        val_rows.append(row)
    rep.val_rows = len(val_rows)

    train_rows = []
    for it in train_items:
        row = champ_row(it, len(train_rows), "train")
        if tokenizer is not None:
            n_p = prompt_tokens(tokenizer, row["prompt"])
            rep.max_prompt_tokens_seen = max(rep.max_prompt_tokens_seen, n_p)
            if max_prompt_tokens and n_p > max_prompt_tokens:
                rep.train_dropped_long_prompt += 1
                continue
            ids = tokenizer(it.demonstration, add_special_tokens=False)["input_ids"]
            n_t = len(ids) + 1  # + the EOS the trainer appends
            rep.max_target_tokens_seen = max(rep.max_target_tokens_seen, n_t)
            if max_target_tokens and n_t > max_target_tokens:
                if length_policy == "filter":
                    rep.train_dropped_long_target += 1
                    continue
                if length_policy == "truncate":
                    row["extra_info"]["target"] = tokenizer.decode(ids[: max_target_tokens - 1])
                    rep.train_truncated_target += 1
                else:
                    rep.train_long_target_kept += 1
        train_rows.append(row)
    rep.train_champ_rows = len(train_rows)
    if mix_easy:
        easy = easy_rows(mix_easy, seed=seed + 1, start_index=len(train_rows))
        if tokenizer is not None and max_prompt_tokens:
            longest = max(prompt_tokens(tokenizer, r["prompt"]) for r in easy)
            if longest > max_prompt_tokens:
                raise ValueError(f"easy prompts need {longest} tokens > --max-prompt-tokens {max_prompt_tokens}")
        train_rows += easy
        rep.train_easy_rows = len(easy)
        random.Random(seed).shuffle(train_rows)
        for i, r in enumerate(train_rows):
            r["extra_info"]["index"] = i
    rep.train_rows = len(train_rows)
    if not train_rows or not val_rows:
        raise SystemExit(f"error: nothing left to write (train {len(train_rows)}, val {len(val_rows)}); "
                         "loosen --max-prompt-tokens/--max-target-tokens")

    import pandas as pd

    os.makedirs(os.path.join(out, "benchmarks"), exist_ok=True)
    pd.DataFrame(train_rows).to_parquet(os.path.join(out, "train.parquet"), index=False)
    pd.DataFrame(val_rows).to_parquet(os.path.join(out, "val.parquet"), index=False)
    bench = [{"prompt": it.question, "answer": it.answer, "id": it.problem_id, "category": it.category,
              "accepted_forms": it.forms} for it in val_items]
    with open(os.path.join(out, "benchmarks", "CHAMP.json"), "w") as f:
        json.dump(bench, f, indent=1, ensure_ascii=False)
    report = rep.as_dict()
    report["settings"] = dict(max_prompt_tokens=max_prompt_tokens, max_target_tokens=max_target_tokens,
                              length_policy=length_policy, val_size=val_size, mix_easy=mix_easy, seed=seed,
                              champ_version=version)
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    return report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/champ", help="output folder (default: %(default)s)")
    ap.add_argument("--tokenizer", default=None,
                    help=f"tokenizer folder for the length limits (default: {DEFAULT_TOKENIZER} if present)")
    ap.add_argument("--max-prompt-tokens", type=int, default=128, help="0 disables")
    ap.add_argument("--max-target-tokens", type=int, default=256, help="demonstration tokens + EOS; 0 disables")
    ap.add_argument("--length-policy", default="filter", choices=LENGTH_POLICIES)
    ap.add_argument("--val-size", type=int, default=32, help="held-out CHAMP problems")
    ap.add_argument("--mix-easy", type=int, default=0, help="add N generated arithmetic problems (levels 1-2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strict", action="store_true", help="fail on the first ungradeable problem instead of skipping")
    ap.add_argument("--no-verify", action="store_true", help="skip grading each demonstration against its answer")
    args = ap.parse_args(argv)

    tokenizer = None
    tok_path = args.tokenizer or (DEFAULT_TOKENIZER if os.path.isdir(DEFAULT_TOKENIZER) else None)
    if args.max_prompt_tokens or args.max_target_tokens:
        if tok_path is None:
            ap.error(f"--tokenizer is required for token limits ({DEFAULT_TOKENIZER} not found; run "
                     "scripts/models/materialize_smollm2.py, or pass --max-prompt-tokens 0 --max-target-tokens 0)")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tok_path)
    try:
        report = prepare(args.out, tokenizer, args.max_prompt_tokens or None, args.max_target_tokens or None,
                         args.length_policy, args.val_size, args.mix_easy, args.seed, args.strict,
                         not args.no_verify)
    except BadProblemError as e:
        print(f"error: {e} (drop --strict to skip such problems)", file=sys.stderr)
        raise SystemExit(2)
    for k, v in report.items():
        if k != "settings":
            print(f"{k:28s} {v}")
    print(f"wrote {report['train_rows']} train rows ({report['train_champ_rows']} CHAMP + {report['train_easy_rows']} "
          f"easy), {report['val_rows']} val rows and {report['val_held_out']} held-out problems "
          f"(benchmarks/CHAMP.json) -> {args.out}")
    return report

