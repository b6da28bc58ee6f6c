"""Fine-tuning with a factor set applied: plain torch + transformers, no trainer dependency.

Long documents are packed into one token stream and cut into windows of the stage length.
The length grows linearly during `length_warmup` of the steps (stability at large batch and
learning rate). Gradient accumulation reaches the global batch; the loss is chunked like the
evaluator's. LongRoPE2's mixed-window option trains a share of the micro-batches on windows
of the original length, with the RoPE the target runtime applies there (MIXED_WINDOW_ROPE), so
the fine-tuned model keeps its original window where it will be served. Under `torchrun` the model is sharded with
FSDP (fully_shard) and each rank reads its own windows. A checkpoint every `save_every`
steps lets a killed run continue where it stopped.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ropesearch.data import TokenizedDocument
from ropesearch.errors import RopesearchError
from ropesearch.evaluate.loss import trainable_mean_nll
from ropesearch.validate import ListOf, check_safetensors, conform, read_json
from ropesearch.own_files import atomic_write_text, current_umask
from ropesearch.rope import RopeFactors, methods
from ropesearch.rope.patching import patch_rope

SCHEDULES = ("linear", "constant", "cosine")


def _as_transformers_runs_it(factors: RopeFactors) -> RopeFactors:
    """At or below the original window transformers' longrope switches to short_factor and still
    applies attention_factor (the one factor it reads, at every length). Dynamic NTK is the set
    itself: the tables switch there as transformers does."""
    if factors.dynamic_factor is not None:
        return factors
    return replace(factors, long_factor=factors.short_factor)


def _as_vllm_serves_it(factors: RopeFactors) -> RopeFactors:
    """vLLM (0.11.1 on) serving past the original window (--max-model-len above it) applies
    long_factor and long_mscale (exported = attention_factor) at every length, short prompts
    included; its dynamic NTK is fixed at the maximum length (the stored long factors)."""
    return replace(factors, short_factor=factors.long_factor, dynamic_factor=None)


def _original_rope(factors: RopeFactors) -> RopeFactors:
    return methods.none(factors.base)


# what the original-window micro-batches of a mixed-window run are trained with, by runtime: the
# model keeps its original window where it is served so ("both" alternates the two runtimes)
MIXED_WINDOW_ROPE = {
    "transformers": (_as_transformers_runs_it,),
    "vllm": (_as_vllm_serves_it,),
    "both": (_as_transformers_runs_it, _as_vllm_serves_it),
    "original": (_original_rope,),  # LongRoPE2's: the unscaled RoPE, which no runtime applies to an export
}


@dataclass(frozen=True)
class FinetuneConfig:
    length: int
    steps: int
    global_batch: int = 8
    micro_batch: int = 1
    lr: float = 2e-5
    schedule: str = "linear"  # linear decay (LongRoPE's LLaMA2 run), constant (its Mistral run), cosine
    warmup_steps: int = 0
    length_warmup: float = 0.0  # fraction of the steps over which the length grows to `length`
    min_length: int | None = None  # start of the length warm-up (default: the original window)
    weight_decay: float = 0.0
    clip: float = 1.0
    gradient_checkpointing: bool = True
    mixed_window: float = 0.0  # share of micro-batches at the original window (their RoPE: mixed_window_rope)
    # a key of MIXED_WINDOW_ROPE, the runtime whose original window to keep (None: transformers, the default
    # runtime; None also matches the plan copy of a run made before this setting existed)
    mixed_window_rope: str | None = None
    save_every: int = 50
    seed: int = 0
    logits_chunk: int = 4096
    # parameters to train, by name fragment (e.g. [q_proj, k_proj, norm]); empty: all. Position
    # information enters attention through q and k, so these few carry most of the adaptation,
    # and the trained part is small enough to ship apart from the base weights.
    trainable: tuple[str, ...] = ()

    @property
    def short_window_rope(self) -> str:
        """The MIXED_WINDOW_ROPE key the short micro-batches use (None stands for transformers)."""
        return self.mixed_window_rope or "transformers"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise RopesearchError(f"finetune schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.steps < 1 or self.length < 2 or self.micro_batch < 1 or self.global_batch < self.micro_batch:
            raise RopesearchError("finetune needs steps >= 1, length >= 2 and global_batch >= micro_batch >= 1")
        if self.mixed_window_rope is not None and self.mixed_window_rope not in MIXED_WINDOW_ROPE:
            raise RopesearchError(f"finetune mixed_window_rope must be one of {', '.join(MIXED_WINDOW_ROPE)}, got "
                                  f"{self.mixed_window_rope!r}")
        if not 0 <= self.mixed_window < 1 or not 0 <= self.length_warmup <= 1:
            raise RopesearchError("finetune mixed_window must lie in [0, 1) and length_warmup in [0, 1]")
        if not (self.lr > 0 and self.clip > 0 and self.weight_decay >= 0 and self.warmup_steps >= 0
                and self.save_every >= 1 and self.logits_chunk >= 1 and self.seed >= 0
                and (self.min_length is None or self.min_length >= 2)):
            raise RopesearchError("finetune needs lr > 0, clip > 0, weight_decay >= 0, warmup_steps >= 0, "
                                  "save_every >= 1, logits_chunk >= 1, seed >= 0 and min_length >= 2")
        if any(not fragment.strip() for fragment in self.trainable):
            raise RopesearchError(f"finetune trainable must be parameter name fragments like q_proj, got "
                                  f"{list(self.trainable)}")


def lr_factor(config: FinetuneConfig, step: int) -> float:
    """Learning-rate multiplier at `step`: linear warm-up, then the schedule."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "linear":
        return max(0.0, 1.0 - progress)
    return 0.5 * (1 + math.cos(math.pi * progress))


def length_at(config: FinetuneConfig, step: int, original: int) -> int:
    """Sequence length at `step`: linear growth over the warm-up, multiples of 64 tokens."""
    if config.length_warmup <= 0:
        return config.length
    start = min(config.min_length or original, config.length)
    progress = min(1.0, step / max(1, config.length_warmup * config.steps))
    length = int(start + progress * (config.length - start))
    return min(config.length, max(start, length // 64 * 64))


def token_stream(documents: list[TokenizedDocument], eos_id: int | None) -> torch.Tensor:
    pieces = []
    for document in documents:
        pieces.append(document.ids)
        if eos_id is not None:
            pieces.append(np.asarray([eos_id], dtype=np.int32))
    stream = torch.from_numpy(np.concatenate(pieces)).long()
    return stream


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def enable_activation_checkpointing(model) -> None:
    """Recompute each layer in the backward pass; non-reentrant, so gradients also reach
    tensors the layers get as keyword arguments (the rotary tables)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _unshared(weights: dict) -> dict:
    """The state dict with a copy of every tensor that shares memory with an earlier one: tied
    embeddings (SmolLM2, Qwen2.5, the pocket model) are one tensor under two names on a CPU, which
    safetensors refuses to write; loading sets both names, so the tie holds."""
    seen, out = set(), {}
    for name, tensor in weights.items():
        tensor = tensor.contiguous()
        storage = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    return out


class LossModule(torch.nn.Module):
    """The training forward as one root module: hidden states, then the chunked loss.

    Going through one root lets FSDP unshard the embeddings, final norm and LM head (tied or
    not) around the whole step, which a direct call of `model.base_model` would bypass.
    """

    def __init__(self, model, logits_chunk: int):
        super().__init__()
        self.model = model
        self.logits_chunk = logits_chunk

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        hidden = self.model.base_model(input_ids=ids, use_cache=False).last_hidden_state
        return trainable_mean_nll(hidden, self.model.get_output_embeddings(), ids, self.logits_chunk)


def _shard(module: LossModule) -> None:
    """FSDP2: each decoder layer its own unit, the rest (embeddings, norm, head) in the root."""
    from torch.distributed.fsdp import fully_shard

    for layer in module.model.base_model.layers:
        fully_shard(layer)
    fully_shard(module)


class Finetuner:
    def __init__(self, model, factors: RopeFactors, documents: list[TokenizedDocument], config: FinetuneConfig,
                 out: str | Path, eos_id: int | None = None, log=print):
        self.model, self.factors, self.config, self.log = model, factors, config, log
        self.out = Path(out)
        self.rank, self.world = _distributed()
        self.device = next(model.parameters()).device
        self.stream = token_stream(documents, eos_id)
        if len(self.stream) <= config.length + 1:
            raise RopesearchError(f"fine-tuning data holds {len(self.stream)} tokens, fewer than one window of "
                                  f"{config.length}: add documents")
        per_step = config.micro_batch * self.world
        if config.global_batch % per_step:
            raise RopesearchError(f"global_batch {config.global_batch} is not a multiple of micro_batch x GPUs "
                                  f"({per_step})")
        self.accumulation = config.global_batch // per_step
        self.original = factors.base.original_context
        self.short_ropes = [view(factors) for view in MIXED_WINDOW_ROPE[config.short_window_rope]]
        self.trainee = LossModule(model, config.logits_chunk)
        if config.trainable:
            chosen = 0
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(any(fragment in name for fragment in config.trainable))
                chosen += parameter.requires_grad
            if not chosen:
                raise RopesearchError(f"finetune trainable {list(config.trainable)} matches no parameter of the model")

    def trained_parameters(self) -> list:
        return [p for p in self.trainee.parameters() if p.requires_grad]

    # ---- state --------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoint"

    def _save_checkpoint(self, step: int, optimizer, generator, history: list[dict]) -> None:
        from safetensors.torch import save_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(self.trainee, options=options)
        optimizer_state = get_optimizer_state_dict(self.trainee, optimizer, options=options)
        if self.rank != 0:
            return
        import tempfile

        self.out.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.out, prefix=".checkpoint.", suffix=".tmp"))
        staging.chmod(0o777 & ~current_umask())
        save_file(_unshared(weights), staging / "model.safetensors")
        torch.save({"optimizer": optimizer_state, "generator": generator.get_state()}, staging / "trainer.pt")
        atomic_write_text(staging / "state.json", json.dumps({"step": step, "config": asdict(self.config),
                                                              "history": history}))
        if self.checkpoint_dir.exists():
            import shutil

            shutil.rmtree(self.checkpoint_dir)
        os.replace(staging, self.checkpoint_dir)

    def _load_checkpoint(self, optimizer, generator) -> tuple[int, list[dict]]:
        """The step to continue from and the history of the steps before it."""
        state_file = self.checkpoint_dir / "state.json"
        if not state_file.is_file():
            return 0, []
        from safetensors.torch import load_file
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

        fix = f"remove {self.checkpoint_dir} to fine-tune again from step 0"
        state = read_json(state_file, "fine-tuning checkpoint", fix, expect=dict)
        conform(state, {"config": dict, "step": int, "history?": ListOf(dict)}, f"fine-tuning checkpoint {state_file}",
                fix)
        saved = dict(state["config"])
        legacy = "mixed_window_rope" not in saved  # written before the setting existed: it matches None
        saved.setdefault("mixed_window_rope", None)
        if saved != json.loads(json.dumps(asdict(self.config))):  # as JSON keeps it: lists, not tuples
            raise RopesearchError(f"{self.checkpoint_dir} was written with other fine-tuning settings; "
                                  "remove it or restore the settings")
        if legacy and self.config.mixed_window and self.config.mixed_window_rope is None:
            self.short_ropes = [view(self.factors) for view in MIXED_WINDOW_ROPE["original"]]
            self.log("this checkpoint predates mixed_window_rope: its short windows keep the unscaled RoPE they "
                     "were trained with")
        options = StateDictOptions(full_state_dict=True)
        try:
            check_safetensors(self.checkpoint_dir / "model.safetensors", "fine-tuning checkpoint weights", fix)
            weights = load_file(self.checkpoint_dir / "model.safetensors")
            # weights_only: tensors and plain containers only, so a planted file cannot run code
            trainer = torch.load(self.checkpoint_dir / "trainer.pt", weights_only=True)
        except (OSError, RuntimeError, pickle.UnpicklingError) as exc:
            raise RopesearchError(f"fine-tuning checkpoint {self.checkpoint_dir} is damaged or not data only "
                                  f"({str(exc).splitlines()[0][:120]}); {fix}") from None
        set_model_state_dict(self.trainee, weights, options=options)
        set_optimizer_state_dict(self.trainee, optimizer, trainer["optimizer"], options=options)
        generator.set_state(trainer["generator"])
        self.log(f"resuming fine-tuning at step {state['step']}")
        return int(state["step"]), list(state.get("history", []))

    # ---- training -------------------------------------------------------------------------
    def _windows(self, generator, rows: int, length: int) -> torch.Tensor:
        starts = torch.randint(0, len(self.stream) - length, (rows,), generator=generator)
        return torch.stack([self.stream[s : s + length] for s in starts]).to(self.device)

    def run(self) -> list[dict]:
        config = self.config
        model = self.model
        if config.gradient_checkpointing:
            enable_activation_checkpointing(model)
        model.config.use_cache = False
        model.train()
        patch = patch_rope(model, self.factors)
        if self.world > 1:
            _shard(self.trainee)
        optimizer = torch.optim.AdamW(self.trained_parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                      betas=(0.9, 0.95))
        generator = torch.Generator().manual_seed(config.seed * 1000 + self.rank)
        step, history = self._load_checkpoint(optimizer, generator)
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        # seconds continue from the interrupted session's last step
        started = time.perf_counter() - (history[-1]["seconds"] if history else 0.0)
        try:
            while step < config.steps:
                for group in optimizer.param_groups:
                    group["lr"] = config.lr * lr_factor(config, step)
                length = length_at(config, step, self.original)
                total = 0.0
                for _ in range(self.accumulation):
                    short = config.mixed_window > 0 and torch.rand((), generator=generator).item() < config.mixed_window
                    ids = self._windows(generator, config.micro_batch, self.original if short else length)
                    rope = self.short_ropes[len(history) % len(self.short_ropes)] if short else self.factors
                    patch.set_factors(rope)
                    with autocast:
                        loss = self.trainee(ids)
                    (loss / self.accumulation).backward()
                    total += loss.item() / self.accumulation
                norm = torch.nn.utils.clip_grad_norm_(self.trained_parameters(), config.clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                now = time.perf_counter() - started
                entry = {"step": step, "loss": total, "length": length, "lr": optimizer.param_groups[0]["lr"],
                         "grad_norm": float(norm), "seconds": round(now, 2),
                         "step_seconds": round(now - (history[-1]["seconds"] if history else 0.0), 3)}
                if self.device.type == "cuda":  # this step's peak (reset below), what sizes the longest window
                    entry["peak_gib"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
                    torch.cuda.reset_peak_memory_stats(self.device)
                history.append(entry)
                if step % 10 == 0 or step == config.steps:
                    peak = f"  peak {entry['peak_gib']:.1f} GiB" if "peak_gib" in entry else ""
                    self.log(f"step {step}/{config.steps}  loss {total:.4f}  length {length}  lr {entry['lr']:.2e}  "
                             f"{entry['step_seconds']:.2f} s/step{peak}")
                if step % config.save_every == 0 or step == config.steps:
                    self._save_checkpoint(step, optimizer, generator, history)
        finally:
            patch.restore()
            model.eval()
        return history

    def full_state_dict(self) -> dict:
        """The trained weights under the model's own names, gathered on every rank (use on rank 0)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        weights = get_model_state_dict(self.trainee, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {name.removeprefix("model."): tensor for name, tensor in weights.items()}
