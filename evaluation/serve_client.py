"""The ``serve`` backend: an OpenAI-compatible ``/v1/chat/completions`` client (the Ray Serve app in
:mod:`evaluation.serve_app`, or any vLLM server) with bounded concurrency and retries.

One request per job asks for all of its missing samples with ``n``. Transient failures (connection
errors, timeouts, 408/429/5xx, and HTTP 200 replies that are not well-formed) are retried with
exponential backoff and jitter; a job that still fails
is reported as an error with the last reason, so the caller records it instead of dropping it.
:class:`ServeBackend` runs it for ``python -m evaluation.eval`` (the ``Backend`` of :mod:`evaluation.jobs`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import signal
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from evaluation.data import DataError
from evaluation.jobs import Completion, Job, OnDone, Sampling

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


@dataclass
class RetryPolicy:
    max_retries: int = 5  # attempts after the first
    base_delay_s: float = 1.0
    max_delay_s: float = 30.0

    def delay(self, attempt: int) -> float:
        d = min(self.max_delay_s, self.base_delay_s * (2**attempt))
        return d * (0.5 + random.random() / 2)


class RequestFailed(RuntimeError):
    pass


class InsecureKey(DataError):
    """An API key (or credentials in the URL) would travel in clear text to another machine."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1): traffic that never leaves the machine."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def auth_headers(url: str, api_key: str | None) -> dict[str, str]:
    """The Authorization header for a request to ``url``, refused (:class:`InsecureKey`) when ``url`` is plain
    http to a host other than this machine: a bearer token over http is readable by anyone on the path."""
    parsed = httpx.URL(url)
    secret = "an API key" if api_key else "credentials in the URL" if parsed.userinfo else None
    if secret and parsed.scheme != "https" and not is_loopback(parsed.host):
        raise InsecureKey(
            f"refusing to send {secret} in clear text to {parsed.scheme}://{parsed.host}:{parsed.port or 80}: use an "
            "https URL, or reach the server over an SSH tunnel to 127.0.0.1 (ssh -L PORT:127.0.0.1:PORT HOST), "
            "or unset the key (--api-key / VLLM_API_KEY) for a server that needs none"
        )
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def chat_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return base + "/v1/chat/completions"


def _payload(job: Job, model: str, sampling: Sampling) -> dict:
    body = {
        "model": model,
        "messages": job.problem.messages,
        "n": len(job.sample_indices),
        # Every sampling parameter, so nothing is filled from the model's generation_config.json.
        **sampling.request_fields(),
        # vLLM extension: per-choice token ids, the only exact per-sample token count when n > 1.
        "return_token_ids": True,
    }
    seed = job.seed(sampling.seed)
    if seed is not None:
        body["seed"] = seed
    return body


class MalformedReply(RequestFailed):
    """An HTTP 200 whose body is not a usable chat-completions reply (retried like a transient error)."""


def parse_choices(data: object, n: int) -> list[Completion]:
    """Completions in choice order; raises :class:`MalformedReply` for any reply not shaped as expected
    (a body that is not an object, a missing or null choice, content that is not a string, ...)."""
    if not isinstance(data, dict):
        raise MalformedReply(f"reply body is a {type(data).__name__}, expected a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else f"{type(choices).__name__} {choices!r:.80}"
        raise MalformedReply(f"expected {n} choices, got {got}")
    for i, c in enumerate(choices):
        if not isinstance(c, dict):
            raise MalformedReply(f"choice {i} is {type(c).__name__} {c!r:.80}, expected an object")
        if not isinstance(c.get("message"), dict):
            raise MalformedReply(f"choice {i} has no message object: {c!r:.120}")
        if not isinstance(c["message"].get("content"), str):
            content = c["message"].get("content")
            raise MalformedReply(f"choice {i}: message content is {type(content).__name__}, expected a string")
    indices = [c.get("index", i) for i, c in enumerate(choices)]
    if sorted(indices) != list(range(n)) or not all(isinstance(x, int) for x in indices):
        raise MalformedReply(f"choice indices {indices!r:.80} are not 0..{n - 1}")
    choices = [c for _, c in sorted(zip(indices, choices), key=lambda pair: pair[0])]
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
    out = []
    for c in choices:
        token_ids = c.get("token_ids")
        if isinstance(token_ids, list):
            tokens = len(token_ids)
        elif n == 1 and isinstance(usage.get("completion_tokens"), int):
            tokens = usage["completion_tokens"]
        else:
            tokens = None
        finish = c.get("finish_reason")
        out.append(
            Completion(
                text=c["message"]["content"],
                completion_tokens=tokens,
                finish_reason=finish if isinstance(finish, str) else None,
            )
        )
    return out


async def request_with_retries(
    client: httpx.AsyncClient,
    url: str,
    body: dict,
    retry: RetryPolicy,
    parse: Callable[[object], list[Completion]] | None = None,
) -> list[Completion] | dict:
    """POST ``body``; retry transient failures and malformed replies; raise :class:`RequestFailed` with
    the last reason. With ``parse``, its result is returned (a reply it rejects counts as a failure)."""
    last = "no attempt made"
    for attempt in range(retry.max_retries + 1):
        if attempt:
            await asyncio.sleep(retry.delay(attempt - 1))
        try:
            resp = await client.post(url, json=body)
        except (httpx.TransportError, httpx.TimeoutException) as e:
            last = f"{type(e).__name__}: {e}"
            continue
        if resp.status_code == 200:
            try:
                data = resp.json()
            except ValueError:
                last = "HTTP 200 with a body that is not JSON"
                continue
            if parse is None:
                return data
            try:
                return parse(data)
            except MalformedReply as e:
                last = f"malformed reply: {e}"
                continue
        last = f"HTTP {resp.status_code}: {resp.text[:300]}"
        if resp.status_code not in RETRYABLE_STATUS:
            break
    raise RequestFailed(f"{last} (after {attempt + 1} attempt(s))")


async def run_jobs(
    jobs: Sequence[Job],
    *,
    base_url: str,
    model: str,
    sampling: Sampling,
    concurrency: int,
    on_done: Callable[[Job, list[Completion] | None, str | None], Awaitable[None]],
    retry: RetryPolicy | None = None,
    request_timeout_s: float = 3600.0,
    api_key: str | None = None,
) -> None:
    """Run every job with at most ``concurrency`` requests in flight; ``on_done`` sees each job once."""
    retry = retry or RetryPolicy()
    url = chat_url(base_url)
    queue: asyncio.Queue[Job] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    headers = auth_headers(url, api_key)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(request_timeout_s, connect=30.0)

    # Proxy settings from the environment apply to remote servers only, never to a local one.
    local = is_loopback(httpx.URL(url).host)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers, trust_env=not local) as client:

        async def worker() -> None:
            while True:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = _payload(job, model, sampling)
                n = len(job.sample_indices)
                try:
                    completions = await request_with_retries(
                        client, url, body, retry, parse=lambda data, n=n: parse_choices(data, n)
                    )
                except RequestFailed as e:
                    await on_done(job, None, str(e))
                    continue
                await on_done(job, completions, None)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))


def _sigint_is_default() -> bool:
    # A shell's background job starts with SIGINT ignored; that choice is respected.
    return signal.getsignal(signal.SIGINT) is signal.default_int_handler


def run_async_interruptibly(coro: Any, on_interrupt: Callable[[], None] = lambda: None) -> None:
    """Run ``coro`` on a fresh event loop; Ctrl-C calls ``on_interrupt``, cancels it and raises
    KeyboardInterrupt here.

    The SIGINT handler is the loop's own (``add_signal_handler``), which wakes the loop through its
    self-pipe whichever thread the kernel delivers the signal to; ``on_interrupt`` tells other threads
    (grading) to stop too.
    """
    loop = asyncio.new_event_loop()
    task = loop.create_task(coro)
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        on_interrupt()
        task.cancel()

    handled = _sigint_is_default()
    if handled:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        if interrupted:
            raise KeyboardInterrupt from None
        raise
    finally:
        if handled:
            loop.remove_signal_handler(signal.SIGINT)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@dataclass
class ServeBackend:
    """The ``serve`` backend (:class:`evaluation.jobs.Backend`): :func:`run_jobs` against a server.

    ``on_done`` runs on one grading thread: grading stays off the event loop, rows are written one
    problem at a time, and Ctrl-C has a single thread to stop (``on_interrupt``).
    """

    base_url: str
    model: str
    concurrency: int
    retry: RetryPolicy
    request_timeout_s: float
    api_key: str | None
    on_interrupt: Callable[[], None]

    def run(self, jobs: Sequence[Job], sampling: Sampling, on_done: OnDone) -> None:
        grading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grade")

        async def on_done_async(job: Job, completions: list[Completion] | None, error: str | None) -> None:
            await asyncio.get_running_loop().run_in_executor(grading, on_done, job, completions, error)

        job_run = run_jobs(
            jobs,
            base_url=self.base_url,
            model=self.model,
            sampling=sampling,
            concurrency=self.concurrency,
            on_done=on_done_async,
            retry=self.retry,
            request_timeout_s=self.request_timeout_s,
            api_key=self.api_key,
        )
        try:
            run_async_interruptibly(job_run, self.on_interrupt)
        finally:
            grading.shutdown(wait=True, cancel_futures=True)

    def shutdown(self) -> None:
        """Nothing to release: every connection closes with its run."""
