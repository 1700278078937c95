"""Tiny random chat models and tokenizers built offline in seconds (tests, benchmarks, smoke runs).

The tokenizer is a byte-level BPE trained on a small built-in corpus, with ChatML special tokens and
a ChatML chat template (``<|im_start|>role\\n...<|im_end|>\\n``), like Qwen2.5's. The model is a
randomly initialised Qwen2 of any size. Nothing is downloaded.

    python -m psft_assets.tiny_model OUT_DIR [--hidden 64 --layers 2 --heads 2]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = """\
Please reason step by step, and put your final answer within \\boxed{}.
The answer is \\boxed{42}. First, we add the numbers. Then we multiply the result by two.
Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.
How many clips did Natalia sell altogether in April and May? 48 / 2 = 24. 48 + 24 = 72.
Solve for x: 3x + 5 = 20. Subtract 5 from both sides: 3x = 15. Divide by 3: x = 5.
A farmer has 3 cows, 2 chickens and 4 spiders. How many legs are there in total?
Cows have 4 legs, chickens have 2 legs, spiders have 8 legs. 12 + 4 + 32 = 48 legs.
What is 17 * 23 - 9? 17 * 23 = 391, and 391 - 9 = 382. So the result is 382.
system user assistant You are a helpful assistant. Let's think about this carefully.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - * / = ( ) [ ] { } . , ; : ? !
"""


def build_tokenizer(out_dir: str | Path, vocab_size: int = 512):
    """Train a small byte-level BPE with ChatML specials and save it as a HF fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(str(out_dir))
    return fast


def random_qwen2(
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    max_position_embeddings: int,
    eos_token_id: int,
    pad_token_id: int,
    seed: int,
):
    """A Qwen2 causal LM with random fp32 weights (seeded), untied embeddings and no BOS token."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = pad_token_id
    return model


def build_tiny_model(
    out_dir: str | Path,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 2,
    num_kv_heads: int | None = None,
    intermediate_size: int | None = None,
    vocab_size: int = 512,
    max_position_embeddings: int = 2048,
    seed: int = 0,
) -> Path:
    """Save a random Qwen2 causal LM plus tokenizer into ``out_dir`` (a HF model folder)."""

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out, vocab_size=vocab_size)
    model = random_qwen2(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads or num_heads,
        max_position_embeddings=max_position_embeddings,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        seed=seed,
    )
    model.save_pretrained(str(out), safe_serialization=True)
    (out / "psft_tiny_model.json").write_text(
        json.dumps({"parameters": sum(p.numel() for p in model.parameters()), "seed": seed}) + "\n"
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    path = build_tiny_model(args.out_dir, args.hidden, args.layers, args.heads, vocab_size=args.vocab, seed=args.seed)
    print(path)


if __name__ == "__main__":
    main()
