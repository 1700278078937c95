"""The eval CLI against a real local HTTP server that we control: retries, recorded errors, resume,
refusal to mix runs, Ctrl-C, and bad input rejected before any work."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from evaluation import eval as evalcli
from evaluation.store import SAMPLES_FILE, SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[2]
PROBLEMS = [("What is 1+1?", "2"), ("What is 2+3?", "5"), ("Name the letter", "C")]


class FakeOpenAI:
    """A chat-completions server whose behaviour the test scripts: a status code per request, or a
    hang. Replies answer correctly for even sample slots (answer from the prompt table)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[int | str] = []  # consumed per request: an HTTP status, or "hang"
        self.default: int | str = 200
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append(body)
                    action = owner.script.pop(0) if owner.script else owner.default
                if action == "hang":
                    time.sleep(30)
                    return
                if action != 200:
                    self.send_response(int(action))
                    self.end_headers()
                    self.wfile.write(b"service unavailable")
                    return
                question = body["messages"][-1]["content"]
                answer = dict(PROBLEMS)[question]
                choices = []
                for i in range(body["n"]):
                    text = f"Thinking... \\boxed{{{answer}}}" if i % 2 == 0 else "I give up"
                    choices.append(
                        {
                            "index": i,
                            "message": {"role": "assistant", "content": text},
                            "finish_reason": "stop" if i % 2 == 0 else "length",
                            "token_ids": list(range(3 + i)),
                        }
                    )
                data = json.dumps({"choices": choices, "usage": {"completion_tokens": 0}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    s = FakeOpenAI()
    yield s
    s.close()


def write_jsonl(path: Path, repeat: int = 1) -> Path:
    with open(path, "w") as f:
        for _ in range(repeat):
            for i, (q, a) in enumerate(PROBLEMS):
                row = {
                    "data_source": "toy" if i < 2 else "mc",
                    "prompt": [{"role": "user", "content": q}],
                    "ability": "math",
                    "reward_model": {"ground_truth": a, "style": "rule"},
                    "extra_info": {"split": "test", "index": 10 + i},
                }
                f.write(json.dumps(row) + "\n")
    return path


def run_cli(test_file: Path, out: Path, url: str, *extra: str) -> int:
    argv = ["--model", "tiny", "--test_file", str(test_file), "--output", str(out), "--base-url", url]
    argv += ["--max_tokens", "16", "--retry-delay", "0.01", "--no-progress", *extra]
    return evalcli.main(argv)


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / SAMPLES_FILE).read_text().splitlines()]


def test_full_run_outputs_and_summary(tmp_path: Path, server: FakeOpenAI):
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    assert run_cli(test_file, out, server.url, "--n", "4") == 0
    got = rows(out)
    assert len(got) == 12 and len(server.requests) == 3
    assert {r["problem_id"] for r in got} == {10, 11, 12}
    assert all(r["n"] == 4 and r["temperature"] == 0.7 and r["top_p"] == 0.95 for r in server.requests)
    assert all(r["max_tokens"] == 16 for r in server.requests)
    first = [r for r in got if r["problem_id"] == 10 and r["sample_index"] == 0][0]
    assert first["correct"] is True and first["extracted_answer"] == "2" and first["boxed"] is True
    assert first["completion_tokens"] == 3 and first["finish_reason"] == "stop"
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["complete"] and summary["n"] == 4
    o = summary["overall"]
    assert o["avg@4"] == pytest.approx(0.5) and o["pass@k"]["4"]["value"] == 1.0
    assert o["pass@k"]["1"]["value"] == pytest.approx(0.5)
    assert o["truncated_share"] == pytest.approx(0.5) and o["boxed_share"] == pytest.approx(0.5)
    assert set(summary["by_data_source"]) == {"toy", "mc"}
    assert summary["by_data_source"]["toy"]["problems"] == 2
    assert summary["sampling"] == {"temperature": 0.7, "top_p": 0.95, "max_tokens": 16, "seed": None}
    assert len(summary["test_file_sha256"]) == 64


def test_repeated_rows_are_grouped_and_set_n(tmp_path: Path, server: FakeOpenAI):
    """The original's layout (each problem k times) gives k samples of each problem, not k problems."""
    test_file = write_jsonl(tmp_path / "t.jsonl", repeat=3)
    out = tmp_path / "out"
    assert run_cli(test_file, out, server.url) == 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["n"] == 3 and summary["overall"]["problems"] == 3
    assert len(rows(out)) == 9


def test_transient_errors_are_retried(tmp_path: Path, server: FakeOpenAI):
    server.script = [503, 502]
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    assert run_cli(test_file, out, server.url, "--n", "2", "--concurrency", "1") == 0
    assert len(server.requests) == 5  # 3 jobs + 2 retries
    assert all(r["error"] is None for r in rows(out))


def test_failing_server_is_recorded_then_resumed(tmp_path: Path, server: FakeOpenAI):
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    # The first job succeeds, then the server fails for good.
    server.script = [200]
    server.default = 503
    code = run_cli(test_file, out, server.url, "--n", "2", "--concurrency", "1", "--max-retries", "2")
    assert code == evalcli.EXIT_ERRORS
    got = rows(out)
    assert len(server.requests) == 1 + 2 * 3  # two failing jobs, 1 try + 2 retries each
    errors = [r for r in got if r["error"] is not None]
    assert len(errors) == 4 and all(r["correct"] is None for r in errors)
    assert all("503" in r["error"] for r in errors)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["complete"] is False and summary["overall"]["samples_errored"] == 4

    # The server recovers: the same command generates only the failed samples.
    server.default = 200
    server.requests.clear()
    assert run_cli(test_file, out, server.url, "--n", "2", "--concurrency", "1") == 0
    assert len(server.requests) == 2
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["complete"] and summary["overall"]["samples_graded"] == 6


def test_non_retryable_error_is_not_retried(tmp_path: Path, server: FakeOpenAI):
    server.default = 400
    test_file = write_jsonl(tmp_path / "t.jsonl")
    assert run_cli(test_file, tmp_path / "out", server.url, "--n", "1") == evalcli.EXIT_ERRORS
    assert len(server.requests) == 3


def test_resume_reuses_samples_and_extends_n(tmp_path: Path, server: FakeOpenAI):
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    assert run_cli(test_file, out, server.url, "--n", "2") == 0
    before = rows(out)
    # A crash mid-write leaves half a line; it is dropped, the rest is reused.
    with open(out / SAMPLES_FILE, "a") as f:
        f.write('{"problem_id": 10, "sample_ind')
    server.requests.clear()
    assert run_cli(test_file, out, server.url, "--n", "4") == 0
    assert [r["n"] for r in server.requests] == [2, 2, 2]
    after = rows(out)
    assert after[: len(before)] == before and len(after) == 12
    assert sorted((r["problem_id"], r["sample_index"]) for r in after[len(before) :]) == [
        (p, i) for p in (10, 11, 12) for i in (2, 3)
    ]
    server.requests.clear()
    assert run_cli(test_file, out, server.url, "--n", "4") == 0
    assert server.requests == []  # nothing left to do


def test_refuses_to_mix_settings(tmp_path: Path, server: FakeOpenAI, capsys: pytest.CaptureFixture):
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    assert run_cli(test_file, out, server.url, "--n", "1") == 0
    assert run_cli(test_file, out, server.url, "--n", "1", "--temperature", "1.0") == evalcli.EXIT_BAD_INPUT
    assert "temperature: was 0.7, now 1.0" in capsys.readouterr().err
    write_jsonl(test_file, repeat=2)  # the test file changed
    assert run_cli(test_file, out, server.url, "--n", "1") == evalcli.EXIT_BAD_INPUT
    assert "test_file_sha256" in capsys.readouterr().err


def test_ctrl_c_keeps_finished_samples(tmp_path: Path, server: FakeOpenAI):
    """SIGINT while a request hangs: finished problems are on disk, the rerun does only the rest."""
    server.script = [200, "hang"]
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "evaluation.eval", "--model", "tiny", "--test_file", str(test_file)]
    cmd += ["--output", str(out), "--base-url", server.url, "--n", "2", "--concurrency", "1", "--no-progress"]
    cmd += ["--max_tokens", "16"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(server.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(server.requests) == 2, "the second request never arrived"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == evalcli.EXIT_INTERRUPTED, err
    assert "resume" in err
    assert {r["problem_id"] for r in rows(out)} == {10}
    server.requests.clear()
    assert run_cli(test_file, out, server.url, "--n", "2") == 0
    assert len(server.requests) == 2 and len(rows(out)) == 6


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"prompt": [{"role": "user", "content": "q"}]}\n', "missing column(s) ['reward_model']"),
        (
            '{"prompt": [{"role": "user", "content": "q"}], "reward_model": {"style": "rule"}}\n',
            "row 1: 'reward_model.ground_truth': ground truth is missing",
        ),
        (
            '{"prompt": [{"role": "assistant", "content": "q"}], "reward_model": {"ground_truth": "1"}}\n',
            "row 1: 'prompt': the last prompt message must be the user's",
        ),
        ("not json\n", "row 1: invalid JSON"),
    ],
)
def test_bad_input_fails_fast(tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture):
    test_file = tmp_path / "bad.jsonl"
    test_file.write_text(content)
    start = time.monotonic()
    # The vllm backend with a model that does not exist: the data error must come first.
    argv = ["--backend", "vllm", "--model", "/nonexistent", "--test_file", str(test_file)]
    code = evalcli.main(argv + ["--output", str(tmp_path / "out")])
    assert code == evalcli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert message in err and str(test_file) in err
    assert time.monotonic() - start < 5


def test_unreadable_and_conflicting_files(tmp_path: Path, capsys: pytest.CaptureFixture):
    out = str(tmp_path / "out")
    assert evalcli.main(["--model", "m", "--test_file", str(tmp_path / "missing.parquet"), "--output", out]) == 2
    assert "no such file" in capsys.readouterr().err
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not a parquet file")
    assert evalcli.main(["--model", "m", "--test_file", str(broken), "--output", out]) == 2
    assert "cannot read as parquet" in capsys.readouterr().err
    conflict = tmp_path / "conflict.jsonl"
    row = {"prompt": [{"role": "user", "content": "q"}], "reward_model": {"ground_truth": "1"}}
    conflict.write_text(json.dumps(row) + "\n" + json.dumps({**row, "reward_model": {"ground_truth": "2"}}) + "\n")
    assert evalcli.main(["--model", "m", "--test_file", str(conflict), "--output", out]) == 2
    assert "rows 1 and 2: same prompt, different ground truths" in capsys.readouterr().err


def test_parquet_layout_of_prepare_data(tmp_path: Path, server: FakeOpenAI):
    """The columns prepare_data.py writes, read through pyarrow (nested structs and lists)."""
    import pandas as pd

    rows_ = [json.loads(line) for line in write_jsonl(tmp_path / "t.jsonl").read_text().splitlines()]
    pd.DataFrame(rows_).to_parquet(tmp_path / "t.parquet")
    out = tmp_path / "out"
    assert run_cli(tmp_path / "t.parquet", out, server.url, "--n", "2") == 0
    assert {r["problem_id"] for r in rows(out)} == {10, 11, 12}
