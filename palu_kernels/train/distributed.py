"""Training on a distributed engine: which one runs, the reference model sharded like the
trainee, and the fused PALU loss inside the engine's forward of the output projection.

Engines (:func:`engine_of`): one process; DDP (``torchrun``, or ``accelerate launch`` without a
config; CPU with gloo or GPUs); FSDP2 (``accelerate launch --config_file
docs/accelerate_fsdp2.yaml``, GPUs only: accelerate turns an FSDP config into plain data
parallel on the CPU, so :func:`check_launch` refuses that combination instead of letting it
run unsharded). FSDP1 and DeepSpeed are refused with a one-line reason.

**The reference under FSDP2.** :func:`shard_reference` shards the frozen copy with
``fully_shard`` over the same processes: every decoder layer (the classes in the model's
``_no_split_modules``) is its own unit and is gathered only for its forward, and the root
unit (embeddings, final norm, ``lm_head``) stays gathered after its first forward, which the
fused loss's backward needs (it recomputes the reference's logits per chunk from
``ref_weight``). Memory per process: the decoder layers / world size plus the root's
parameters.

**Fused linear under FSDP2.** ``lm_head.weight`` is a shard (a ``DTensor`` of ``V / world``
rows) outside the model's forward; the fused loss multiplies hidden states by the whole
weight. This is the failure users of fused linear losses hit (size mismatches, illegal
memory access when a freed all-gather buffer is read in backward). :func:`fsdp_call` runs a
function as a forward method of the root module (``register_fsdp_forward_method``): FSDP
gathers the root's parameters before it, and the output's backward hook gathers them again
before the fused backward runs, so the fused loss sees the full ``[V, H]`` weight in both
passes and its gradient is reduce-scattered like any other.
"""

from __future__ import annotations

import os
import types

import torch

from ..errors import UsageError

__all__ = ["EngineError", "check_engine", "check_launch", "engine_of", "fsdp_call", "is_fsdp2",
           "is_sharded", "shard_reference"]

_CALL = "_palu_engine_call"


class EngineError(UsageError):
    """A distributed set-up this project does not run (the message says why and what to do;
    a :class:`~palu_kernels.errors.UsageError` of no one option)."""

    def __init__(self, message: str):
        super().__init__(None, message)


def is_fsdp2(module) -> bool:
    """Whether ``module`` is managed by FSDP2 (``fully_shard``)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return False
    return isinstance(module, FSDPModule)


def is_sharded(t) -> bool:
    """Whether ``t`` is a distributed tensor (an FSDP2 shard), not a whole local tensor."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover
        return False
    return isinstance(t, DTensor)


def engine_of(accelerator) -> str:
    """``"single"``, ``"ddp"``, ``"fsdp2"``, ``"fsdp1"`` or ``"deepspeed"``: what trains."""
    kind = str(getattr(accelerator, "distributed_type", "NO")).split(".")[-1].upper()
    if kind == "FSDP":
        plugin = getattr(accelerator.state, "fsdp_plugin", None)
        return "fsdp2" if getattr(plugin, "fsdp_version", 1) == 2 else "fsdp1"
    if kind == "DEEPSPEED":
        return "deepspeed"
    return "single" if accelerator.num_processes == 1 else "ddp"


def check_launch(*, cuda: bool, environ=None) -> None:
    """Refuse a launcher configuration the engine would not honour (before any model loads).

    accelerate reads ``accelerate launch``'s FSDP / DeepSpeed config from the environment
    (``ACCELERATE_USE_FSDP``, ``ACCELERATE_USE_DEEPSPEED``) but applies it to GPU processes
    only: on the CPU it silently trains every process on a full copy. Raises
    :class:`EngineError`.
    """
    env = os.environ if environ is None else environ
    for var, name in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")):
        if str(env.get(var, "false")).lower() == "true" and not cuda:
            raise EngineError(
                f"the launcher asks for {name} ({var}=true) but no GPU is visible, and "
                f"accelerate runs {name} on GPUs only (on the CPU it would train unsharded "
                "copies); on the CPU launch with torchrun or accelerate without that config")


def check_engine(engine: str, *, fused_linear: bool, lora: bool) -> None:
    """Refuse the combinations of engine and options that are not supported
    (:class:`EngineError`): DeepSpeed and FSDP1 (no reference-model preparation here; use
    FSDP2), and ``fused_linear`` with LoRA under FSDP2 (the adapter wrapper's forward is
    not the sharded root's)."""
    if engine == "deepspeed":
        raise EngineError("DeepSpeed is not supported (the frozen reference would stay a full "
                          "copy on every process); use FSDP2, with the accelerate config "
                          "docs/accelerate_fsdp2.yaml")
    if engine == "fsdp1":
        raise EngineError("FSDP1 (fsdp_version: 1) is not supported; set fsdp_version: 2 in "
                          "the accelerate config (docs/accelerate_fsdp2.yaml)")
    if engine == "fsdp2" and fused_linear and lora:
        raise EngineError("`fused_linear` with `lora_r` under FSDP2 is not supported; drop "
                          "one of them")


def _mesh_of(module):
    """The device mesh a ``fully_shard``-ed module was sharded over."""
    for p in module.parameters():
        mesh = getattr(p, "device_mesh", None)
        if mesh is not None:
            return mesh
    raise EngineError("the trained model has no sharded parameter; cannot shard the reference "
                      "like it")


def shard_reference(ref: torch.nn.Module, like: torch.nn.Module) -> torch.nn.Module:
    """Shard the frozen reference ``ref`` with FSDP2 over the mesh of the trainee ``like``
    (in place; returns ``ref``). Decoder layers reshard after their forward; the root keeps
    its parameters gathered (the fused loss's backward reads ``ref_weight``)."""
    from torch.distributed.fsdp import fully_shard

    if is_fsdp2(ref):
        return ref
    mesh = _mesh_of(like)
    layer_names = set(getattr(ref, "_no_split_modules", None) or ())
    for module in ref.modules():
        if module is not ref and type(module).__name__ in layer_names:
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    fully_shard(ref, mesh=mesh, reshard_after_forward=False)
    return ref.eval().requires_grad_(False)


def fsdp_call(root: torch.nn.Module, fn, *args):
    """``fn(*args)`` run as a forward method of the FSDP2 root module ``root``: its parameters
    (``lm_head`` and the embeddings among them) are whole inside ``fn`` and again in the
    backward of what ``fn`` returns. A module not under FSDP2 just calls ``fn``."""
    if not is_fsdp2(root):
        return fn(*args)
    if _CALL not in vars(root):
        from torch.distributed.fsdp import register_fsdp_forward_method

        setattr(root, _CALL, types.MethodType(lambda self, f, *a: f(*a), root))
        register_fsdp_forward_method(root, _CALL)
    return getattr(root, _CALL)(fn, *args)
