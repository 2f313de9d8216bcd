"""README's "GPU runs" command block, run on CPU in a dry mode, so README and scripts cannot drift apart.

The block is parsed out of README.md and its lines run in order, as written, from the root of a
scratch copy of the repository (its folders are symlinks to this one), so the relative paths the
data commands write (``data/...``) are the paths the launch scripts then read (``$REPO_ROOT/data``).
Only what needs a hub or a GPU is stood in for:

- the Hugging Face hub: an offline hub cache (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``) holding a tiny
  snapshot of the model id the block names (config.json of Qwen2.5-Math's rope settings and the
  byte-level tokenizer of :mod:`verl_ext.tiny`), so ``--tokenizer <id>`` and ``MODEL=<id>`` resolve as
  they do for a user who downloaded the model; the dataset ids are replaced by small local files in
  OpenR1's shape (the one argument changed); the benchmarks read the shipped ``assets/benchmarks``
  plus a stand-in GPQA.json (not shipped) through ``HPT_BENCHMARK_DIR``;
- the GPU: ``gpu_smoke.sh --dry-run`` and ``DRY_RUN=1`` for the launch and evaluation scripts. The
  launch script's printed command is composed with Hydra against the recipe's config (as
  ``main_hpt`` composes it), every file it names must exist (after running the rope-patch command the
  dry run prints), and the start-up data check (``validate_data``) runs on the written files.
  ``eval_all.sh`` runs dry against a checkpoint placed where that training command saves.

A README line this file cannot run fails the test (teach it the line's dry form), so no command
escapes the check. The same is done for the data commands documented in the launch scripts' headers
(``scripts/train/_common.sh``, ``run_sft_then_grpo.sh``).
"""

from __future__ import annotations

from tests.helpers import REPO as TESTS_REPO  # noqa: E402

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

from tests.unit.recipe.test_configs import QWEN_MATH_CONFIG, compose_exp, fake_hub_cache

REPO = TESTS_REPO
MODEL_ID = "Qwen/Qwen2.5-Math-7B"
# Folders the scratch copy links to: everything the block's commands read.
LINKED = ("scripts", "recipe", "configs", "verl_ext", "assets")
# Settings of the scripts that must come from the commands themselves, not from the caller's shell.
SCRIPT_ENV = ("MODEL", "MODEL_DIR", "MODEL_NAME", "DATA_DIR", "CKPT_DIR", "TRAIN", "VAL", "VAL_DIR", "EXP_NAME",
              "PATCH_ROPE", "ROPE_MODEL", "NNODES", "GPUS_PER_NODE", "DRY_RUN", "RL_TRAIN", "SFT_MODEL", "RESULTS_DIR",
              "RUNS", "STEP", "BENCHMARKS", "HPT_BENCHMARK_DIR", "HF_HOME", "HF_HUB_CACHE", "PYTHON")
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}


def gpu_block_lines(readme: str) -> list[str]:
    """The command lines of the ```bash blocks in README's "## GPU runs" section (continuations joined)."""
    match = re.search(r"^## GPU runs.*?$(.*?)(?=^## )", readme, re.S | re.M)
    assert match, "README.md has no '## GPU runs' section"
    blocks = re.findall(r"^```bash\n(.*?)^```", match.group(1), re.S | re.M)
    assert blocks, "README's '## GPU runs' section has no ```bash block"
    return [line for block in blocks for line in _joined(block.splitlines())]


def header_data_commands(script: Path) -> list[str]:
    """The ``python3 scripts/data/...`` commands documented in a launch script's header comment."""
    lines = []
    for line in script.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    cmds, current = [], None
    for line in lines:
        if current is not None:
            current.append(line)
        elif line.startswith("python3 scripts/data/"):
            current = [line]
        if current is not None and not line.endswith("\\"):
            cmds.append(" ".join(part.rstrip("\\").strip() for part in current))
            current = None
    return cmds


def _joined(lines: list[str]) -> list[str]:
    out, current = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            out.append(current.strip())
        current = ""
    return out


def _split(line: str) -> tuple[dict, list[str]]:
    """(leading VAR=value assignments, the command's words), comments dropped."""
    words = shlex.split(line, comments=True)
    env = {}
    while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
        key, value = words.pop(0).split("=", 1)
        env[key] = value
    return env, words


def _openr1_rows(n: int, demonstrations: bool) -> list[dict]:
    """Rows in the shape of LUFFY's OpenR1 sets on the hub (system + user prompt, the R1 solution as
    ``target``); without ``target`` when the stand-in must not rely on it."""
    rows = []
    for i in range(n):
        row = {"data_source": "openr1", "ability": "math",
               "prompt": [{"role": "system", "content": "Your task is to follow a systematic reasoning process."},
                          {"role": "user", "content": f"What is {i} + {i + 1}?"}],
               "reward_model": {"style": "rule", "ground_truth": str(2 * i + 1)},
               "extra_info": {"index": i, "split": "default"}}
        if demonstrations:
            row["target"] = [{"role": "assistant",
                              "content": f"<think>\n{i} + {i + 1} = {2 * i + 1}.\n</think>\n\\boxed{{{2 * i + 1}}}"}]
        rows.append(row)
    return rows


class Scratch:
    """The scratch repository, the stand-ins, and the environment the commands run in."""

    def __init__(self, tmp: Path):
        from verl_ext.tiny import build_char_tokenizer

        self.root = tmp / "repo"
        self.root.mkdir()
        for name in LINKED:
            (self.root / name).symlink_to(REPO / name)
        self.home = tmp / "home"
        self.home.mkdir()
        cache = tmp / "hf-cache"
        snap = fake_hub_cache(cache, MODEL_ID, {"config.json": json.dumps(QWEN_MATH_CONFIG)})
        build_char_tokenizer(snap)  # the tokenizer files of the id, as a download would hold them
        sources = tmp / "hub-datasets"
        sources.mkdir()
        self.datasets = {}
        for hub_id, demos in (("Elliott/Openr1-Math-46k-8192", True), ("Elliott/Openr1-Math-48k-Complement", False)):
            path = sources / (hub_id.split("/")[1] + ".parquet")
            pd.DataFrame(_openr1_rows(6, demos)).to_parquet(path, index=False)
            self.datasets[hub_id] = str(path)
        bench = tmp / "benchmarks-src"  # the shipped sets, plus GPQA (downloaded by id otherwise)
        bench.mkdir()
        for f in (REPO / "assets" / "benchmarks").glob("*.json"):
            (bench / f.name).symlink_to(f)
        (bench / "GPQA.json").write_text(json.dumps([{"prompt": "Which? A) 1 B) 2 C) 3 D) 4", "answer": "B"}] * 2))
        venv_bin = str(Path(sys.executable).parent)  # `python`/`python3` of the commands: this venv
        self.env = {k: v for k, v in os.environ.items() if k not in SCRIPT_ENV}
        self.env.update(HOME=str(self.home), PATH=venv_bin + os.pathsep + os.environ.get("PATH", ""),
                        HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                        TRANSFORMERS_OFFLINE="1", HPT_BENCHMARK_DIR=str(bench))

    def run(self, words: list[str], env: dict, what: str) -> subprocess.CompletedProcess:
        words = [self.datasets.get(w, w) for w in words]  # a hub dataset id -> its local stand-in
        res = subprocess.run(["bash", "-c", shlex.join(words)], cwd=self.root, env={**self.env, **env},
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, (f"{what}: `{shlex.join(words)}` failed ({res.returncode}):\n"
                                     f"{res.stdout}\n{res.stderr}")
        return res


def _overrides(cmd: list[str]) -> tuple[str, list[str]]:
    ov = cmd[cmd.index("recipe.hpt.main_hpt") + 1:]
    assert ov and ov[0].startswith("+exp="), f"no +exp= selection first in {cmd}"
    return ov[0][len("+exp="):], ov[1:]


def _files(value) -> list[str]:
    value = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return [str(v) for v in (value if isinstance(value, list) else [value])]


def check_launch(scratch: Scratch, line: str, res: subprocess.CompletedProcess):
    """The dry run's training command: run the rope patch it announces, then compose the command as
    main_hpt does, check every path it names exists, and run the start-up config and data checks."""
    from transformers import AutoConfig, AutoTokenizer

    from verl_ext.checks.settings import unsupported_settings
    from verl_ext.hpt.config import HPTConfig
    from verl_ext.checks.data import validate_data

    for would in [x for x in res.stderr.splitlines() if x.startswith("# would run: ")]:
        scratch.run(shlex.split(would[len("# would run: "):]), {}, f"{line!r} (its rope patch)")
    cmds = [shlex.split(x) for x in res.stdout.splitlines() if "recipe.hpt.main_hpt" in x]
    assert cmds, f"{line!r} printed no training command with DRY_RUN=1:\n{res.stdout}\n{res.stderr}"
    configs = []
    for cmd in cmds:
        selection, extra = _overrides(cmd)
        cfg = compose_exp(selection, extra)
        HPTConfig.from_config(cfg)
        assert unsupported_settings(cfg) == []
        model = str(cfg.actor_rollout_ref.model.path)
        named = {"actor_rollout_ref.model.path": [model], "data.train_files": _files(cfg.data.train_files),
                 "data.val_files": _files(cfg.data.val_files)}
        for key, paths in named.items():
            for p in paths:
                assert os.path.isabs(p), f"{line!r}: {key}={p} is not absolute (Ray workers resolve it elsewhere)"
                assert os.path.exists(p), (f"{line!r}: {key}={p} does not exist: no command before it in the block "
                                           f"writes it (written: {sorted(_written(scratch))})")
        if "rope40k" in model:
            assert AutoConfig.from_pretrained(model).max_position_embeddings == 16384
        report = validate_data(cfg, AutoTokenizer.from_pretrained(model))
        assert report.files and all(f.kept > 0 for f in report.files), report.summary_line()
        configs.append(cfg)
    return configs


def _written(scratch: Scratch) -> list[str]:
    data = scratch.root / "data"
    return [str(p.relative_to(scratch.root)) for p in data.rglob("*.parquet")] if data.exists() else []


def check_eval_all(scratch: Scratch, words: list[str], env: dict, trained: list, monkeypatch):
    """eval_all.sh, dry, after a checkpoint appears where the training command saves: it must find the
    run by its experiment name, and its evaluate.py command must be one evaluate.py accepts."""
    assert trained, "eval_all.sh comes before any training command in the block"
    hf_dirs = []
    for cfg in trained:
        root = Path(cfg.trainer.default_local_dir)
        hf = root / "global_step_500" / "actor" / "huggingface"
        hf.mkdir(parents=True)
        (hf / "model.safetensors").write_bytes(b"")
        (root / "latest_checkpointed_iteration.txt").write_text("500")
        hf_dirs.append(str(hf))
    res = scratch.run(words, {**env, "DRY_RUN": "1"}, "eval_all.sh")
    evals = [shlex.split(x) for x in res.stdout.splitlines() if "scripts/eval/evaluate.py" in x]
    assert sorted(c[c.index("--model") + 1] for c in evals) == sorted(hf_dirs), (
        f"eval_all.sh did not evaluate the checkpoints the training commands save ({hf_dirs}): is each run's "
        f"experiment name in its REGISTRY, and its CKPT_DIR the launch scripts'?\n{res.stdout}")
    from verl_ext.eval import cli as evaluate

    seen = []
    monkeypatch.setattr(evaluate, "run_evaluation", seen.append)
    monkeypatch.setenv("HPT_BENCHMARK_DIR", scratch.env["HPT_BENCHMARK_DIR"])
    from verl_ext.data.benchmarks import get_benchmark, load_questions

    for cmd in evals:
        evaluate.main(cmd[cmd.index("scripts/eval/evaluate.py") + 1:])
        for key in seen[-1].benchmarks:
            assert load_questions(get_benchmark(key), limit=1), key


def test_readme_gpu_block_runs_dry(tmp_path, monkeypatch):
    scratch = Scratch(tmp_path)
    lines = gpu_block_lines((REPO / "README.md").read_text())
    trained, kinds = [], []
    for line in lines:
        env, words = _split(line)
        assert words, f"README GPU block: {line!r} is not a command"
        if words[0] == "pip":
            # Installing packages (CUDA torch, vLLM, flash-attn) is the one step with no dry form; this
            # venv is the installed project. flash-attn's own check is tests/unit/hpt/test_gpu_path.py's.
            kinds.append("pip")
            continue
        ops = SHELL_OPERATORS & set(words)
        assert not ops, f"README GPU block: {line!r} chains commands ({ops}); give each its own line"
        if words[:2] == ["bash", "scripts/gpu_smoke.sh"]:
            res = scratch.run(words + ["--dry-run"], env, line)  # prints the command, runs nothing
            cmd = shlex.split(res.stdout.split("GPU smoke command:", 1)[1].strip().splitlines()[0])
            selection, extra = _overrides(cmd)
            assert compose_exp(selection, extra).trainer.n_gpus_per_node == 1
            kinds.append("gpu_smoke")
        elif words[0] in ("python", "python3") and words[1].startswith("scripts/data/"):
            scratch.run(words, env, line)
            kinds.append("data")
        elif words[0] == "bash" and words[1].startswith("scripts/train/"):
            res = scratch.run(words, {**env, "DRY_RUN": "1"}, line)
            trained += check_launch(scratch, line, res)
            kinds.append("train")
        elif words[:2] == ["bash", "scripts/eval/eval_all.sh"]:
            check_eval_all(scratch, words, env, trained, monkeypatch)
            kinds.append("eval")
        else:
            pytest.fail(f"README GPU block: no dry form for {line!r}: teach {Path(__file__).name} to run it")
    assert {"data", "train", "eval"} <= set(kinds), f"the block lost a step: {kinds}"


def test_launch_script_headers_document_data_commands_that_feed_their_runs(tmp_path):
    """The data commands in the launch scripts' headers, run as documented (with $DATA_DIR and $MODEL
    set), write what the runs read: the HPT run (demonstrations, checked) and stage 2 of SFT -> GRPO
    (plain GRPO; its stand-in source has no ``target`` at all, and the start-up check must not ask)."""
    scratch = Scratch(tmp_path)
    data = tmp_path / "data"
    env = {"DATA_DIR": str(data), "MODEL": MODEL_ID}
    cmds = [c for s in ("_common.sh", "run_sft_then_grpo.sh")
            for c in header_data_commands(REPO / "scripts" / "train" / s)]
    assert len(cmds) >= 3, cmds
    for cmd in cmds:
        expanded = subprocess.run(["bash", "-c", f"printf '%s\\n' {cmd}"], env={**scratch.env, **env},
                                  capture_output=True, text=True, check=True).stdout.splitlines()
        scratch.run(expanded, env, f"header command {cmd!r}")
    res = scratch.run(["bash", "scripts/train/hpt_qwen7b.sh"], {**env, "DRY_RUN": "1"}, "hpt_qwen7b.sh")
    (hpt,) = check_launch(scratch, "hpt_qwen7b.sh", res)
    assert _needs_demonstrations(hpt)
    sft = tmp_path / "sft-hf"  # stage 1's output, given: stage 2 alone
    sft.mkdir()
    for f in (Path(str(hpt.actor_rollout_ref.model.path))).iterdir():
        (sft / f.name).symlink_to(f.resolve())
    res = scratch.run(["bash", "scripts/train/run_sft_then_grpo.sh"], {**env, "DRY_RUN": "1", "SFT_MODEL": str(sft)},
                      "run_sft_then_grpo.sh")
    (stage2,) = check_launch(scratch, "run_sft_then_grpo.sh", res)
    assert not _needs_demonstrations(stage2) and stage2.hpt.gate.strategy == "never"
    rl = pd.read_parquet(stage2.data.train_files)
    assert len(rl) == 6 and all("target" not in e for e in rl["extra_info"])


def _needs_demonstrations(cfg) -> bool:
    from verl_ext.hpt.config import HPTConfig

    return HPTConfig.from_config(cfg).needs_demonstrations
