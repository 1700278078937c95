"""vLLM's OpenAI-compatible server as a Ray Serve application.

    serve run evaluation.serve_app:build_app model=/path/to/Qwen2.5-7B tensor-parallel-size=1 [KEY=VALUE ...]
    python -m evaluation.serve_app model=/path/to/model port=8000 [KEY=VALUE ...] [--insecure]  # private Ray

Each replica runs vLLM's own FastAPI app (``/v1/chat/completions``, ``/v1/completions``,
``/v1/models``, ``/health``, ...) on an in-replica ``AsyncLLM``, so the HTTP surface is exactly
vLLM's. Every KEY=VALUE other than the ones below is passed to vLLM as ``--KEY VALUE`` (``true`` /
``false`` become ``--KEY`` / ``--no-KEY``), so any vLLM engine or server argument works.

Own keys: ``host`` (default 127.0.0.1: the endpoint is not exposed unless asked), ``port`` (8000),
``num-replicas`` (default: the cluster's GPUs // tensor-parallel size; one replica without GPUs),
``insecure`` (``true``: allow a non-loopback ``host`` without an API key).

API key: ``VLLM_API_KEY`` in the environment of the command that builds the app (never ``api-key=`` on the
command line: every user of the machine sees it in ``ps``, and a Serve config file's arguments show on Ray's
dashboard). It is handed to every replica as an argument of the deployment, so replicas on other nodes
enforce it too (a replica's own environment never decides it), and it guards every route but ``/health``
(vLLM's own ``--api-key`` leaves e.g. ``/invocations`` open). A non-loopback ``host`` without a key is refused
unless ``insecure=true``; joining a Serve instance whose HTTP proxy listens elsewhere than asked is refused.

Proof of what is served: ``GET /v1/psft/fingerprint`` answers, per replica, the served names, the path
loaded, the replica (host:pid) and the model fingerprint (:func:`recipe.psft.files.model_fingerprint`) of
the files at that path on the replica's node, computed while the engine loads. ``python -m evaluation.eval
--backend serve`` compares it with ``--model-path``.
The served model name is built from the path (``<experiment>/global_step_N`` for a verl checkpoint's
``.../global_step_N/huggingface``, else the folder's basename) unless ``served-model-name`` is given.
The server never takes sampling defaults from the model's ``generation_config.json``
(``generation-config=vllm`` unless given).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from ray import serve

from evaluation.identity import FINGERPRINT_ROUTE
from evaluation.serve_client import is_loopback
from recipe.psft.ray_local import init_serving_ray

OWN_KEYS = ("host", "port", "num-replicas", "insecure")
API_KEY_ENV = "VLLM_API_KEY"
UNGUARDED_PATHS = ("/health",)  # liveness only: tells nothing about the model
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
SERVE_NAMESPACE = "serve"  # what `serve run` uses; the builder may have to connect first
# Environment the replicas need from the launching shell (CPU thread binding, KV cache size, caches).
_PASS_ENV_PREFIXES = ("VLLM_", "HF_", "OMP_", "TRANSFORMERS_")
# Never into a runtime env (Ray shows those on its dashboard and job API): tokens, keys, passwords.
# Replicas inherit them from the Ray node's own environment (the shell that ran `serve run`/`ray start`).
_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def _norm_key(key: str) -> str:
    return key.strip().lstrip("-").replace("_", "-")


def vllm_cli_args(args: dict[str, Any]) -> list[str]:
    """``{"tensor-parallel-size": "2", "enforce-eager": "true"}`` -> vLLM command-line arguments."""
    out: list[str] = []
    for key, value in args.items():
        key = _norm_key(key)
        if key in OWN_KEYS:
            continue
        text = str(value)
        if isinstance(value, bool) or text.lower() in ("true", "false"):
            out.append(f"--{key}" if text.lower() == "true" else f"--no-{key}")
        else:
            out += [f"--{key}", text]
    return out


def served_name(model: str) -> str:
    """``.../<experiment>/global_step_N/huggingface`` -> ``<experiment>/global_step_N``, else the basename."""
    from evaluation.identity import model_label

    return model_label(model)


class _ShutdownFlag:
    should_exit = False


class _BearerGuard:
    """ASGI middleware: every request but :data:`UNGUARDED_PATHS` needs ``Authorization: Bearer <key>``
    (compared in constant time)."""

    def __init__(self, app: Any, key: str):
        import hashlib

        self.app, self._digest = app, hashlib.sha256(key.encode()).digest()

    def _allowed(self, scope: dict[str, Any]) -> bool:
        import hashlib
        import hmac

        if scope.get("method") == "OPTIONS" or scope["path"] in UNGUARDED_PATHS:
            return True
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(hashlib.sha256(token.encode()).digest(), self._digest)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket" and not self._allowed(scope):
            await send({"type": "websocket.close", "code": 1008})  # policy violation, before accepting
            return
        if scope["type"] == "http" and not self._allowed(scope):
            from starlette.responses import JSONResponse

            await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def __getattr__(self, name: str) -> Any:
        # Serve registers its exception handlers on the app it is given (add_exception_handler).
        if name == "app":
            raise AttributeError(name)
        return getattr(self.app, name)


def _fingerprint_of(model: str, revision: str | None) -> dict[str, Any]:
    """The model fingerprint of the files this replica loads (a Hub id: its snapshot in the local Hub cache)."""
    from recipe.psft.files import model_fingerprint

    try:
        folder = model
        if not os.path.isdir(folder):
            from huggingface_hub import snapshot_download

            folder = snapshot_download(model, revision=revision, local_files_only=True)
        return {**model_fingerprint(folder), "error": None}
    except Exception as e:  # reported to the client, which refuses to evaluate without a fingerprint
        return {"weights_sha256": None, "tokenizer_sha256": None, "error": f"{type(e).__name__}: {e}"}


@serve.ingress()
class VLLMServer:
    """One replica: an ``AsyncLLM`` engine and vLLM's OpenAI app around it."""

    async def __init__(self, cli_args: list[str], api_key: str | None):
        import asyncio
        import socket
        from contextlib import AsyncExitStack

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.api_server.app_state import init_app_state
        from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client_from_engine_args
        from vllm.entrypoints.launchers.app import build_app
        from vllm.entrypoints.launchers.cli_args import make_arg_parser, validate_parsed_serve_args
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        # The key is the one the app was built with, on every node: never this node's environment.
        os.environ.pop(API_KEY_ENV, None)
        args = make_arg_parser(FlexibleArgumentParser()).parse_args(cli_args)
        args.api_key = [api_key] if api_key else None
        validate_parsed_serve_args(args)
        local = os.path.isdir(args.model)
        # Hash a local folder while the engine loads it; a Hub id only once the engine has fetched it.
        hashing = asyncio.create_task(asyncio.to_thread(_fingerprint_of, args.model, args.revision)) if local else None
        self._stack = AsyncExitStack()
        engine = await self._stack.enter_async_context(
            build_async_engine_client_from_engine_args(AsyncEngineArgs.from_cli_args(args))
        )
        fingerprint = await hashing if hashing else await asyncio.to_thread(_fingerprint_of, args.model, args.revision)
        self._identity = {
            "served_names": list(args.served_model_name or [args.model]),
            "root": args.model,
            "replica": f"{socket.gethostname()}:{os.getpid()}",
            **fingerprint,
        }
        tasks = await engine.get_supported_tasks()
        self._engine = engine
        self._app = build_app(args, tasks, engine.model_config)
        await init_app_state(engine, self._app.state, args, tasks)
        # vLLM's error handlers flag `state.server.should_exit` when the engine dies (uvicorn's shutdown
        # switch); under Serve there is no uvicorn server, and check_health below restarts the replica.
        self._app.state.server = _ShutdownFlag()
        self._app.add_api_route(FINGERPRINT_ROUTE, self._fingerprint, methods=["GET"])
        # Wrapped rather than added as middleware: vLLM's app state set-up has built its middleware stack.
        self._asgi = _BearerGuard(self._app, key=api_key) if api_key else self._app

    async def _fingerprint(self) -> dict[str, Any]:
        return self._identity

    async def check_health(self) -> None:
        """Serve's periodic health check: a dead engine fails it, so Serve replaces the replica."""
        if self._engine.errored and not self._engine.is_running:
            raise RuntimeError("the vLLM engine of this replica has died")

    def __serve_build_asgi_app__(self):
        return self._asgi

    async def __del__(self):
        stack = getattr(self, "_stack", None)
        if stack is not None:
            await stack.aclose()


def _gpus_in_cluster() -> int:
    import ray

    # `serve run` calls this builder before its own ray.init: join the cluster it would join, or
    # start the local instance it would start, but on 127.0.0.1 only.
    init_serving_ray(SERVE_NAMESPACE)
    return int(ray.cluster_resources().get("GPU", 0))


def build_app(args: dict[str, Any]) -> serve.Application:
    """The Serve application for ``serve run evaluation.serve_app:build_app model=PATH ...``."""
    args = {_norm_key(k): v for k, v in args.items()}
    if "model" not in args:
        raise ValueError("build_app needs model=PATH (a Hugging Face model folder or hub id)")
    model = str(args["model"])
    api_key = _api_key(args)
    host, port = str(args.get("host", DEFAULT_HOST)), int(args.get("port", DEFAULT_PORT))
    if not is_loopback(host) and not api_key and str(args.get("insecure", "false")).lower() != "true":
        raise ValueError(
            f"host={host} exposes the server beyond this machine and no API key is set: export {API_KEY_ENV} "
            "(clients send it as --api-key / VLLM_API_KEY, over https or an SSH tunnel), or pass insecure=true "
            "to serve without one"
        )
    args.setdefault("served-model-name", served_name(model))
    # Sampling defaults must not come from the model's generation_config.json (vLLM's default "auto"
    # would add e.g. top_k 20 and repetition_penalty 1.05 for Qwen2.5-Instruct to every request that
    # leaves them out); the evaluation client pins every parameter as well.
    args.setdefault("generation-config", "vllm")
    tp = int(args.get("tensor-parallel-size", 1))
    gpus = _gpus_in_cluster()
    replicas = int(args["num-replicas"]) if "num-replicas" in args else max(1, gpus // tp)
    if gpus and gpus < tp:
        raise ValueError(f"tensor-parallel-size={tp} needs {tp} GPUs; the cluster has {gpus}")
    if gpus and tp > 1:
        # The replica owns its tp GPUs; vLLM's own worker processes use them (no nested Ray placement).
        args.setdefault("distributed-executor-backend", "mp")
    if not gpus:
        args.setdefault("enforce-eager", "true")  # no CUDA graphs / torch.compile on vLLM's CPU backend

    # Bind the HTTP proxy where asked before `serve run` starts Serve with its defaults. A Serve instance
    # already running in the cluster keeps its own proxy settings (Serve only logs a warning): refuse that.
    serve.start(http_options={"host": host, "port": port})
    _check_proxy(host, port)

    env = {k: v for k, v in os.environ.items() if k.startswith(_PASS_ENV_PREFIXES) and not _SECRET_NAME.search(k)}
    actor_options: dict[str, Any] = {"runtime_env": {"env_vars": env}}
    actor_options.update({"num_gpus": tp, "num_cpus": 1} if gpus else {"num_cpus": 1})
    deployment = serve.deployment(
        VLLMServer,
        name="vllm",
        num_replicas=replicas,
        ray_actor_options=actor_options,
        max_ongoing_requests=1_000_000,  # vLLM batches internally; Serve should not queue in front of it
        health_check_timeout_s=600,
        graceful_shutdown_timeout_s=30,
    )
    return deployment.bind(vllm_cli_args(args), api_key)


def _api_key(args: dict[str, Any]) -> str | None:
    """The API key from ``$VLLM_API_KEY``; ``api-key=`` on the command line is refused (see the module doc)."""
    if "api-key" in args:
        raise ValueError(
            f"api-key=... is visible to every user of this machine (ps) and on Ray's dashboard (Serve config "
            f"arguments): export {API_KEY_ENV} in the shell that runs `serve run` instead"
        )
    return os.environ.get(API_KEY_ENV) or None


def _check_proxy(host: str, port: int) -> None:
    from ray.serve.context import _get_global_client

    config = _get_global_client().http_config
    if (config.host, config.port) != (host, port):
        raise ValueError(
            f"Serve already runs in this Ray cluster with its HTTP proxy on {config.host}:{config.port}, not "
            f"{host}:{port} as asked: ask for host={config.host} port={config.port}, or stop it (serve shutdown)"
        )


def main(argv: list[str] | None = None) -> None:
    """Run the app on a private local Ray instance until Ctrl-C / SIGTERM (tests, single machines)."""
    import signal
    import time

    import ray

    argv = sys.argv[1:] if argv is None else argv
    argv = ["insecure=true" if a == "--insecure" else a for a in argv]
    if not argv or any("=" not in a for a in argv):
        raise SystemExit(__doc__)
    args = dict(a.split("=", 1) for a in argv)
    init_serving_ray(SERVE_NAMESPACE, join_existing=False)  # a private instance: 127.0.0.1, no dashboard
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        serve.run(build_app(args), name="default", route_prefix="/", blocking=False)
        host, port = args.get("host", DEFAULT_HOST), args.get("port", DEFAULT_PORT)
        print(f"[llm] serving {served_name(args['model'])} at http://{host}:{port}/v1", flush=True)
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
