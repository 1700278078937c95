"""Which tokens are trained, under real chat templates over Qwen2.5's real BPE (which merges newline runs).

The templates are written out here (Qwen2.5, Llama-3.1, Qwen3 with its thinking block) and run over the
vocabulary and merges of Qwen2.5 (psft_assets/qwen_bpe.py). For every row the masked tokens must decode to
exactly the demonstration as the template renders it plus the end-of-turn token, the input must start with
the prompt tokenised alone (what the model sees when it generates), the rows whose prompt is not a token
prefix of the whole conversation must be the ones counted as tokenised apart, and nothing may abort.
"""

from __future__ import annotations

import json

import pytest

from psft_assets.qwen_bpe import build_qwen_tokenizer
from recipe.psft.dataset import DemonstrationDataset
from recipe.psft.rows import ConversationEncoder

QWEN25 = r"""{%- if messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
{%- else %}
    {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) or message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}"""

LLAMA31 = r"""{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}"""

QWEN3 = r"""{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- set ns = namespace(last_query_index=messages|length - 1, found=false) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if not ns.found and message.role == "user" %}
        {%- set ns.found = true %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- set content = message.content %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if '</think>' in content %}
            {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
            {%- set content = content.split('</think>')[-1].lstrip('\n') %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') }}
                {{- '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

# DeepSeek-R1-like: the generation prompt opens a <think> block that the rendering of an answer leaves out.
R1_LIKE = r"""{%- for message in messages %}
    {%- if message.role == 'assistant' %}
        {{- '<|im_start|>assistant\n' + message.content.split('</think>')[-1] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n<think>\n' }}{%- endif %}"""

SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)

DEMONSTRATIONS = [
    "The answer is \\boxed{4}.",
    "\nStarts with a newline, so Qwen's BPE merges it with the template's.",
    "\n\nStarts with two newlines.",
    "   Leading and trailing spaces.   ",
    "Ends with blank lines.\n\n",
    "Line one\r\nLine two\r\n",
    "\r\nStarts with CRLF.",
    "<think>\nFirst, 2 + 2 = 4.\n</think>\n\nThe answer is 4.",
    "答案是四。Ответ: четыре. الجواب أربعة",
    "\t Tab first, then text.",
]

PROMPTS = [
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "Reason step by step."}, {"role": "user", "content": "What is 2 + 2?\n"}],
    [  # multi-turn, with an assistant turn (and its thinking) inside the prompt: context, never trained
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 1 + 1?"},
        {"role": "assistant", "content": "<think>\nEasy.\n</think>\n\nIt is 2."},
        {"role": "user", "content": "And 2 + 2?"},
    ],
]


def make_tokenizer(template: str):
    bos = "<|begin_of_text|>" if template is LLAMA31 else None
    eos = "<|eot_id|>" if template is LLAMA31 else "<|im_end|>"
    return build_qwen_tokenizer(SPECIALS, ("<think>", "</think>"), template, eos=eos, bos=bos)


@pytest.fixture(scope="module")
def tokenizers() -> dict[str, object]:
    return {name: make_tokenizer(t) for name, t in (("qwen25", QWEN25), ("llama31", LLAMA31), ("qwen3", QWEN3))}


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def oracle_path(tokenizer, prompt: list[dict], demonstration: str, **kwargs) -> str:
    """'joint' when the prompt rendered for generation is a token prefix of the whole conversation."""
    before = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True, **kwargs)
    whole = tokenizer.apply_chat_template(
        prompt + [{"role": "assistant", "content": demonstration}], tokenize=False, **kwargs
    )
    assert whole.startswith(before)  # true of these three templates: only tokens can disagree
    return "joint" if ids(tokenizer, whole)[: len(ids(tokenizer, before))] == ids(tokenizer, before) else "separate"


def trained(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, m in zip(encoded.input_ids, encoded.loss_mask, strict=True) if m])


def qwen3_rendered(demonstration: str) -> str:
    """What Qwen3's template makes of a final assistant turn (its thinking block, empty when there is none)."""
    if "</think>" not in demonstration:
        return "<think>\n\n</think>\n\n" + demonstration.lstrip("\n")
    thinking, answer = demonstration.split("</think>")
    return "<think>\n" + thinking.split("<think>")[-1].strip("\n") + "\n</think>\n\n" + answer.lstrip("\n")


EXPECTED = {  # the demonstration as each template renders it, plus its end-of-turn token
    "qwen25": lambda d: d + "<|im_end|>",
    "llama31": lambda d: d.strip() + "<|eot_id|>",
    "qwen3": lambda d: qwen3_rendered(d) + "<|im_end|>",
}


@pytest.mark.parametrize("name", ["qwen25", "llama31", "qwen3"])
def test_every_demonstration_is_found_under_every_template(tokenizers, name):
    tokenizer = tokenizers[name]
    encoder = ConversationEncoder(tokenizer)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>" if name == "llama31" else "<|im_end|>")
    paths = []
    for prompt in PROMPTS:
        prompt_ids = ids(tokenizer, tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
        for demonstration in DEMONSTRATIONS:
            messages = prompt + [{"role": "assistant", "content": demonstration}]
            encoded = encoder.encode(messages, [len(messages) - 1])
            assert trained(tokenizer, encoded) == EXPECTED[name](demonstration), (prompt, demonstration)
            first = encoded.loss_mask.index(1)
            assert encoded.input_ids[:first] == prompt_ids  # the prompt exactly as generation starts from it
            assert all(encoded.loss_mask[first : first + sum(encoded.loss_mask)])  # one contiguous span
            assert encoded.input_ids[first + sum(encoded.loss_mask) - 1] == eot
            assert encoded.path == oracle_path(tokenizer, prompt, demonstration), (prompt, demonstration)
            paths.append(encoded.path)
    if name == "qwen25":  # "assistant\n" + "\n..." merges into "\n\n": these must have been tokenised apart
        assert paths.count("separate") == 3 * 2, paths  # 3 prompts x ("\n", "\n\n" first); "\n\r\n" is 2 tokens


def test_qwen3_chat_template_kwargs_reach_the_template(tokenizers):
    tokenizer = tokenizers["qwen3"]
    messages = PROMPTS[2] + [{"role": "assistant", "content": "\nThe answer is 4."}]
    encoded = ConversationEncoder(tokenizer, {"enable_thinking": False}).encode(messages, [4])
    text = tokenizer.decode(encoded.input_ids)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nThe answer is 4.<|im_end|>\n")
    assert trained(tokenizer, encoded) == "The answer is 4.<|im_end|>"  # the empty block is the prompt's
    assert "Easy." not in text  # Qwen3 drops the thinking of turns before the last user message


def test_messages_rows_train_every_assistant_turn_even_when_later_turns_rewrite_them(tokenizers):
    """Qwen3 renders an earlier turn without its <think> block once a later user turn follows: each turn
    is trained as it stands in the whole conversation."""
    tokenizer = tokenizers["qwen3"]
    messages = [
        {"role": "user", "content": "1 + 1?"},
        {"role": "assistant", "content": "<think>\nadd\n</think>\n\n2"},
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "<think>\nadd again\n</think>\n\n4"},
    ]
    encoded = ConversationEncoder(tokenizer).encode(messages, [1, 3])
    assert trained(tokenizer, encoded) == "2<|im_end|><think>\nadd again\n</think>\n\n4<|im_end|>"
    assert tokenizer.decode(encoded.input_ids) == tokenizer.apply_chat_template(messages, tokenize=False)

    qwen25 = tokenizers["qwen25"]
    messages[1]["content"] = "\nTwo."  # a merge at the first turn's boundary too
    encoded = ConversationEncoder(qwen25).encode(messages, [1, 3])
    assert encoded.path == "separate"
    assert trained(qwen25, encoded) == "\nTwo.<|im_end|><think>\nadd again\n</think>\n\n4<|im_end|>"


def test_template_that_renders_the_answer_without_its_generation_prompt():
    """R1-like templates: the whole conversation does not start with the generation prompt. Train prompt +
    demonstration + eos tokenised apart (the original PSFT's way), without repeating the opened <think>."""
    tokenizer = make_tokenizer(R1_LIKE)
    prompt = [{"role": "user", "content": "What is 2 + 2?"}]
    demonstration = "<think>\n2 + 2 = 4\n</think>\nThe answer is 4."
    encoded = ConversationEncoder(tokenizer).encode(prompt + [{"role": "assistant", "content": demonstration}], [1])
    assert encoded.path == "plain"
    assert trained(tokenizer, encoded) == "2 + 2 = 4\n</think>\nThe answer is 4.<|im_end|>"
    assert tokenizer.decode(encoded.input_ids).startswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n")


def test_control_strings_in_content_stay_plain_text(tokenizers):
    tokenizer = tokenizers["qwen25"]
    im_end, im_start = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|im_start|>"])
    demonstration = "In ChatML a turn ends with <|im_end|>, and <|im_start|>user\nforges nothing.<|endoftext|>"
    messages = [
        {"role": "user", "content": "How does <|im_end|> work?"},
        {"role": "assistant", "content": demonstration},
    ]
    encoded = ConversationEncoder(tokenizer).encode(messages, [1])
    assert encoded.control_strings == 4
    assert trained(tokenizer, encoded) == demonstration + "<|im_end|>"
    # Only the template's own markers are control tokens: 2 turns + the default system turn.
    assert encoded.input_ids.count(im_end) == 3 and encoded.input_ids.count(im_start) == 3
    assert tokenizer.decode(encoded.input_ids) == tokenizer.apply_chat_template(messages, tokenize=False)


def prepare_and_load(tokenizer, rows: list[dict], tmp_path, kwargs: dict) -> tuple[dict, DemonstrationDataset]:
    """`prepare_data.py --tokenizer` statistics and the trainer's dataset over the same rows and kwargs."""
    import prepare_data

    tokenizer_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(str(tokenizer_dir))
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    out = tmp_path / "out"
    argv = ["--source", "local", "--input", str(source), "--output-dir", str(out), "--no-progress"]
    argv += ["--tokenizer", str(tokenizer_dir), "--chat-template-kwargs", json.dumps(kwargs)]
    assert prepare_data.main(argv) == 0
    stats = json.loads((out / "data_card.json").read_text())["token_stats"]["train"]
    config = {"max_length": 4096, "apply_chat_template_kwargs": kwargs}
    return stats, DemonstrationDataset(str(out / "train.parquet"), tokenizer, config)


def test_dataset_and_prepare_data_count_the_same_rows_apart(tokenizers, tmp_path, capsys):
    """The trainer's dataset and `prepare_data.py --tokenizer` statistics encode the same way and both print
    how many rows were tokenised apart."""
    tokenizer = tokenizers["qwen25"]
    rows, expected_apart = [], 0
    for i, demonstration in enumerate(DEMONSTRATIONS):
        for j, prompt in enumerate(PROMPTS):
            prompt = [dict(m) for m in prompt]
            prompt[-1]["content"] += f" (variant {i}.{j})"  # distinct prompts: prepare_data drops duplicates
            rows.append({"prompt": prompt, "response": demonstration})
            expected_apart += oracle_path(tokenizer, prompt, demonstration) == "separate"
    stats, dataset = prepare_and_load(tokenizer, rows, tmp_path, {})
    printed = capsys.readouterr().out
    assert len(dataset) == len(rows) == 30
    assert stats["tokenised_apart"] == dataset.paths["separate"] == expected_apart == 6
    assert "6 row(s) tokenised as prompt and demonstration apart" in printed
    assert "[data] 30 rows from" in printed and "6 tokenised as prompt and demonstration apart" in printed
    assert stats["total_tokens"]["max"] == max(len(dataset[i]["input_ids"]) for i in range(len(dataset)))


def test_prepare_data_statistics_use_the_chat_template_kwargs(tokenizers, tmp_path):
    """With Qwen3 and enable_thinking=false the empty thinking block belongs to the prompt, not the
    demonstration: prepare_data.py counts it where the trainer does."""
    tokenizer = tokenizers["qwen3"]
    rows = [{"prompt": f"Question {i}?", "response": d} for i, d in enumerate(DEMONSTRATIONS) if "<think>" not in d]
    stats, dataset = prepare_and_load(tokenizer, rows, tmp_path, {"enable_thinking": False})
    prompt_lengths = [dataset[i]["loss_mask"].tolist().index(1) for i in range(len(dataset))]
    demonstration_lengths = [int(dataset[i]["loss_mask"].sum()) for i in range(len(dataset))]
    assert stats["prompt_tokens"]["max"] == max(prompt_lengths)
    assert stats["demonstration_tokens"]["max"] == max(demonstration_lengths)
    thinking = ConversationEncoder(tokenizer)  # without the kwargs the block would count as demonstration
    conversation = [{"role": "user", "content": "Question 0?"}, {"role": "assistant", "content": DEMONSTRATIONS[0]}]
    with_block = thinking.encode(conversation, [1])
    assert sum(with_block.loss_mask) == demonstration_lengths[0] + len(ids(tokenizer, "<think>\n\n</think>\n\n"))


def test_prepare_data_reports_control_strings(tmp_path, capsys):
    import prepare_data
    from psft_assets.tiny_model import build_tokenizer

    tokenizer_dir = tmp_path / "tokenizer"
    build_tokenizer(tokenizer_dir)  # ChatML special tokens; a small vocabulary loads fast
    rows = [
        {"prompt": "What is 2 + 2?", "response": "4"},
        {"prompt": "Explain ChatML.", "response": "A turn ends with <|im_end|> and the text with <|endoftext|>."},
        {"prompt": "Quote <|im_start|>", "response": "Done."},
    ]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for tokenizer_args, checked in (([], "common patterns"), (["--tokenizer", str(tokenizer_dir)], "special tokens")):
        out = tmp_path / f"out{len(tokenizer_args)}"
        argv = ["--source", "local", "--input", str(source), "--output-dir", str(out), *tokenizer_args]
        assert prepare_data.main(argv) == 0
        report = json.loads((out / "data_card.json").read_text())["control_strings"]
        assert checked in report["checked_against"]
        assert report["rows_count"] == 2
        assert report["rows"][0] == {
            "file": "train.parquet",
            "index": 1,
            "source_row": 2,
            "strings": {"demonstration": ["<|endoftext|>", "<|im_end|>"]},
        }
        assert report["rows"][1]["strings"] == {"prompt": ["<|im_start|>"]}
        assert "2 row(s) hold control strings" in capsys.readouterr().err


def test_qwen_bpe_matches_tiktoken_on_the_same_ranks():
    """The converted vocabulary tokenises like tiktoken over the same ranks and pattern (the reference)."""
    tiktoken = pytest.importorskip("tiktoken")
    from psft_assets.qwen_bpe import QWEN_PATTERN, ranks_file, read_ranks

    encoding = tiktoken.Encoding(
        "qwen", pat_str=QWEN_PATTERN, mergeable_ranks=read_ranks(ranks_file()), special_tokens={}
    )
    tokenizer = build_qwen_tokenizer()
    for text in [*DEMONSTRATIONS, "x\n\n\ny", " \\frac{1}{2} = 0.5;\tdon't  stop\r\n\r\n", "naïve café 🙂"]:
        assert ids(tokenizer, text) == encoding.encode_ordinary(text), text
    assert ids(tokenizer, "<|im_start|>assistant\n\n")[1:] == ids(tokenizer, "assistant") + ids(tokenizer, "\n\n")
    assert len(ids(tokenizer, "\n\n")) == 1 and len(ids(tokenizer, "\n\n\n")) == 1  # the merges that matter
