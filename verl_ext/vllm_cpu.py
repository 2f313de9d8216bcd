"""vLLM general plugin: keep linear weights on vLLM's CPU backend so verl can push new ones.

This is the project's one patch of vLLM. It exists only so that verl's own vLLM rollout (the path
every GPU user runs) can be exercised on a CPU machine; on any other platform it does nothing.

Upstream behaviour (vLLM 0.24.0, ``vllm/model_executor/layers/linear.py``):
``UnquantizedLinearMethod.process_weights_after_loading`` calls, on the CPU platform,
``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``: it builds a packed (oneDNN) copy of
the weight for its GEMM and replaces ``layer.weight`` by an empty ``Parameter``. That is fine for a
server that loads its weights once. verl's hybrid engine instead pushes the actor's weights into
the running engine after every update (``load_weights`` on the existing parameters, then
``process_weights_after_loading`` again): with the weight gone the first push fails ("Attempted to
load weight ... into parameter (torch.Size([0]))" / "'Parameter' object has no attribute
'weight_loader'"), then the shared weight buffer cannot be closed and the run hangs.

The patch calls the same dispatch with ``remove_weight=False`` (what vLLM already does for its
embedding layers), so the weight stays loadable and each push is followed by a fresh repack from
it. Cost: each linear weight is held twice in host memory. Nothing else changes.

Registration: vLLM loads every function of the ``vllm.general_plugins`` entry-point group in each
of its processes (``vllm.plugins.load_general_plugins``); ``setup.py`` registers :func:`register`
there. Guards: only on vLLM's CPU platform, only for the vLLM versions listed in
``TESTED_VLLM_VERSIONS`` (another version gets a warning and the patch anyway, since without it the
weight push cannot work), and only while upstream still has the method this replaces;
``tests/e2e/test_vllm_cpu.py`` fails when that contract changes.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

TESTED_VLLM_VERSIONS = ("0.24.0",)
_PATCHED_FLAG = "_hpt_keeps_cpu_linear_weight"


def _keep_weight_process_weights_after_loading(self, layer):
    """``UnquantizedLinearMethod.process_weights_after_loading`` minus the weight removal."""
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    dispatch_cpu_unquantized_gemm(layer, remove_weight=False)


setattr(_keep_weight_process_weights_after_loading, _PATCHED_FLAG, True)


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group (called once per vLLM process)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return  # GPU (or any accelerator): vLLM's own behaviour, untouched
    import vllm
    from vllm.model_executor.layers import linear

    method = getattr(linear.UnquantizedLinearMethod, "process_weights_after_loading", None)
    if method is None:
        raise RuntimeError("hpt-verl's vLLM CPU plugin: vllm.model_executor.layers.linear.UnquantizedLinearMethod "
                           "has no process_weights_after_loading any more; the plugin must be revisited for "
                           f"vLLM {vllm.__version__}")
    if getattr(method, _PATCHED_FLAG, False):
        return
    if vllm.__version__ not in TESTED_VLLM_VERSIONS:
        logger.warning("hpt-verl's vLLM CPU plugin was written for vLLM %s, found %s: keeping CPU linear "
                       "weights anyway (verl's weight push needs them)", TESTED_VLLM_VERSIONS, vllm.__version__)
    linear.UnquantizedLinearMethod.process_weights_after_loading = _keep_weight_process_weights_after_loading
    logger.info("hpt-verl: vLLM CPU linear layers keep their weights (verl pushes new weights after each update)")
