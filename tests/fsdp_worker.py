"""One process of tests/test_fsdp.py (run by torch.distributed.run, 2 processes, gloo, CPU).

FSDP2 (``fully_shard``) shards a tiny Llama's decoder layers and root over the 2 processes,
so ``lm_head.weight`` is a DTensor of V/2 rows outside the forward. The PALU trainer's fused
path (:meth:`PALUTrainer._fused_rows_fsdp2`: decoder and projection inside the root's
registered forward method, reference sharded like the trainee) must give, on each process's
half of the batch, the rows and, summed over processes, the gradients of the unsharded fused
loss on the whole batch. Writes ``ok`` (or the failure) to ``$FSDP_RESULT.<rank>``.
"""

import copy
import json
import os
import sys
import traceback
from types import SimpleNamespace

import torch
import torch.distributed as dist


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from palu_kernels import initiating_mask
    from palu_kernels.fused_linear import palu_fused_linear_loss
    from palu_kernels.tiny import build_tiny_llama
    from palu_kernels.train.base import PALUConfig
    from palu_kernels.train.distributed import is_fsdp2
    from palu_kernels.train.methods.palu import PALUTrainer

    tied = os.environ.get("FSDP_TIED") == "1"
    V, B, T = 96, 2 * world, 12
    model = build_tiny_llama(V, hidden_size=32, num_layers=2, seed=1, tie_word_embeddings=tied)
    ref = build_tiny_llama(V, hidden_size=32, num_layers=2, seed=2, tie_word_embeddings=tied)
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(4, V, (B, T), generator=g)
    att = torch.ones(B, T, dtype=torch.long)
    sens = torch.zeros(B, T, dtype=torch.bool)
    sens[:, 3:7] = True
    sens[0, 3:7] = False  # a row without a span
    imask = initiating_mask(sens, first_n=2)
    cmask = torch.zeros(B, T, dtype=torch.bool)
    cmask[:, 1:T - 1] = True
    cmask &= ~sens
    n_i, n_c = imask.sum().clamp(min=1), cmask.sum().clamp(min=1)
    cfg = PALUConfig(k=8, fused_linear=True, backend="torch")

    def weighted(rows, im, cm):
        return rows[im].sum() / n_i + rows[cm].sum() / n_c

    # the unsharded fused loss on the whole batch
    full = copy.deepcopy(model).train()
    with torch.no_grad():
        rh = ref.model(input_ids=ids, attention_mask=att).last_hidden_state
    h = full.model(input_ids=ids, attention_mask=att).last_hidden_state
    rows_full = palu_fused_linear_loss(h, full.lm_head.weight, rh, ref.lm_head.weight, imask,
                                       cmask, k=cfg.k, reduction="none", backend="torch")
    weighted(rows_full, imask, cmask).backward()
    want = {n: p.grad.clone() for n, p in full.named_parameters()}

    # FSDP2 over the processes; each takes its half of the batch
    mesh = init_device_mesh("cpu", (world,))
    sharded = copy.deepcopy(model).train()
    trainer = PALUTrainer.__new__(PALUTrainer)  # the trainer's methods without a Trainer
    trainer.palu, trainer.ref_model, trainer._fused_heads = cfg, copy.deepcopy(ref), {}
    trainer.accelerator = SimpleNamespace(mixed_precision="no")
    trainer._fused_head(sharded)  # checked before sharding, as PALUTrainer.__init__ does
    trainer._fused_head(trainer.ref_model)
    for layer in sharded.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    w = sharded.lm_head.weight
    assert isinstance(w, DTensor) and w.to_local().shape[0] == V // world, type(w)

    part = slice(rank * B // world, (rank + 1) * B // world)
    rows = trainer._fused_rows_fsdp2(sharded, ids[part], att[part], imask[part], cmask[part])
    assert is_fsdp2(trainer.ref_model), "reference not sharded"
    ref_layer_w = trainer.ref_model.model.layers[0].mlp.up_proj.weight
    assert isinstance(ref_layer_w, DTensor), "reference decoder layer not sharded"
    torch.testing.assert_close(rows.detach(), rows_full.detach()[part], rtol=1e-5, atol=1e-6)
    # FSDP averages gradients over processes: the global normalisation times world size
    (weighted(rows, imask[part], cmask[part]) * world).backward()
    for name, p in sharded.named_parameters():
        got = p.grad.full_tensor()
        torch.testing.assert_close(got, want[name], rtol=1e-4, atol=1e-6, msg=name)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    out = os.environ["FSDP_RESULT"] + f".{os.environ.get('RANK', '0')}"
    try:
        main()
        result = "ok"
    except Exception:  # reported through the file: the test prints it
        result = traceback.format_exc()
    with open(out, "w") as f:
        json.dump(result, f)
    sys.exit(0 if result == "ok" else 1)
