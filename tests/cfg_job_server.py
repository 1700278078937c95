"""Resolve printed Hydra commands (``python -m MODULE overrides...``) with ``--cfg job``, many per process.

Each ``--cfg job`` in a fresh interpreter pays verl's import (Hydra's ``pkg://verl.trainer.config`` search
path imports ``verl``, hence torch and tensordict: about 14 s on 2 cores). This server pays it once: it
reads one JSON command per line on stdin, runs the command's module as ``__main__`` with that argv plus
``--cfg job`` (the same ``@hydra.main`` entry point a user runs), and answers one JSON line
``{"code", "stdout", "stderr"}``. Hydra's global state is cleared between commands.

    proc = subprocess.Popen([python, "tests/cfg_job_server.py"], stdin=PIPE, stdout=PIPE, text=True)
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
import traceback


def resolve(command: list[str]) -> dict:
    if command[1:2] != ["-m"]:
        return {"code": 2, "stdout": "", "stderr": f"expected `python -m MODULE ...`, got {command[:3]}"}
    module, args = command[2], command[3:]
    out, err, code = io.StringIO(), io.StringIO(), 0
    saved_argv = sys.argv
    sys.argv = [module, *args, "--cfg", "job"]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int | None):
            err.write(str(exc.code))
    except BaseException:
        code = 1
        err.write(traceback.format_exc())
    finally:
        sys.argv = saved_argv
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def main() -> None:
    answer = sys.stdout
    for line in sys.stdin:
        if line.strip():
            answer.write(json.dumps(resolve(json.loads(line))) + "\n")
            answer.flush()


if __name__ == "__main__":
    main()
