"""Per-row batch keys that the HPT actor loss reads, and the helper that fills the per-arm totals.

The trainer puts these tensor keys into ``batch.batch`` (DataProto) before ``update_actor``; verl
splits them with the rows into mini- and micro-batches, so the loss sees them per micro-batch.
All are shape (B,); all are optional.

    hpt_is_demo            float   the row's loss arm (``ARM_CODES``): 0.0 rollout row (``rollout``
                                   arm), 1.0 demonstration row (``demo`` arm: SFT in HPT), 2.0
                                   off-policy demonstration row (``demo_off`` arm, e.g. LUFFY's term
                                   for Table 5's Mix/ON and OFF/ON). Any other value is an error.
                                   ``hpt_is_demo > 0.5`` still means "a demonstration row".
    hpt_row_weight         float   multiplies the row's policy-loss terms (α/β soft-gate weights);
                                   0.0 marks a padding row, which is left out of everything
                                   (losses, entropy, KL, totals, metrics). Default 1.0.
    hpt_rollout_tokens_total   int  valid response tokens of live rollout rows in the global mini-batch
    hpt_demo_tokens_total      int  same for demo rows
    hpt_demo_off_tokens_total  int  same for demo_off rows
    hpt_rollout_seqs_total     int  live rollout rows with at least one valid token, same mini-batch
    hpt_demo_seqs_total        int  same for demo rows
    hpt_demo_off_seqs_total    int  same for demo_off rows

"live" = ``hpt_row_weight > 0``. The six ``*_total`` keys hold one value per global mini-batch
(all DP ranks together), repeated on every row of that mini-batch. They are the per-arm analogue
of verl's ``batch_num_tokens``/``global_batch_size``: verl computes those from ``loss_mask`` over
*all* rows of the mini-batch, so they cannot give the SFT arm a token-mean over demo tokens only,
nor leave padding rows out. :func:`annotate_arm_token_counts` fills them.

When they are missing the loss falls back to verl's totals, which is exact only if the method has
a single arm and no zero-weight rows; a multi-arm method whose aggregation needs totals raises.
"""

from __future__ import annotations

from typing import Optional

import torch

HPT_IS_DEMO = "hpt_is_demo"
HPT_ROW_WEIGHT = "hpt_row_weight"
# Value of hpt_is_demo per loss arm (the order of verl_ext.loss.config.ARM_NAMES).
ARM_CODES = {"rollout": 0, "demo": 1, "demo_off": 2}
ARM_TOTAL_KEYS = {
    "rollout": ("hpt_rollout_tokens_total", "hpt_rollout_seqs_total"),
    "demo": ("hpt_demo_tokens_total", "hpt_demo_seqs_total"),
    "demo_off": ("hpt_demo_off_tokens_total", "hpt_demo_off_seqs_total"),
}
ALL_TOTAL_KEYS = tuple(key for pair in ARM_TOTAL_KEYS.values() for key in pair)


def row_arm_codes(is_demo: torch.Tensor) -> torch.Tensor:
    """``hpt_is_demo`` (B,) as int64 arm codes (``ARM_CODES``); raises on any value but 0, 1, 2."""
    is_demo = is_demo.to(torch.float64)
    codes = is_demo.round().to(torch.int64)
    bad = (codes != is_demo) | (codes < 0) | (codes > max(ARM_CODES.values()))
    if bool(bad.any()):
        values = sorted({float(v) for v in is_demo[bad].tolist()})[:5]
        raise ValueError(
            f"{HPT_IS_DEMO} holds {values}: each row must be 0.0 (rollout), 1.0 (demo) or 2.0 (demo_off)"
        )
    return codes


def _tensordict(batch):
    # A DataProto keeps its tensors in .batch; a TensorDict is used as is.
    return batch.batch if hasattr(batch, "non_tensor_batch") else batch


def _row_token_counts(response_mask: torch.Tensor) -> torch.Tensor:
    if response_mask.is_nested:
        response_mask = response_mask.to_padded_tensor(0)
    return response_mask.to(torch.int64).sum(dim=-1)


def mini_batch_ids(num_rows: int, mini_batch_size: Optional[int], dp_size: int = 1) -> torch.Tensor:
    """Index of the global mini-batch each row falls in, following verl's V0 actor update.

    ``RayPPOTrainer._update_actor`` sends the batch to the DP ranks in ``dp_size`` contiguous chunks;
    each rank cuts its chunk into consecutive slices of ``mini_batch_size // dp_size`` rows
    (``tu.make_iterator`` without shuffling); global mini-batch k is slice k of every rank.
    ``mini_batch_size`` is the global number of rows, ``ppo_mini_batch_size * rollout.n`` as verl
    passes it; ``None`` means one mini-batch. Requires ``actor.shuffle=false`` (verl's default).
    """
    rows = torch.arange(num_rows)
    if mini_batch_size is None:
        return torch.zeros(num_rows, dtype=torch.int64)
    if num_rows % dp_size:
        raise ValueError(f"{num_rows} rows cannot be split evenly over dp_size={dp_size}")
    if mini_batch_size % dp_size:
        raise ValueError(f"mini_batch_size={mini_batch_size} is not divisible by dp_size={dp_size}")
    per_rank_rows, per_rank_mini = num_rows // dp_size, mini_batch_size // dp_size
    if per_rank_rows % per_rank_mini:
        raise ValueError(
            f"{per_rank_rows} rows per rank are not a multiple of the per-rank mini-batch {per_rank_mini}"
        )
    return (rows % per_rank_rows) // per_rank_mini


def annotate_arm_token_counts(batch, *, mini_batch_size: Optional[int] = None, dp_size: int = 1, dp_group=None):
    """Write the six ``hpt_*_total`` keys into ``batch`` (DataProto or TensorDict), in place.

    Reads ``response_mask`` (B,T) (padded or nested), ``hpt_is_demo`` and ``hpt_row_weight`` (both
    optional). Call it on the driver right before ``update_actor``, after every reordering
    (``_balance_batch``) and padding, with ``mini_batch_size=ppo_mini_batch_size * rollout.n`` and the
    actor's ``dp_size``. Inside a worker, on one rank's shard of one mini-batch, pass ``dp_group``
    instead: the totals are then summed over the group.

    Returns ``batch``.
    """
    td = _tensordict(batch)
    response_mask = td["response_mask"]
    num_rows = response_mask.shape[0]
    tokens = _row_token_counts(response_mask)
    live = torch.ones(num_rows, dtype=torch.bool)
    if HPT_ROW_WEIGHT in td.keys():
        live = td[HPT_ROW_WEIGHT].reshape(num_rows).cpu() > 0
    codes = torch.zeros(num_rows, dtype=torch.int64)
    if HPT_IS_DEMO in td.keys():
        codes = row_arm_codes(td[HPT_IS_DEMO].reshape(num_rows).cpu())
    tokens = tokens.cpu() * live
    seqs = (tokens > 0).to(torch.int64)

    if dp_group is not None and mini_batch_size is not None:
        raise ValueError("pass either dp_group (one mini-batch shard) or mini_batch_size (whole batch)")
    groups = mini_batch_ids(num_rows, mini_batch_size, dp_size)
    num_groups = int(groups.max().item()) + 1 if num_rows else 0
    # Columns: tokens, seqs of each arm in ARM_TOTAL_KEYS order (the order of ALL_TOTAL_KEYS).
    columns = []
    for name in ARM_TOTAL_KEYS:
        mine = codes == ARM_CODES[name]
        columns += [tokens * mine, seqs * mine]
    per_row = torch.stack(columns, dim=1)
    totals = torch.zeros(num_groups, len(ALL_TOTAL_KEYS), dtype=torch.int64).index_add_(0, groups, per_row)
    if dp_group is not None:
        import torch.distributed as dist

        device = td.device if td.device is not None else "cpu"
        reduced = totals.to(device)
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM, group=dp_group)
        totals = reduced.cpu()
    expanded = totals[groups]
    device = response_mask.device
    for col, key in enumerate(ALL_TOTAL_KEYS):
        td[key] = expanded[:, col].to(device)
    return batch
