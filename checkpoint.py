"""
train.py's checkpoints. ckpt.pt holds what an exact resume needs (model, AdamW state, the fp16 loss scaler, step,
torch RNG, the run's settings); rank 0 writes it to a temporary file, fsyncs and renames it, so that ckpt.pt is
always the old or the new checkpoint, never half of one. The final model goes out as a Hugging Face folder
(load_hf_weights.save_model). FSDP gathers the full state onto rank 0's CPU; ZeRO-1 consolidates its shards there.
"""
import json
import os
import sys
from dataclasses import asdict

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)

from load_hf_weights import save_model
from model import Llama

FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)  # FSDP: gather the shards onto rank 0's CPU
# settings a resumed run must share with its checkpoint (others, e.g. --ckpt-every or --stop-after, may change)
SAME = ("method", "train_len", "target_len", "orig_len", "num_chunks", "rope", "global_batch", "max_steps", "lr", "min_lr",
        "warmup", "decay", "weight_decay", "seed", "data", "mix", "mix_from", "gap_warmup", "passkey_min_len", "cream_sigma")


class Checkpoints:
    def __init__(self, path, *, model, raw_model, optimizer, scaler, shard, ddp, master):
        self.path, self.model, self.raw_model, self.optimizer, self.scaler = path, model, raw_model, optimizer, scaler
        self.shard, self.ddp, self.master = shard, ddp, master

    def state(self):
        """(model state, optimizer state or None off rank 0), full and unsharded. All ranks call."""
        if self.shard == "fsdp":
            return get_model_state_dict(self.model, options=FULL), get_optimizer_state_dict(self.model, self.optimizer, options=FULL)
        if self.shard == "zero1" and self.ddp:
            self.optimizer.consolidate_state_dict(to=0)
        return self.raw_model.state_dict(), self.optimizer.state_dict() if self.master else None

    def save(self, step, args, config):
        """All ranks call (FSDP and ZeRO-1 gather state); rank 0 writes tmp -> fsync -> rename."""
        model_sd, opt_sd = self.state()
        if self.master:
            ckpt = dict(model=model_sd, optimizer=opt_sd, scaler=self.scaler.state_dict() if self.scaler else None, step=step,
                        examples_seen=step * args.global_batch, torch_rng=torch.get_rng_state(), args=vars(args),
                        config=asdict(config))
            with open(self.path + ".tmp", "wb") as f:
                torch.save(ckpt, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self.path + ".tmp", self.path)

    def resume(self, args, default, log):
        """Load ckpt.pt into model, optimizer, scaler and torch's RNG; drop log.jsonl's lines of the steps to be redone;
        return the step to continue from. Exits naming each setting that differs from the checkpoint's."""
        ckpt = torch.load(self.path, map_location="cpu", weights_only=True, mmap=True)  # every rank reads it; mmap: no copy
        changed = [f"--{k.replace('_', '-')} {ckpt['args'].get(k)} -> {getattr(args, k)}" for k in SAME
                   if ckpt["args"].get(k, default(k)) != getattr(args, k)]
        if changed:
            sys.exit(f"error: --resume with settings that change the run: {', '.join(changed)}; use the checkpoint's or a new --out-dir")
        if self.shard == "fsdp":
            set_model_state_dict(self.model, ckpt["model"], options=FULL)
            set_optimizer_state_dict(self.model, self.optimizer, ckpt["optimizer"], options=FULL)
        else:
            self.raw_model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt["scaler"]:
            self.scaler.load_state_dict(ckpt["scaler"])
        torch.set_rng_state(ckpt["torch_rng"])
        if self.master and os.path.exists(log):
            lines = [line for line in open(log) if json.loads(line)["step"] <= ckpt["step"]]
            open(log, "w").writelines(lines)
        return ckpt["step"]  # data state: the next example is step * global_batch (see examples.py)

    def export(self, path, config, dtype, tokenizer_dir):
        """The final model as a Hugging Face folder at path (rank 0; all ranks call); returns it, None off rank 0."""
        final_sd = get_model_state_dict(self.model, options=FULL) if self.shard == "fsdp" else self.raw_model.state_dict()
        if self.master:
            with torch.device("meta"):
                export = Llama(config)
            export.load_state_dict(final_sd, strict=True, assign=True)
            return save_model(export, path, dtype=dtype, tokenizer_dir=tokenizer_dir)
