"""What the dataset trains on: the demonstration and its end-of-turn token, nothing else."""

from __future__ import annotations

from transformers import AutoTokenizer

from psft_assets.toy_rows import write_parquet
from recipe.psft.dataset import DemonstrationDataset


def trained_text(dataset, tokenizer, index: int = 0) -> str:
    item = dataset[index]
    ids = [t for t, m in zip(item["input_ids"].tolist(), item["loss_mask"].tolist(), strict=True) if m]
    return tokenizer.decode(ids)


def test_loss_covers_demonstration_and_end_of_turn_only(tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [
        {
            "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}],
            "demonstration": "2 + 3 = 5. The answer is \\boxed{5}.",
        }
    ]
    dataset = DemonstrationDataset(str(write_parquet(rows, tmp_path / "d.parquet")), tokenizer, {"max_length": 256})
    assert trained_text(dataset, tokenizer) == "2 + 3 = 5. The answer is \\boxed{5}.<|im_end|>"
    full = tokenizer.decode(dataset[0]["input_ids"].tolist())
    assert full.endswith("<|im_end|>\n")  # the template's trailing newline is in the input, not in the loss


def test_verl_messages_rows_train_every_assistant_turn(tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"},
            ]
        }
    ]
    dataset = DemonstrationDataset(str(write_parquet(rows, tmp_path / "m.parquet")), tokenizer, {"max_length": 256})
    assert trained_text(dataset, tokenizer) == "Hello!<|im_end|>4<|im_end|>"


def test_plain_string_prompt_is_a_user_turn(tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = [{"prompt": "What is 1 + 1?", "demonstration": "2"}]
    dataset = DemonstrationDataset(str(write_parquet(rows, tmp_path / "s.parquet")), tokenizer, {"max_length": 64})
    text = tokenizer.decode(dataset[0]["input_ids"].tolist())
    assert text.startswith("<|im_start|>user\nWhat is 1 + 1?<|im_end|>")
    assert trained_text(dataset, tokenizer) == "2<|im_end|>"
