"""Short CPU fine-tune of a causal LM's top layers on a task's train split (loss on the answer tokens only)."""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

import jinja2
import torch

from evolve.errors import UserError
from evolve.smollm2 import replace_dir, write_manifest
from merge_core.files import make_temp_dir, share_tree

TRAINING_LOG = "training.json"


def read_rows(train_jsonl: Path) -> list[dict]:
    """Rows of a JSONL file; a missing or empty file is a UserError."""
    path = Path(train_jsonl)
    if not path.is_file():
        raise UserError(f"{path}: train split not found; run the task's generate.py")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise UserError(f"{path}: empty train split; run the task's generate.py")
    return rows


def encode_examples(rows: list[dict], tokenizer, prompt: str, delimiter: str, max_len: int) -> list[tuple[list[int], int]]:
    """(token ids, answer start) per row; prompt and answer are encoded apart, exactly as lm-eval feeds a generation."""
    template = jinja2.Template(prompt)
    out = []
    for row in rows:
        context = tokenizer(template.render(**row), add_special_tokens=False)["input_ids"]
        # the trailing newline teaches the model to stop where the eval's `until: ["\n"]` cuts
        answer = tokenizer(delimiter + str(row["answer"]) + "\n", add_special_tokens=False)["input_ids"]
        ids = (context + answer)[:max_len]
        if len(context) < len(ids):
            out.append((ids, len(context)))
    return out


def collate(batch: list[tuple[list[int], int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask, and labels that are -100 everywhere but the answer tokens."""
    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for i, (row, start) in enumerate(batch):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
        labels[i, start : len(row)] = torch.tensor(row[start:])
    return ids, mask, labels


def answer_loss(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss over answer tokens; the head runs only where a label exists (it is a fifth of the FLOPs)."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    targets = labels[:, 1:]
    keep = targets != -100
    logits = model.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def freeze_all_but_top(model, train_layers: int) -> list[str]:
    """Freeze everything except the top `train_layers` decoder layers; embeddings stay frozen so the tie holds."""
    layers = model.model.layers
    if not 1 <= train_layers <= len(layers):
        raise UserError(f"prepare_options.train_layers: {train_layers} is out of range; give 1..{len(layers)}")
    for p in model.parameters():
        p.requires_grad_(False)
    first = len(layers) - train_layers
    for layer in layers[first:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def lr_at(step: int, steps: int, lr: float) -> float:
    """Linear warm-up over the first 10% of steps, then cosine decay to 10% of `lr`."""
    warm = max(1, steps // 10)
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def finetune(
    base_dir: Path,
    train_jsonl: Path,
    out_dir: Path,
    *,
    steps: int = 150,
    lr: float = 3e-4,
    batch_size: int = 16,
    max_len: int = 40,
    train_layers: int = 8,
    seed: int = 0,
    progress: bool = True,
    prompt: str = "Question: {{question}}\nAnswer:",
    delimiter: str = " ",
    limit: int | None = None,
    manifest: dict | None = None,
    device: str = "cpu",
) -> Path:
    """Fine-tune the top layers of `base_dir` on `train_jsonl`, save a HF folder at `out_dir` (atomic) and return it."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if steps < 1 or batch_size < 1 or lr <= 0 or max_len < 4:
        raise UserError("prepare_options: steps, batch_size, lr and max_len must be positive (max_len >= 4)")
    rows = read_rows(train_jsonl)[:limit]
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, trust_remote_code=False).to(device)
    model.eval()  # no dropout in Llama anyway; eval() keeps behaviour identical to inference
    trainable = freeze_all_but_top(model, train_layers)
    examples = encode_examples(rows, tokenizer, prompt, delimiter, max_len)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
    rng = random.Random(seed)
    order: list[int] = []
    losses: list[float] = []
    start = time.time()
    bar = tqdm(range(steps), desc=f"fine-tune {Path(out_dir).name}", disable=not progress, leave=False)
    for step in bar:
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh
        batch, order = [examples[i] for i in order[:batch_size]], order[batch_size:]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = answer_loss(model, *(t.to(device) for t in collate(batch, pad_id)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(round(loss.item(), 5))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    seconds = time.time() - start
    log = {"losses": losses, "seconds": round(seconds, 1), "examples": len(examples), "trainable": trainable,
           "threads": torch.get_num_threads()}
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out_dir.parent, f".{out_dir.name}-")
    try:
        model.to("cpu").save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / TRAINING_LOG).write_text(json.dumps(log) + "\n", encoding="utf-8")
        if manifest is not None:
            write_manifest(tmp, manifest)
        share_tree(tmp)  # safetensors writes 0600
        replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
