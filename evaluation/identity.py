"""Which model a run evaluated: a content hash of its weights, tokenizer and chat template, and the
name results are filed under; and the grader's version.

verl saves every checkpoint as ``<experiment>/global_step_N/huggingface``: the folder's basename says
nothing, so names are built from the path (``<experiment>/global_step_N``). A model retrained in place
keeps its path, so the run fingerprint holds the hash of the files instead.

The fingerprint is :func:`recipe.psft.files.model_fingerprint`, the one the trainer's run identity and
reference cache use: a full sha256 per file, cached beside the model in ``.psft_fingerprint.json`` by
size and modification time (``$XDG_CACHE_HOME/psft`` when the folder is read-only), so a 15 GB
checkpoint is read once.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evaluation.data import DataError
from recipe.psft.files import FINGERPRINT_CACHE as CACHE_NAME
from recipe.psft.files import model_fingerprint

__all__ = [
    "CACHE_NAME",
    "FINGERPRINT_ROUTE",
    "check_served",
    "grader_identity",
    "model_fingerprint",
    "model_identity",
    "model_label",
    "served_root",
]

if TYPE_CHECKING:
    import httpx

_STEP_DIR = re.compile(r"^global_step_\d+$")


def model_label(path: str) -> str:
    """The name a model's results are filed and served under.

    ``runs/psft/global_step_40/huggingface`` -> ``psft/global_step_40``; ``.../global_step_40`` ->
    ``psft/global_step_40``; any other folder -> its basename; a Hub id (``Qwen/Qwen2.5-7B``) stays as is.
    """
    text = path.rstrip("/")
    p = Path(text)
    parts = list(p.parts)
    if parts and parts[-1] == "huggingface":
        parts = parts[:-1]
    if parts and _STEP_DIR.match(parts[-1]):
        return "/".join(parts[-2:]) if len(parts) >= 2 else parts[-1]
    if not p.exists() and len(parts) == 2 and not text.startswith((".", "/")):
        return text  # a Hub id
    return p.name or "model"


def grader_identity() -> dict[str, str]:
    """The grader's version and that of math-verify, which decides equivalence."""
    from importlib import metadata

    from evaluation.grader import GRADER_VERSION

    try:
        mv = metadata.version("math-verify")
    except metadata.PackageNotFoundError:
        mv = "not installed"
    return {"grader_version": GRADER_VERSION, "math_verify": mv}


# The Serve app's route that reports what each replica loaded (evaluation/serve_app.py): the served name,
# the path, the replica's host and pid, and the fingerprint of the files at that path on that node.
FINGERPRINT_ROUTE = "/v1/psft/fingerprint"
# Replies asked for per check: Serve spreads requests over replicas, so several replies see several of them
# (a stale copy of the weights on one node's disk is caught).
FINGERPRINT_ASKS = 4
COMPARED = ("weights_sha256", "tokenizer_sha256")


def _get(base_url: str, route: str, api_key: str | None) -> httpx.Response | None:
    """GET ``route`` on the server; None when it cannot be reached. A 401/403 is an error: the key is wrong."""
    import httpx

    from evaluation.serve_client import auth_headers, chat_url, is_loopback

    url = chat_url(base_url).rsplit("/v1/chat/completions", 1)[0] + route
    headers = auth_headers(url, api_key)
    try:
        resp = httpx.get(url, timeout=30, headers=headers, trust_env=not is_loopback(httpx.URL(url).host))
    except httpx.HTTPError:
        return None
    if resp.status_code in (401, 403):
        raise DataError(
            f"{url}: HTTP {resp.status_code}: the server wants an API key; pass it in VLLM_API_KEY (or --api-key)"
            if not api_key
            else f"{url}: HTTP {resp.status_code}: the server refused this API key (--api-key / VLLM_API_KEY)"
        )
    return resp


def served_models(base_url: str, api_key: str | None) -> dict[str, str | None] | None:
    """Served name -> the path the server loaded it from (vLLM's ``root`` in /v1/models), or None when the
    server does not answer /v1/models."""
    resp = _get(base_url, "/v1/models", api_key)
    if resp is None or resp.status_code != 200:
        return None
    try:
        entries = resp.json().get("data", [])
        return {e["id"]: e.get("root") if isinstance(e.get("root"), str) else None for e in entries}
    except (ValueError, AttributeError, KeyError, TypeError):
        return None


def served_root(base_url: str, model: str, api_key: str | None) -> str | None:
    """The path the server loaded ``model`` from (vLLM reports it as ``root`` in /v1/models), or None."""
    return (served_models(base_url, api_key) or {}).get(model)


def served_fingerprints(base_url: str, model: str, api_key: str | None) -> list[dict[str, Any]] | None:
    """What the server's replicas report at :data:`FINGERPRINT_ROUTE` for ``model`` (one reply per distinct
    replica), or None for a server without the route (a plain vLLM server)."""
    replies: dict[str, dict[str, Any]] = {}
    for _ in range(FINGERPRINT_ASKS):
        resp = _get(base_url, FINGERPRINT_ROUTE, api_key)
        if resp is None or resp.status_code in (404, 405, 501):
            return None
        try:
            data = resp.json()
        except ValueError:
            data = None
        if resp.status_code != 200 or not isinstance(data, dict):
            raise DataError(f"{base_url}{FINGERPRINT_ROUTE}: HTTP {resp.status_code}: {resp.text[:300]}")
        if model not in data.get("served_names", []):
            names, root = data.get("served_names"), data.get("root")
            raise DataError(f"the server at {base_url} serves {names} from {root}, not --model {model}")
        replies[str(data.get("replica"))] = data
    return list(replies.values())


def _fp_lines(fp: dict[str, Any]) -> str:
    return "  ".join(f"{k}: {fp.get(k)}" for k in COMPARED)


def check_served(base_url: str, model: str, model_path: str | None, api_key: str | None) -> dict[str, Any] | None:
    """Proof of what the server serves: the fingerprint of ``model`` as the server's replicas computed it over
    the files they loaded, compared with ``model_path`` (or, without one, with the path the server reports,
    where that is a folder on this machine). Returns the fingerprint both agree on (the local one when there
    is one), None when the server cannot report one (a plain vLLM server). Raises DataError on any mismatch,
    showing both fingerprints; the same files under another path (a copy on another node) agree."""
    replies = served_fingerprints(base_url, model, api_key)
    if replies is None:
        return None
    for reply in replies:
        if reply.get("weights_sha256") is None:
            raise DataError(
                f"the server at {base_url} cannot fingerprint {model} ({reply.get('root')} on {reply.get('replica')}): "
                f"{reply.get('error')}"
            )
    first = replies[0]
    for other in replies[1:]:
        if any(other.get(k) != first.get(k) for k in COMPARED):
            raise DataError(
                f"the replicas of {base_url} serve different weights under {model}:\n"
                f"  {first.get('replica')} ({first.get('root')}): {_fp_lines(first)}\n"
                f"  {other.get('replica')} ({other.get('root')}): {_fp_lines(other)}"
            )
    local = model_path or (first.get("root") if Path(str(first.get("root"))).is_dir() else None)
    if local is None:
        return {k: first.get(k) for k in (*COMPARED, "weight_bytes")}
    try:
        mine = model_fingerprint(local)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise DataError(f"--model-path {local}: {e}") from e
    if any(mine.get(k) != first.get(k) for k in COMPARED):
        what = f"--model-path {model_path}" if model_path else f"the path it reports, {local}, on this machine"
        raise DataError(
            f"the server at {base_url} serves other weights than {what}:\n"
            f"  served ({first.get('root')} on {first.get('replica')}): {_fp_lines(first)}\n"
            f"  {local}: {_fp_lines(mine)}\n"
            "Evaluate against a server that serves this model (is an old server still on this port?), or pass "
            "the --model-path of the model it serves."
        )
    return mine


def model_identity(
    backend: str, model: str, model_path: str | None, base_url: str, api_key: str | None
) -> tuple[dict[str, Any], str]:
    """(the model part of a run's fingerprint, the label results are filed under) for ``--backend``,
    ``--model`` and ``--model-path``. With the serve backend the server is asked what it serves
    (:func:`check_served`) and a mismatch with ``--model-path`` is refused; a server that cannot say (a plain
    vLLM server) is trusted for ``--model-path``, or asked for the path it loaded."""
    label = model_label(model_path) if model_path else model_label(model)
    if backend == "serve":
        served = check_served(base_url, model, model_path, api_key)
        if served is not None:
            return served, label
    path = model if backend == "vllm" else model_path
    if backend == "serve":
        models = served_models(base_url, api_key)
        if models is not None and model not in models:
            raise DataError(f"the server at {base_url} serves {sorted(models)}, not --model {model}")
        path = path or (models or {}).get(model)
    if path is not None and Path(path).is_dir():
        try:
            ident = model_fingerprint(path)
        except FileNotFoundError as e:
            raise DataError(str(e)) from e
        return ident, (model_label(path) if backend == "vllm" else label)
    if model_path is not None:
        raise DataError(f"--model-path {model_path}: not a folder")
    if backend == "vllm" and "/" in model and not Path(model).exists():
        raise DataError(f"--model {model}: no such folder (a Hub id cannot be fingerprinted; download it first)")
    print(
        f"[eval] warning: the weights of {model!r} cannot be fingerprinted (pass --model-path FOLDER); "
        "a model retrained in place would not be noticed",
        file=sys.stderr,
    )
    return {"weights_sha256": None}, model_label(model)


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluation.identity --base-url URL --model NAME [--model-path DIR]``: exit 0 when the server
    proves it serves that model (scripts/eval.sh runs this before evaluating), 2 with both fingerprints when
    it serves another."""
    import argparse
    import json
    import os

    from recipe.psft.exit_codes import BAD_INPUT, OK

    p = argparse.ArgumentParser(prog="python -m evaluation.identity", description=main.__doc__)
    p.add_argument("--base-url", required=True)
    p.add_argument("--model", required=True, help="the served model name")
    p.add_argument("--model-path", default=None, help="the folder it should serve")
    args = p.parse_args(argv)
    try:
        served = check_served(args.base_url, args.model, args.model_path, os.environ.get("VLLM_API_KEY") or None)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return BAD_INPUT
    if served is None:
        print(f"error: {args.base_url} does not report what it serves ({FINGERPRINT_ROUTE})", file=sys.stderr)
        return BAD_INPUT
    print(json.dumps({"model": args.model, **served}))
    return OK


if __name__ == "__main__":
    sys.exit(main())
