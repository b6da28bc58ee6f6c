"""Train the pocket model: a tiny Llama that ropesearch ships for CPU quickstarts and CI.

    python eval/train_pocket_model.py --out ropesearch/assets/pocket

Data: every .py file of this Python's standard library (tests included), except the
held-out files of ropesearch's built-in corpus (`ropesearch.data.BUILTIN_FILES`), which
stay unseen so they can serve as evaluation data. A byte-level BPE tokenizer is trained on
the same files. The model is trained at a short window (`--context`, 256) so that
extending it 4-16x is a real long-context problem on a laptop CPU.

Everything that decides the result is written next to the weights (training.json): seed,
hyperparameters, the exact file list with its hash, Python version, losses and device.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ropesearch.data import BUILTIN_FILES  # noqa: E402

EXCLUDED_DIRS = {"site-packages", "__pycache__"}
EOS = "<|endoftext|>"


def training_files(stdlib: Path) -> list[str]:
    held_out = set(BUILTIN_FILES)
    files = []
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib).as_posix()
        if relative in held_out or EXCLUDED_DIRS & set(path.relative_to(stdlib).parts):
            continue
        files.append(relative)
    return files


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   model_max_length=1 << 20)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stdlib", default=sysconfig.get_paths()["stdlib"],
                        help="the standard library to train on (default: this Python's; the shipped model used "
                             "CPython 3.11's, carried to the GPU machine as a tar of its .py files)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--intermediate", type=int, default=768)
    parser.add_argument("--rope-theta", type=float, default=10000.0)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--no-bf16", action="store_true", help="train in float32 (default: bf16 autocast)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()

    stdlib = Path(args.stdlib)
    files = training_files(stdlib)
    texts = [(stdlib / f).read_text(encoding="utf-8", errors="replace") for f in files]
    corpus_hash = hashlib.sha256("\0".join(files + texts).encode()).hexdigest()
    print(f"{len(files)} training files, {sum(map(len, texts)) / 1e6:.1f} MB", flush=True)

    tokenizer = train_tokenizer(texts, args.vocab_size)
    eos_id = tokenizer.convert_tokens_to_ids(EOS)
    pieces = []
    for text in texts:
        pieces.append(np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int32))
        pieces.append(np.asarray([eos_id], dtype=np.int32))
    tokens = np.concatenate(pieces)
    split = int(len(tokens) * 0.99)  # the last 1% of the training stream checks for over-fitting
    train, valid = torch.from_numpy(tokens[:split]).long(), torch.from_numpy(tokens[split:]).long()
    print(f"{len(tokens) / 1e6:.2f}M tokens ({time.time() - started:.0f} s)", flush=True)

    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads, max_position_embeddings=args.context,
        rope_parameters={"rope_type": "default", "rope_theta": args.rope_theta},
        tie_word_embeddings=True, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )
    model = LlamaForCausalLM(config).to(args.device)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{parameters / 1e6:.2f}M parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))

    def lr_at(step):  # linear warm-up, cosine decay to 10%
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = (step - args.warmup) / max(1, args.steps - args.warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    generator = torch.Generator().manual_seed(args.seed)

    def batch_from(stream, size):
        starts = torch.randint(0, len(stream) - args.context - 1, (size,), generator=generator)
        return torch.stack([stream[s : s + args.context] for s in starts]).to(args.device)

    def valid_loss():
        model.eval()
        with torch.no_grad():
            windows = valid[: (len(valid) // args.context) * args.context].view(-1, args.context)[:64]
            loss = model(windows.to(args.device), labels=windows.to(args.device)).loss.item()
        model.train()
        return loss

    history = []
    model.train()
    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        ids = batch_from(train, args.batch)
        with torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16, enabled=not args.no_bf16):
            loss = model(ids, labels=ids).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            entry = {"step": step, "loss": loss.item(), "lr": lr_at(step), "seconds": time.time() - started}
            if step % 500 == 0 or step == args.steps - 1:
                entry["valid_loss"] = valid_loss()
            history.append(entry)
            print(json.dumps(entry), flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.eval().to("cpu")
    model.generation_config.pad_token_id = eos_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    record = {
        "command": " ".join(["python"] + sys.argv),
        "arguments": vars(args),
        "parameters": parameters,
        "tokens": int(len(tokens)),
        "train_tokens_seen": args.steps * args.batch * args.context,
        "python": sys.version.split()[0],
        "stdlib": args.stdlib,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else f"cpu x{torch.get_num_threads()}",
        "platform": platform.platform(),
        "held_out_files": list(BUILTIN_FILES),
        "training_files": files,
        "corpus_sha256": corpus_hash,
        "history": history,
        "final_valid_loss": history[-1].get("valid_loss"),
        "seconds": time.time() - started,
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"saved to {out} after {record['seconds'] / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
