"""Speed and memory levers for the UNet, shared by training and sampling (see docs/performance.md).

Each lever is off by default and changes no result beyond floating-point rounding:
- regional compilation: torch.compile each repeated block (ResNet and transformer blocks) instead
  of the whole UNet. Blocks of equal shapes share one compiled graph, so compiling takes a fraction
  of whole-model compilation while fusing the same GroupNorm/SiLU/residual chains.
- compile tuning: torch.compile's own modes ("reduce-overhead" = CUDA graphs, which remove the
  launch gaps of small kernels; "max-autotune" = benchmarked kernel choices plus CUDA graphs), and
  "fullgraph" compilation, which fails instead of splitting the UNet at a graph break.
- selective gradient checkpointing: recompute only the high-resolution levels, which hold most of
  the activation memory (a 64x64 map is 16x a 16x16 one) but only about half the FLOPs.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import torch

from histoldm.errors import UserError

CompileMode = Literal["full", "fullgraph", "blocks"]
CompileTuning = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
REPEATED_BLOCKS = ("ResnetBlock2D", "BasicTransformerBlock")
_RECOMPILE_LIMIT = 64  # distinct block shapes in a UNet exceed dynamo's default of 8


def _raise_recompile_limit() -> None:
    """Each block shape is one more compiled variant of the same code; past the limit dynamo would
    silently run the rest eagerly."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit"):  # renamed in torch 2.6
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, max(getattr(dynamo_config, name), _RECOMPILE_LIMIT))


def compile_unet(
    unet: torch.nn.Module, mode: CompileMode = "full", backend: str = "inductor", tuning: CompileTuning = "default"
):
    """The UNet compiled as a whole ("full" / "fullgraph", returns a wrapper) or block by block
    ("blocks", in place, returns the same module so state_dict keys and references stay unchanged).
    `tuning` is torch.compile's mode (inductor only)."""
    if mode not in ("full", "fullgraph", "blocks"):
        raise UserError(f"compile mode '{mode}': choose full, fullgraph or blocks")
    options = {"mode": tuning} if backend == "inductor" and tuning != "default" else {}
    if mode != "blocks":
        # dynamic=False: guidance on an interval alternates two batch sizes; two static graphs beat one dynamic
        return torch.compile(unet, backend=backend, fullgraph=mode == "fullgraph", dynamic=False, **options)
    _raise_recompile_limit()
    blocks = [m for m in unet.modules() if type(m).__name__ in REPEATED_BLOCKS]
    if not blocks:
        raise UserError(f"compile mode blocks: the UNet has none of {', '.join(REPEATED_BLOCKS)}")
    for block in blocks:
        block.compile(backend=backend, dynamic=False, **options)
    return unet


def _level_blocks(unet, level: int) -> list[torch.nn.Module]:
    """The down, up (and, at the deepest level, mid) blocks that work at resolution level `level`."""
    n = len(unet.down_blocks)
    blocks = [unet.down_blocks[level], unet.up_blocks[n - 1 - level]]
    return blocks + ([unet.mid_block] if level == n - 1 and unet.mid_block is not None else [])


def enable_gradient_checkpointing(unet, levels: Iterable[int] | None = None) -> None:
    """Checkpoint every block (levels None) or only those of the given resolution levels
    (0 = full latent resolution, len(block_out_channels) - 1 = the deepest, with the mid block)."""
    unet.enable_gradient_checkpointing()
    if levels is None:
        return
    n = len(unet.down_blocks)
    wanted = set(levels)
    bad = sorted(level for level in wanted if not 0 <= level < n)
    if bad:
        raise UserError(f"model.checkpoint_levels: {bad} outside 0..{n - 1} for this UNet")
    for level in set(range(n)) - wanted:
        for block in _level_blocks(unet, level):
            for module in block.modules():
                if hasattr(module, "gradient_checkpointing"):
                    module.gradient_checkpointing = False
