"""The ``serve`` backend: an OpenAI-compatible ``/v1/chat/completions`` client (the Ray Serve app in
:mod:`evaluation.llm`, or any vLLM server) with bounded concurrency and retries.

One request per job asks for all of its missing samples with ``n``. Transient failures (connection
errors, timeouts, 408/429/5xx) are retried with exponential backoff and jitter; a job that still fails
is reported as an error with the last reason, so the caller records it instead of dropping it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

from evaluation.generation import Completion, Job, Sampling

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
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
        # vLLM extension: per-choice token ids, the only exact per-sample token count when n > 1.
        "return_token_ids": True,
    }
    seed = job.seed(sampling.seed)
    if seed is not None:
        body["seed"] = seed
    return body


def parse_choices(data: dict, n: int) -> list[Completion]:
    """Completions in choice order; raises :class:`RequestFailed` on a malformed reply."""
    choices = data.get("choices")
    if not isinstance(choices, list) or len(choices) != n:
        got = len(choices) if isinstance(choices, list) else choices
        raise RequestFailed(f"expected {n} choices, got {got}")
    choices = sorted(choices, key=lambda c: c.get("index", 0))
    usage = data.get("usage") or {}
    out = []
    for c in choices:
        message = c.get("message") or {}
        text = message.get("content") or ""
        token_ids = c.get("token_ids")
        if isinstance(token_ids, list):
            tokens = len(token_ids)
        elif n == 1 and isinstance(usage.get("completion_tokens"), int):
            tokens = usage["completion_tokens"]
        else:
            tokens = None
        out.append(Completion(text=text, completion_tokens=tokens, finish_reason=c.get("finish_reason")))
    return out


async def request_with_retries(client: httpx.AsyncClient, url: str, body: dict, retry: RetryPolicy) -> dict:
    """POST ``body``; retry transient failures; raise :class:`RequestFailed` with the last reason."""
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
                return resp.json()
            except ValueError:
                last = "HTTP 200 with a body that is not JSON"
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
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(request_timeout_s, connect=30.0)

    # Proxy settings from the environment apply to remote servers only, never to a local one.
    local = httpx.URL(url).host in ("127.0.0.1", "localhost", "::1")
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers, trust_env=not local) as client:

        async def worker() -> None:
            while True:
                try:
                    job = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = _payload(job, model, sampling)
                try:
                    data = await request_with_retries(client, url, body, retry)
                    completions = parse_choices(data, len(job.sample_indices))
                except RequestFailed as e:
                    await on_done(job, None, str(e))
                    continue
                await on_done(job, completions, None)

        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
