"""The eval CLI against a real local HTTP server that we control: retries, recorded errors, resume,
refusal to mix runs, Ctrl-C, and bad input rejected before any work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from time_limits import limit

from evaluation import eval as evalcli
from evaluation.store import SAMPLES_FILE, SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[2]
PROBLEMS = [("What is 1+1?", "2"), ("What is 2+3?", "5"), ("Name the letter", "C")]


class FakeOpenAI:
    """A chat-completions server whose behaviour the test scripts: a status code per request, or a
    hang. Replies answer correctly for even sample slots (answer from the prompt table)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        # consumed per request: an HTTP status, "hang", or "raw:<body>" (a 200 with that exact body)
        self.script: list[int | str] = []
        self.answer_text = "Thinking... \\boxed{{{answer}}}"  # even sample slots; odd ones give up
        self.default: int | str = 200
        # GET route -> JSON body answered with 200 (a list: one body per request, the last one repeated);
        # any other GET is a 404, as on a plain vLLM server without the Serve app's routes.
        self.get_routes: dict[str, object] = {}
        self.auth: list[str | None] = []  # the Authorization header of every request
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_GET(self) -> None:
                with owner.lock:
                    owner.auth.append(self.headers.get("Authorization"))
                    body = owner.get_routes.get(self.path)
                    if isinstance(body, list):
                        body = body.pop(0) if len(body) > 1 else body[0]
                data = json.dumps(body).encode()
                self.send_response(404 if body is None else 200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with owner.lock:
                    owner.requests.append(body)
                    owner.auth.append(self.headers.get("Authorization"))
                    action = owner.script.pop(0) if owner.script else owner.default
                if action == "hang":
                    time.sleep(30)
                    return
                if isinstance(action, str) and action.startswith("raw:"):
                    data = action[4:].encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
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
                    text = owner.answer_text.format(answer=answer) if i % 2 == 0 else "I give up"
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
    # The whole sampling set is pinned in every request (neutral values unless set), so a server never
    # fills any parameter from the model's generation_config.json.
    neutral = {"top_k": -1, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0}
    neutral.update(frequency_penalty=0.0, stop=[])
    assert all({k: r[k] for k in neutral} == neutral for r in server.requests)
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
    assert summary["sampling"] == {
        "temperature": 0.7,
        "top_p": 0.95,
        "max_tokens": 16,
        "seed": None,
        "top_k": -1,
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "stop": [],
    }
    assert "incorrect" in summary["failed_counting"] and summary["grader_version"]
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


# Why this test once took more than 30 s: run as a background job of a non-interactive shell (how some
# CI runners and `bash scripts/test.sh &` start it), the test process and every child it spawns inherit
# SIGINT *ignored*, so the client never saw the Ctrl-C and ran on until the fake server's 30 s hang
# ended. (`timeout ...` resets the disposition, which is why other runs passed.) The client is
# therefore started with SIGINT restored, as in an interactive terminal.
CLIENT_WITH_CTRL_C = (
    "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'evaluation.eval'; runpy.run_module('evaluation.eval', run_name='__main__', alter_sys=True)"
)
EXIT_LIMIT_S = limit(5.0)  # "exits within a few seconds"


def start_client(test_file: Path, out: Path, url: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-c", CLIENT_WITH_CTRL_C, "--model", "tiny", "--test_file", str(test_file)]
    cmd += ["--output", str(out), "--base-url", url, "--n", "2", "--concurrency", "1", "--no-progress"]
    cmd += ["--max_tokens", "16", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(condition, what: str, limit: float = 60.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def interrupt_and_wait(proc: subprocess.Popen, send) -> tuple[float, str]:
    """Send Ctrl-C (``send(proc)``), return (seconds until exit, stderr)."""
    start = time.monotonic()
    send(proc)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return time.monotonic() - start, err


def sigint(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)


def test_ctrl_c_keeps_finished_samples(tmp_path: Path, server: FakeOpenAI):
    """SIGINT while a request hangs: finished problems are on disk, the rerun does only the rest."""
    server.script = [200, "hang"]
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    proc = start_client(test_file, out, server.url)
    wait_for(lambda: len(server.requests) == 2 or proc.poll() is not None, "the second request")
    took, err = interrupt_and_wait(proc, sigint)
    assert proc.returncode == evalcli.EXIT_INTERRUPTED, err
    assert took < EXIT_LIMIT_S, f"exited {took:.1f} s after Ctrl-C"
    assert "resume" in err
    assert {r["problem_id"] for r in rows(out)} == {10}
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["complete"] is False and summary["interrupted"] is True
    server.requests.clear()
    assert run_cli(test_file, out, server.url, "--n", "2") == 0
    assert len(server.requests) == 2 and len(rows(out)) == 6


def _tgkill_other_thread(proc: subprocess.Popen) -> None:
    """Deliver SIGINT to a thread of ``proc`` other than the main one (the kernel may pick any thread
    that does not block the signal); the event loop must still wake up."""
    import ctypes

    tids = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task") if int(t) != proc.pid]
    assert tids, "the client has no second thread"
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_tgkill = {"x86_64": 234, "aarch64": 131}[os.uname().machine]
    assert libc.syscall(SYS_tgkill, proc.pid, tids[0], signal.SIGINT) == 0


def test_ctrl_c_delivered_to_another_thread(tmp_path: Path, server: FakeOpenAI):
    server.script = [200, "hang"]
    test_file = write_jsonl(tmp_path / "t.jsonl")
    proc = start_client(test_file, tmp_path / "out", server.url)
    wait_for(lambda: len(server.requests) == 2 or proc.poll() is not None, "the second request")
    took, err = interrupt_and_wait(proc, _tgkill_other_thread)
    assert proc.returncode == evalcli.EXIT_INTERRUPTED, err
    assert took < EXIT_LIMIT_S, f"exited {took:.1f} s after Ctrl-C"


def _verify_helper_running(proc: subprocess.Popen) -> bool:
    import psutil

    try:
        children = psutil.Process(proc.pid).children()
        return any("evaluation._verify_worker" in " ".join(c.cmdline()) for c in children)
    except psutil.Error:
        return False


def test_ctrl_c_while_the_grader_starts(tmp_path: Path, server: FakeOpenAI):
    """A cold first run: the first answers need math-verify, whose helper is still importing SymPy when
    Ctrl-C comes. The grading thread stops at once and records nothing half-graded."""
    server.answer_text = "So \\boxed{{{answer} + 0}}"  # equal only after simplification: math-verify
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    proc = start_client(test_file, out, server.url)
    wait_for(lambda: _verify_helper_running(proc) or proc.poll() is not None, "the math-verify helper")
    took, err = interrupt_and_wait(proc, sigint)
    assert proc.returncode == evalcli.EXIT_INTERRUPTED, err
    assert took < EXIT_LIMIT_S, f"exited {took:.1f} s after Ctrl-C"
    assert not (out / SAMPLES_FILE).exists() or rows(out) == [] or all(r["correct"] is not None for r in rows(out))


def test_ctrl_c_at_start_up(tmp_path: Path, server: FakeOpenAI):
    """Ctrl-C early (imports, loading, or the first request): the process ends at once. Every request
    hangs, so only the interruption can end the client within the limit, whichever phase it hit."""
    server.default = "hang"
    test_file = write_jsonl(tmp_path / "t.jsonl")
    proc = start_client(test_file, tmp_path / "out", server.url)
    time.sleep(0.3)
    assert proc.poll() is None, "the client ended before Ctrl-C"
    took, err = interrupt_and_wait(proc, sigint)
    # EXIT_INTERRUPTED once the client's handler is set up; before that, the default handler's
    # KeyboardInterrupt ends Python by SIGINT.
    assert proc.returncode in (evalcli.EXIT_INTERRUPTED, -signal.SIGINT), err
    assert took < EXIT_LIMIT_S, f"exited {took:.1f} s after Ctrl-C"


@pytest.mark.parametrize(
    "body",
    [
        "[]",  # a list, not an object
        '{"choices": null}',
        '{"choices": [null, null]}',
        '{"choices": [{"index": 0, "message": {"content": 5}}, {"index": 1, "message": {"content": "x"}}]}',
        '{"choices": [{"index": 0, "message": null}, {"index": 1, "message": {"content": "x"}}]}',
        '{"choices": [{"index": 0, "message": {"content": "a"}}, {"index": 0, "message": {"content": "b"}}]}',
    ],
)
def test_malformed_replies_are_retried_then_recorded(tmp_path: Path, server: FakeOpenAI, body: str):
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    # First: one malformed reply, then good ones -> retried, all graded.
    server.script = [f"raw:{body}"]
    assert run_cli(test_file, out, server.url, "--n", "2", "--concurrency", "1") == 0
    assert len(server.requests) == 4 and all(r["error"] is None for r in rows(out))
    # Always malformed -> error rows after the retries, a summary, exit 3; never a crash.
    server.default = f"raw:{body}"
    out2 = tmp_path / "out2"
    assert run_cli(test_file, out2, server.url, "--n", "2", "--max-retries", "1") == evalcli.EXIT_ERRORS
    got = rows(out2)
    assert len(got) == 6 and all(r["error"] and "malformed reply" in r["error"] for r in got)
    summary = json.loads((out2 / SUMMARY_FILE).read_text())
    assert summary["complete"] is False and summary["overall"]["problems_failed"] == 3
    assert summary["overall"]["avg@2"] == 0.0  # failed problems stay in the denominator
    assert summary["by_data_source"]["toy"]["problems_failed"] == 2


def test_failed_problems_do_not_inflate_accuracy(tmp_path: Path, server: FakeOpenAI):
    server.script = [200]
    server.default = 503
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    code = run_cli(test_file, out, server.url, "--n", "2", "--concurrency", "1", "--max-retries", "0")
    assert code == evalcli.EXIT_ERRORS
    o = json.loads((out / SUMMARY_FILE).read_text())["overall"]
    assert o["avg@2"] == pytest.approx(0.5 / 3)  # 1 of 6 samples correct, failures count as wrong
    assert o["avg@2_graded_only"] == pytest.approx(0.5) and o["problems_failed"] == 2


def test_one_writer_per_output_folder(tmp_path: Path, server: FakeOpenAI, capsys: pytest.CaptureFixture):
    from evaluation.store import RunLocked, RunStore

    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    holder = RunStore(out, {"model": "x"})
    try:
        with pytest.raises(RunLocked, match=f'"pid": {os.getpid()}'):
            RunStore(out, {"model": "x"})
        assert run_cli(test_file, out, server.url, "--n", "1") == evalcli.EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert "being written by another evaluation" in err and str(os.getpid()) in err
    finally:
        holder.close()
    assert RunStore(out, {"model": "x"}).fingerprint  # released: the next writer gets it


def test_corrupt_line_mid_file_names_the_line(tmp_path: Path, server: FakeOpenAI, capsys: pytest.CaptureFixture):
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    assert run_cli(test_file, out, server.url, "--n", "2") == 0
    lines = (out / SAMPLES_FILE).read_text().splitlines(keepends=True)
    lines[2] = '{"problem_id": 11, "sample_in\n'
    (out / SAMPLES_FILE).write_text("".join(lines))
    assert run_cli(test_file, out, server.url, "--n", "2") == evalcli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"{out / SAMPLES_FILE}:3: not valid JSON" in err and f"sed -i '3d' {out / SAMPLES_FILE}" in err
    # The suggested repair works: the lost samples are generated again.
    del lines[2]
    (out / SAMPLES_FILE).write_text("".join(lines))
    server.requests.clear()
    assert run_cli(test_file, out, server.url, "--n", "2") == 0
    assert len(server.requests) == 1 and len(rows(out)) == 6


def _fake_model(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "qwen2"}')
    (folder / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_fingerprint_holds_the_weights(tmp_path: Path, server: FakeOpenAI, capsys: pytest.CaptureFixture):
    """A model retrained in place (same path, same name) is refused, both fingerprints shown."""
    model = _fake_model(tmp_path / "runs" / "psft" / "global_step_3" / "huggingface", b"\x00" * 64)
    test_file = write_jsonl(tmp_path / "t.jsonl")
    out = tmp_path / "out"
    assert run_cli(test_file, out, server.url, "--n", "1", "--model-path", str(model)) == 0
    fp = json.loads((out / "run.json").read_text())["fingerprint"]
    assert len(fp["weights_sha256"]) == 64 and fp["grader_version"] and fp["math_verify"]
    assert (model / ".psft_fingerprint.json").is_file()  # cached beside the model
    (model / "model.safetensors").write_bytes(b"\x01" * 64)  # retrained in place (same size)
    stat = (model / "model.safetensors").stat()  # a later save: a later mtime, even on a coarse clock
    os.utime(model / "model.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert run_cli(test_file, out, server.url, "--n", "1", "--model-path", str(model)) == evalcli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "weights_sha256: was" in err and "fingerprint in" in err and "fingerprint of this run" in err


def test_default_output_is_named_after_the_checkpoint(tmp_path: Path, server: FakeOpenAI, monkeypatch):
    """Two checkpoints of one run never share a folder: outputs/eval/<experiment>/global_step_N/..."""
    monkeypatch.chdir(tmp_path)
    test_file = write_jsonl(tmp_path / "t.jsonl")
    for step in (1, 2):
        model = _fake_model(tmp_path / "ckpt" / "exp" / f"global_step_{step}" / "huggingface", bytes([step]) * 8)
        argv = ["--model", "tiny", "--model-path", str(model), "--test_file", str(test_file), "--n", "1"]
        assert evalcli.main(argv + ["--base-url", server.url, "--max_tokens", "16", "--no-progress"]) == 0
    got = sorted(p.parent.relative_to(tmp_path).as_posix() for p in tmp_path.glob("outputs/eval/**/run.json"))
    assert got == ["outputs/eval/exp/global_step_1/t_t0.7_p0.95_m16", "outputs/eval/exp/global_step_2/t_t0.7_p0.95_m16"]


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
    assert time.monotonic() - start < limit(5)


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


# ------------------------------------------------------------------ proof of what was served; secrets


def serve_routes(server: FakeOpenAI, name: str, served: Path, replicas: list[Path] | None = None) -> dict:
    """Answer /v1/models and the Serve app's fingerprint route as the app does for a model at ``served``: the
    fingerprint of the files there (one reply per replica folder in ``replicas``)."""
    from evaluation.identity import FINGERPRINT_ROUTE
    from recipe.psft.files import model_fingerprint

    replies = [
        {
            "served_names": [name],
            "root": str(folder),
            "replica": f"node{i}:1",
            **model_fingerprint(folder),
            "error": None,
        }
        for i, folder in enumerate(replicas or [served])
    ]
    server.get_routes["/v1/models"] = {"data": [{"id": name, "root": str(served)}]}
    server.get_routes[FINGERPRINT_ROUTE] = replies
    return replies[0]


def test_served_weights_must_match_the_model_path(tmp_path: Path, server: FakeOpenAI, capsys: pytest.CaptureFixture):
    """Another model on the port is refused before any request, both fingerprints shown; the same files
    copied under another path (another node's disk) are accepted."""
    import shutil

    served = _fake_model(tmp_path / "node_a" / "psft" / "global_step_2" / "huggingface", b"\x02" * 64)
    other = _fake_model(tmp_path / "other" / "huggingface", b"\x03" * 64)
    served_fp = serve_routes(server, "tiny", served)
    test_file = write_jsonl(tmp_path / "t.jsonl")
    code = run_cli(test_file, tmp_path / "out", server.url, "--n", "1", "--model-path", str(other))
    err = capsys.readouterr().err
    assert code == evalcli.EXIT_BAD_INPUT and server.requests == []
    from recipe.psft.files import model_fingerprint

    assert served_fp["weights_sha256"] in err and model_fingerprint(other)["weights_sha256"] in err
    assert "serves other weights than --model-path" in err
    copy = tmp_path / "node_b" / "psft" / "global_step_2" / "huggingface"
    shutil.copytree(served, copy)
    assert run_cli(test_file, tmp_path / "out", server.url, "--n", "1", "--model-path", str(copy)) == 0
    fp = json.loads((tmp_path / "out" / "run.json").read_text())["fingerprint"]
    assert fp["weights_sha256"] == served_fp["weights_sha256"] and len(server.requests) == 3


def test_served_fingerprint_without_model_path(tmp_path: Path, server: FakeOpenAI, capsys: pytest.CaptureFixture):
    """Without --model-path the server's own fingerprint is the run's; where the path it reports exists on
    this machine with other files, it is refused; replicas that disagree are refused; so is a server that
    serves another name."""
    served = _fake_model(tmp_path / "served", b"\x04" * 64)
    served_fp = serve_routes(server, "tiny", served)
    test_file = write_jsonl(tmp_path / "t.jsonl")
    served.rename(tmp_path / "elsewhere")  # the reported path is on the server's node only
    assert run_cli(test_file, tmp_path / "out", server.url, "--n", "1") == 0
    fp = json.loads((tmp_path / "out" / "run.json").read_text())["fingerprint"]
    assert (
        fp["weights_sha256"] == served_fp["weights_sha256"] and fp["tokenizer_sha256"] == served_fp["tokenizer_sha256"]
    )
    _fake_model(served, b"\x05" * 64)  # this machine has other files at the reported path
    assert run_cli(test_file, tmp_path / "out2", server.url, "--n", "1") == evalcli.EXIT_BAD_INPUT
    assert f"the path it reports, {served}, on this machine" in capsys.readouterr().err
    stale = _fake_model(tmp_path / "stale", b"\x06" * 64)
    serve_routes(server, "tiny", served, replicas=[served, stale])
    assert run_cli(test_file, tmp_path / "out3", server.url, "--n", "1") == evalcli.EXIT_BAD_INPUT
    assert "replicas of" in capsys.readouterr().err
    serve_routes(server, "other-model", served)
    assert run_cli(test_file, tmp_path / "out4", server.url, "--n", "1") == evalcli.EXIT_BAD_INPUT
    assert "serves ['other-model'] from" in capsys.readouterr().err


def test_identity_cli_as_eval_sh_runs_it(tmp_path: Path, server: FakeOpenAI, capsys: pytest.CaptureFixture):
    from evaluation.identity import main as identity_main

    served = _fake_model(tmp_path / "a", b"\x07" * 64)
    serve_routes(server, "m", served)
    assert identity_main(["--base-url", server.url, "--model", "m", "--model-path", str(served)]) == 0
    other = _fake_model(tmp_path / "b", b"\x08" * 64)
    assert identity_main(["--base-url", server.url, "--model", "m", "--model-path", str(other)]) == 2
    server.get_routes.clear()  # a server that cannot say what it serves is not trusted by eval.sh
    assert identity_main(["--base-url", server.url, "--model", "m", "--model-path", str(served)]) == 2
    assert "does not report what it serves" in capsys.readouterr().err


def test_api_key_goes_only_to_https_or_this_machine(
    tmp_path: Path, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    from evaluation.serve_client import InsecureKey, auth_headers

    test_file = write_jsonl(tmp_path / "t.jsonl")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")  # never picked up: it is not this server's key
    assert run_cli(test_file, tmp_path / "o1", server.url, "--n", "1") == 0
    assert server.auth and set(server.auth) == {None}
    monkeypatch.setenv("VLLM_API_KEY", "k-123")  # the variable the server reads
    server.auth.clear()
    assert run_cli(test_file, tmp_path / "o2", server.url, "--n", "1") == 0
    assert server.auth and set(server.auth) == {"Bearer k-123"}
    # Plain http to another machine: refused before any connection (10.255.255.1:9 is never reached).
    started = time.monotonic()
    assert run_cli(test_file, tmp_path / "o3", "http://10.255.255.1:9", "--n", "1") == evalcli.EXIT_BAD_INPUT
    assert "refusing to send an API key in clear text to http://10.255.255.1:9" in capsys.readouterr().err
    assert time.monotonic() - started < limit(5)
    assert auth_headers("https://10.255.255.1/v1", "k") == {"Authorization": "Bearer k"}
    assert auth_headers("http://[::1]:8000", "k") and auth_headers("http://localhost:1", "k")
    assert auth_headers("http://10.255.255.1:9", None) == {}
    with pytest.raises(InsecureKey, match="credentials in the URL"):
        auth_headers("http://u:pw@10.255.255.1:9", None)


def test_records_hold_no_secrets(tmp_path: Path, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch):
    """The lock file (shown to the next writer) and run.json never hold the key or URL credentials."""
    from evaluation.store import LOCK_FILE, RunStore

    monkeypatch.setattr(
        sys, "argv", ["eval", "--api-key", "k-secret", "--api-key=k-secret2", "--base-url", "http://u:pw@h"]
    )
    store = RunStore(tmp_path / "locked", {"model": "x"})
    try:
        lock = (tmp_path / "locked" / LOCK_FILE).read_text()
    finally:
        store.close()
    assert "k-secret" not in lock and "pw" not in lock and "--api-key ***" in lock and "http://***@h" in lock
    test_file = write_jsonl(tmp_path / "t.jsonl")
    url = server.url.replace("http://", "http://u:pw@")
    assert run_cli(test_file, tmp_path / "out", url, "--n", "1", "--api-key", "k-secret") == 0
    record = (tmp_path / "out" / "run.json").read_text() + (tmp_path / "out" / SUMMARY_FILE).read_text()
    assert "k-secret" not in record and "u:pw" not in record and server.url in record


def test_serve_app_refuses_an_open_endpoint_without_a_key(monkeypatch: pytest.MonkeyPatch):
    """Checked before Ray starts: no key on a non-loopback host, or a key on the command line."""
    from evaluation.serve_app import build_app

    monkeypatch.delenv("VLLM_API_KEY", raising=False)
    with pytest.raises(ValueError, match="host=0.0.0.0 exposes the server .* no API key is set"):
        build_app({"model": "/m", "host": "0.0.0.0"})
    with pytest.raises(ValueError, match="api-key=... is visible to every user"):
        build_app({"model": "/m", "api-key": "k"})


def test_serve_guard_covers_every_route_but_health():
    """The Serve app's guard on a real Starlette app: vLLM's own key check leaves /invocations open."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from evaluation.serve_app import _BearerGuard

    routes = [
        Route(p, lambda request: PlainTextResponse("ok"), methods=["GET", "POST"])
        for p in ("/health", "/invocations", "/v1/models")
    ]
    app = Starlette(routes=routes)
    client = TestClient(_BearerGuard(app, key="k-1"))  # as the replica hands it to Serve
    assert client.get("/health").status_code == 200
    for path in ("/invocations", "/v1/models"):
        assert client.post(path).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get(path, headers={"Authorization": "Bearer k-1"}).status_code == 200
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocketDisconnect

    async def hello(websocket) -> None:
        await websocket.accept()
        await websocket.send_text("hi")
        await websocket.close()

    app.router.routes.append(WebSocketRoute("/v1/realtime", hello))
    with client.websocket_connect("/v1/realtime", headers={"Authorization": "Bearer k-1"}) as ws:
        assert ws.receive_text() == "hi"
    with pytest.raises(WebSocketDisconnect):  # closed before it is accepted
        with client.websocket_connect("/v1/realtime"):
            pass


def test_eval_sh_refuses_a_server_serving_another_model(tmp_path: Path, server: FakeOpenAI):
    """An older server left on eval.sh's port, same served name, other weights: refused before any request,
    both fingerprints shown (the `serve run` eval.sh starts is a stand-in that never binds the port)."""
    from recipe.psft.files import model_fingerprint

    model = _fake_model(tmp_path / "ckpt" / "exp" / "global_step_5" / "huggingface", b"\x09" * 64)
    old = _fake_model(tmp_path / "old" / "exp" / "global_step_5" / "huggingface", b"\x0a" * 64)
    serve_routes(server, "exp/global_step_5", old)
    server.get_routes["/health"] = {}
    stand_in = tmp_path / "serve"
    stand_in.write_text("#!/bin/sh\nexec sleep 120\n")
    stand_in.chmod(0o755)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test_toy.parquet").write_bytes(b"")  # eval.sh only checks that it exists
    env = {**os.environ, "SERVE": str(stand_in), "PORT": server.url.rsplit(":", 1)[1], "PYTHON": sys.executable}
    env.update(DATA_DIR=str(tmp_path / "data"), BENCHMARKS="toy", OUT_DIR=str(tmp_path / "out"))
    env.pop("VLLM_API_KEY", None)
    res = subprocess.run(
        ["bash", str(ROOT / "scripts" / "eval.sh"), str(model)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2, res.stdout + res.stderr
    assert f"the server on port {server.url.rsplit(':', 1)[1]} does not serve {model}" in res.stderr
    assert (
        model_fingerprint(old)["weights_sha256"] in res.stderr
        and model_fingerprint(model)["weights_sha256"] in res.stderr
    )
    assert server.requests == []
