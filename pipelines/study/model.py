"""The study's model side: a character-level chat tokenizer, a small Qwen2, and the adapter that turns
a forward pass into the inputs verl's engine hands to a loss (nested, jagged ``log_probs``).

The tokenizer is saved as a Hugging Face fast tokenizer with a ChatML template, so the model folder
is an ordinary HF checkpoint that the recipe's real trainer (``python -m recipe.psft.main_psft``) and
the light loop in :mod:`pipelines.study.finetune` load alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .world import Example, alphabet

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ModelSize:
    hidden: int = 96
    layers: int = 3
    heads: int = 4
    intermediate: int = 384
    max_positions: int = 128


class CharTokenizer:
    """Characters of the world's alphabet plus the ChatML specials, one token each."""

    def __init__(self) -> None:
        self.tokens = list(SPECIALS) + list(alphabet())
        self.ids = {t: i for i, t in enumerate(self.tokens)}
        self.pad_id, self.start_id, self.end_id = (self.ids[s] for s in SPECIALS)

    def __len__(self) -> int:
        return len(self.tokens)

    def text_ids(self, text: str) -> list[int]:
        try:
            return [self.ids[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} in {text!r} is not in the study's alphabet") from None

    def prompt_ids(self, prompt: str) -> list[int]:
        """ChatML rendering of one user turn plus the generation prompt (same as the template)."""
        return (
            [self.start_id] + self.text_ids(f"user\n{prompt}") + [self.end_id]
            + self.text_ids("\n") + [self.start_id] + self.text_ids("assistant\n")
        )

    def encode(self, example: Example) -> tuple[list[int], list[int]]:
        """(input_ids, loss_mask) as the recipe's dataset makes them: loss on the demonstration and its
        end-of-turn token, not on the newline the template appends after it."""
        prompt = self.prompt_ids(example.prompt)
        answer = self.text_ids(example.demonstration) + [self.end_id]
        newline = self.text_ids("\n")
        return prompt + answer + newline, [0] * len(prompt) + [1] * len(answer) + [0] * len(newline)

    def decode(self, ids: list[int]) -> str:
        out = []
        for i in ids:
            if i == self.end_id:
                break
            if i >= len(SPECIALS):
                out.append(self.tokens[i])
        return "".join(out)

    def save_hf(self, out_dir: Path) -> None:
        """Save as a HF fast tokenizer (one token per character, ChatML template) for the trainer.

        A byte-level BPE without merges: every character is one token. Byte-level, because loaders
        that go by the model folder's ``model_type`` (qwen2) apply Qwen2's byte-level pre-tokenizer,
        which drops whitespace missing from the vocabulary in its byte form (space is "Ġ", newline
        "Ċ"). Checked after saving: the saved folder's tokenizer must render a conversation exactly as
        :meth:`encode` does.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        def byte_form(char: str) -> str:  # GPT-2's byte-to-unicode map, for the ASCII we use
            return chr(256 + ord(char)) if ord(char) <= 32 else char

        vocab = {(t if t in SPECIALS else byte_form(t)): i for t, i in self.ids.items()}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tok,
            eos_token="<|im_end|>",
            pad_token="<|endoftext|>",
            additional_special_tokens=["<|im_start|>"],
        )
        fast.chat_template = CHATML_TEMPLATE
        fast.save_pretrained(str(out_dir))

        probe = Example("probe", 0, "What is 12 + 34?", "Adding 12 and 34 gives 46", "46")
        loaded = AutoTokenizer.from_pretrained(str(out_dir))
        messages = probe.row()["prompt"] + [{"role": "assistant", "content": probe.demonstration}]
        text = loaded.apply_chat_template(messages, tokenize=False)
        if loaded(text, add_special_tokens=False)["input_ids"] != self.encode(probe)[0]:
            raise RuntimeError(f"{out_dir}: the saved tokenizer does not reproduce the study's character tokens")


def build_model(size: ModelSize, tokenizer: CharTokenizer, seed: int):
    from psft_assets.tiny_model import random_qwen2

    return random_qwen2(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden,
        intermediate_size=size.intermediate,
        num_layers=size.layers,
        num_heads=size.heads,
        num_kv_heads=size.heads,
        max_position_embeddings=size.max_positions,
        eos_token_id=tokenizer.end_id,
        pad_token_id=tokenizer.pad_id,
        seed=seed,
    )


def size_dict(size: ModelSize) -> dict:
    return asdict(size)


# --- verl-engine-shaped inputs --------------------------------------------------------------------


@dataclass
class Batch:
    """Right-padded token ids with the per-row lengths and loss masks (one row per demonstration)."""

    input_ids: torch.Tensor  # (rows, max_len), padded
    attention: torch.Tensor  # (rows, max_len) bool
    loss_mask: torch.Tensor  # (rows, max_len), 1 on demonstration tokens

    @classmethod
    def of(cls, encoded: list[tuple[list[int], list[int]]], pad_id: int) -> Batch:
        width = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.bool)
        for row, (i, m) in enumerate(encoded):
            ids[row, : len(i)] = torch.tensor(i)
            mask[row, : len(m)] = torch.tensor(m)
            attention[row, : len(i)] = True
        return cls(ids, attention, mask)

    def select(self, rows: torch.Tensor) -> Batch:
        return Batch(self.input_ids[rows], self.attention[rows], self.loss_mask[rows])

    def offsets(self) -> torch.Tensor:
        lengths = self.attention.sum(dim=1)
        return torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])

    def jagged(self, padded: torch.Tensor) -> torch.Tensor:
        """A (rows, max_len) tensor as a jagged nested tensor over each row's real tokens, like the
        ``input_ids`` / ``loss_mask`` / ``log_probs`` verl's engine passes to a loss."""
        return torch.nested.nested_tensor_from_jagged(padded[self.attention], self.offsets())


def padded_log_probs(model, batch: Batch, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log_probs[:, t]`` = log p(token t + 1 | tokens <= t) (rows x max_len), and the token entropy.

    The last real position of each row scores a pad: verl's packed layout scores the next row's
    first token there. Either way the loss mask, rolled by one like in verl, is 0 at those positions.
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention.long()).logits.float()
    targets = torch.roll(batch.input_ids, shifts=-1, dims=1)
    log_softmax = F.log_softmax(logits, dim=-1)
    log_probs = log_softmax.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(log_softmax.exp() * log_softmax).sum(-1)
    return log_probs, entropy


def forward_log_probs(model, batch: Batch, with_entropy: bool = False) -> dict[str, torch.Tensor]:
    """verl's ``model_output`` for a loss call: jagged ``log_probs`` (and ``entropy``) per row."""
    log_probs, entropy = padded_log_probs(model, batch, with_entropy)
    out = {"log_probs": batch.jagged(log_probs)}
    if entropy is not None:
        out["entropy"] = batch.jagged(entropy)
    return out


def engine_data(batch: Batch, old_log_probs: torch.Tensor | None = None, **extra) -> dict:
    """verl's ``data`` for a loss call on one rank (dp_size 1): jagged loss mask, the mini-batch's
    demonstration token count, optional snapshot log-probs (jagged, like ``log_probs``)."""
    data = {
        "input_ids": batch.jagged(batch.input_ids),
        "loss_mask": batch.jagged(batch.loss_mask),
        "dp_size": 1,
        "batch_num_tokens": int(batch.loss_mask.sum()),
    }
    if old_log_probs is not None:
        data["old_log_probs"] = old_log_probs
    data.update(extra)
    return data


@torch.no_grad()
def greedy_answers(model, tokenizer: CharTokenizer, examples: list[Example], max_new_tokens: int = 36) -> list[str]:
    """Greedy completions of the examples' prompts (batched, left-padded, KV cache)."""
    prompts = [tokenizer.prompt_ids(e.prompt) for e in examples]
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), tokenizer.pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    for row, p in enumerate(prompts):
        ids[row, width - len(p):] = torch.tensor(p)
        attention[row, width - len(p):] = 1
    out = model.generate(
        input_ids=ids,
        attention_mask=attention,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=tokenizer.end_id,
        pad_token_id=tokenizer.pad_id,
    )
    return [tokenizer.decode(row[width:].tolist()) for row in out]
