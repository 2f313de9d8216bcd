"""One base everywhere: the base's weight fingerprint (verl_ext.arena.fingerprint) is the same for the
same weights in any file layout and differs at one ulp; the runner refuses a finished run of another
base and the report a runs/ folder of two bases, while Arena I's unfingerprinted runs still rebuild."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.e2e.utils import REPO
from verl_ext.arena.fingerprint import UNKNOWN, base_fingerprint, check_one_base
from verl_ext.arena.methods import load_methods, run_path


def _tiny_model(seed: int = 0):
    """A randomly initialised Qwen2 of a few thousand parameters (tied embeddings)."""
    from transformers import Qwen2ForCausalLM

    from verl_ext.tiny import tiny_qwen2_config

    torch.manual_seed(seed)
    cfg = tiny_qwen2_config(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                            max_position_embeddings=64)
    return Qwen2ForCausalLM(cfg)


# ------------------------------------------------------------------ the fingerprint


def test_fingerprint_is_the_weights_not_the_files(tmp_path):
    """Saved twice, reloaded and resaved in shards, or written as a pytorch_model.bin: one fingerprint."""
    from safetensors.torch import load_file
    from transformers import Qwen2ForCausalLM

    model = _tiny_model()
    model.save_pretrained(tmp_path / "a")
    model.save_pretrained(tmp_path / "b")
    fp = base_fingerprint(tmp_path / "a")
    assert fp.startswith("sha256:") and len(fp) == len("sha256:") + 64
    assert base_fingerprint(tmp_path / "b") == fp

    Qwen2ForCausalLM.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert base_fingerprint(tmp_path / "sharded") == fp

    (tmp_path / "bin").mkdir()
    torch.save(load_file(tmp_path / "a" / "model.safetensors"), tmp_path / "bin" / "pytorch_model.bin")
    assert base_fingerprint(tmp_path / "bin") == fp
    # metadata is not weights
    (tmp_path / "a" / "config.json").write_text("{}")
    assert base_fingerprint(tmp_path / "a") == fp
    # another initialisation is another base
    _tiny_model(seed=1).save_pretrained(tmp_path / "other")
    assert base_fingerprint(tmp_path / "other") != fp


def test_fingerprint_changes_at_one_ulp(tmp_path):
    """A base rebuilt on another machine differs in the last bits of a few floats: that is another base."""
    from safetensors.torch import load_file, save_file

    model = _tiny_model()
    model.save_pretrained(tmp_path / "a")
    tensors = load_file(tmp_path / "a" / "model.safetensors")
    name = next(n for n in sorted(tensors) if tensors[n].dim() == 2)
    w = tensors[name].clone()
    w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(float("inf")))
    assert (w != tensors[name]).sum() == 1
    (tmp_path / "b").mkdir()
    save_file({**tensors, name: w}, tmp_path / "b" / "model.safetensors")
    assert base_fingerprint(tmp_path / "b") != base_fingerprint(tmp_path / "a")
    # the same bytes under another dtype or shape are other weights too
    (tmp_path / "c").mkdir()
    save_file({**tensors, name: tensors[name].reshape(-1)}, tmp_path / "c" / "model.safetensors")
    assert base_fingerprint(tmp_path / "c") != base_fingerprint(tmp_path / "a")


def test_fingerprint_of_a_folder_without_weights_names_it(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}: no weights to fingerprint"):
        base_fingerprint(tmp_path)


# ------------------------------------------------------------------ the runner and the report


def test_runner_refuses_a_finished_run_of_another_base(tmp_path):
    """A finished JSON is reused only from the same base's weights; one of another base (or one written
    before fingerprints) stops the arena naming the file and both fingerprints."""
    from verl_ext.arena.runner import ArenaContext, run_one

    base = tmp_path / "base"
    base.mkdir()
    out = tmp_path / "arena"
    path = run_path(out, "GRPO", 3e-5, 0)
    path.parent.mkdir(parents=True)
    kw = dict(cfg=None, common=[], methods={"GRPO": {}}, steps=100, questions_per_step=32, data=None, base=base,
              sets=None, out=out, quick=False, work_root=tmp_path / "work")
    done = {"method": "GRPO", "lr": 3e-5, "seed": 0, "steps": 100, "questions_per_step": 32, "quick": False,
            "base_settings": None, "base_fingerprint": "sha256:aaaa"}
    path.write_text(json.dumps(done))
    assert run_one(ArenaContext(base_fingerprint="sha256:aaaa", **kw), "GRPO", 3e-5, 0) == done
    with pytest.raises(SystemExit, match=r"lr3e-05_s0\.json was trained from another base: its base_fingerprint "
                                         r"is sha256:aaaa, the base .*base has sha256:bbbb"):
        run_one(ArenaContext(base_fingerprint="sha256:bbbb", **kw), "GRPO", 3e-5, 0)
    del done["base_fingerprint"]
    path.write_text(json.dumps(done))
    with pytest.raises(SystemExit, match=r"lr3e-05_s0\.json was trained from another base: its base_fingerprint "
                                         r"is missing \(written before fingerprints\).*sha256:bbbb"):
        run_one(ArenaContext(base_fingerprint="sha256:bbbb", **kw), "GRPO", 3e-5, 0)
    # a run trained now always records its base's fingerprint
    path.unlink()
    with pytest.raises(ValueError, match="no base_fingerprint"):
        run_one(ArenaContext(**kw), "GRPO", 3e-5, 0)


def _write_runs(out, fingerprints: dict[tuple[str, int], str | None]):
    for (method, seed), fp in fingerprints.items():
        p = run_path(out, method, 3e-5, seed)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"method": method, "lr": 3e-5, "seed": seed,
                                 **({"base_fingerprint": fp} if fp else {})}))


def test_report_refuses_runs_of_two_bases_naming_the_files(tmp_path):
    from verl_ext.arena.report import report

    _, methods = load_methods()
    out = tmp_path / "arena"
    _write_runs(out, {("GRPO", s): "sha256:aaaa" for s in range(5)} | {("LUFFY", 0): "sha256:bbbb"})
    with pytest.raises(SystemExit, match=r"runs come from 2 bases \(base_fingerprint\): sha256:aaaa: 5 runs "
                                         r"\(GRPO/lr3e-05_s0\.json, GRPO/lr3e-05_s1\.json, GRPO/lr3e-05_s2\.json, "
                                         r"and 2 more\); sha256:bbbb: 1 runs \(LUFFY/lr3e-05_s0\.json\)"):
        report(out, methods)
    # a run without a fingerprint is no proof of the same base
    out2 = tmp_path / "arena2"
    _write_runs(out2, {("GRPO", 0): "sha256:aaaa", ("GRPO", 1): None})
    with pytest.raises(SystemExit, match=r"2 bases.*unknown \(no base_fingerprint: written before fingerprints\): "
                                         r"1 runs \(GRPO/lr3e-05_s1\.json\)"):
        report(out2, methods)


def test_one_base_is_its_fingerprint():
    runs = [(REPO / f"r{i}.json", {"base_fingerprint": "sha256:aaaa"}) for i in range(3)]
    assert check_one_base(runs, REPO) == "sha256:aaaa"
    assert check_one_base([(REPO / "r.json", {})], REPO) == UNKNOWN


def test_arena_one_results_carry_no_fingerprint_and_rebuild_byte_for_byte(tmp_path):
    """Arena I's committed runs predate fingerprints: all 'unknown', so one base to the report, which
    rebuilds results/arena's table and statistics unchanged."""
    from verl_ext.arena.report import report

    committed = REPO / "results" / "arena"
    paths = sorted((committed / "runs").glob("*/*.json"))
    assert paths and check_one_base([(p, json.loads(p.read_text())) for p in paths], committed) == UNKNOWN
    shutil.copytree(committed / "runs", tmp_path / "runs")
    shutil.copy(committed / "arena.json", tmp_path / "arena.json")
    _, methods = load_methods()
    report(tmp_path, methods)
    for name in ("table.md", "stats.json", "lr_selection.json", "base_passk.md"):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name
