"""CPU support for verl 0.9.1 (which ships only nvidia/npu/rocm platforms)."""
