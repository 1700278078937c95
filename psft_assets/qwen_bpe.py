"""Qwen2.5's real byte-level BPE, rebuilt offline as a Hugging Face fast tokenizer.

PyPI's ``qwen-agent`` wheel ships ``qwen_agent/utils/qwen.tiktoken``: the 151,643 BPE ranks that Qwen2 and
Qwen2.5 share (installed with ``--no-deps`` by ``scripts/setup.sh``; nothing of qwen-agent is imported).
Tests need the real vocabulary because what breaks chat templates is its merges: ``"\\n\\n"`` and
``"\\n\\r\\n"`` are single tokens, so text that starts with a newline right after ``<|im_start|>assistant\\n``
tokenises differently together than apart.

The ranks become a ``tokenizers`` BPE: the vocabulary maps each token's bytes (in the GPT-2 byte-to-unicode
alphabet) to its rank, and every token of two or more bytes gets the merges that can build it from two
shorter tokens, ordered by the rank of the result, so merging by priority picks the same pair that tiktoken's
"lowest rank first" rule picks. The pre-tokenizer is Qwen's split regex followed by the byte-level mapping.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
from pathlib import Path

# Qwen2's pre-tokenisation: newline runs are their own piece (so they merge), digits are split one by one.
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)
FIRST_SPECIAL_ID = 151643  # Qwen's ids for <|endoftext|>, <|im_start|>, <|im_end|> follow the ranks
QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def ranks_file() -> Path:
    """Where the installed qwen-agent keeps ``qwen.tiktoken`` (located without importing the package)."""
    spec = importlib.util.find_spec("qwen_agent")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("qwen-agent is not installed: run scripts/setup.sh (pip install --no-deps qwen-agent)")
    return Path(next(iter(spec.submodule_search_locations))) / "utils" / "qwen.tiktoken"


def read_ranks(path: Path) -> dict[bytes, int]:
    """``base64-token rank`` lines -> {token bytes: rank}."""
    ranks = {}
    for line in path.read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def byte_alphabet() -> list[str]:
    """GPT-2's printable stand-in for each byte value, the alphabet byte-level BPE vocabularies are written in."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every (left, right) pair of earlier tokens that forms a token, in the order the merges may fire."""
    found = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = ranks.get(token[:cut]), ranks.get(token[cut:])
            if left is not None and right is not None and left < rank and right < rank:
                found.append((rank, left, right, token[:cut], token[cut:]))
    found.sort()
    return [(left, right) for _, _, _, left, right in found]


def base_bpe_json() -> str:
    """The vocabulary, merges and pre-tokenizer as ``tokenizers`` JSON, built once (seconds) and then read
    from ``$PSFT_CACHE`` (default ``~/.cache/psft``), keyed by the ranks file's hash."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

    source = ranks_file()
    digest = hashlib.sha256(source.read_bytes() + QWEN_PATTERN.encode()).hexdigest()[:16]
    cached = Path(os.environ.get("PSFT_CACHE", Path.home() / ".cache" / "psft")) / f"qwen-bpe-{digest}.json"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    ranks = read_ranks(source)
    alphabet = byte_alphabet()

    def text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(left), text(right)) for left, right in merges_from_ranks(ranks)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    serialised = tok.to_str()
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
    partial.write_text(serialised, encoding="utf-8")
    partial.replace(cached)  # atomic: parallel test workers never read half a file
    return serialised


def build_qwen_tokenizer(
    specials: tuple[str, ...] = QWEN_SPECIALS,
    added: tuple[str, ...] = (),
    chat_template: str | None = None,
    eos: str = "<|im_end|>",
    bos: str | None = None,
):
    """A ``PreTrainedTokenizerFast`` with Qwen2.5's vocabulary and merges, ``specials`` as special tokens from
    id 151643 on, ``added`` as ordinary added tokens after them (Qwen3's ``<think>``, for example), and
    ``eos``/``bos`` among the specials."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(base_bpe_json())
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in added])
    named = {eos, bos, "<|endoftext|>"}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=eos,
        bos_token=bos,
        pad_token="<|endoftext|>" if "<|endoftext|>" in specials else None,
        additional_special_tokens=[s for s in specials if s not in named],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    return fast
