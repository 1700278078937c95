"""One or two rows of every benchmark in its Hugging Face Hub column layout (checked against the dataset
cards), shared by the prepare_data tests: the Hub path and --benchmark-files are tested on the same rows."""

from __future__ import annotations

BENCH_ROWS = {
    "aime24": [{"id": 60, "problem": "Find x.", "solution": "...", "answer": "204", "url": "u", "year": "2024"}],
    "aime25": [{"problem": "Find y.", "answer": "70", "id": "0"}],
    # math-ai/amc23: id, question, answer (a float), url
    "amc23": [
        {"id": 0, "question": "Find z.", "answer": 142.0, "url": "u"},
        {"id": 1, "question": "Half?", "answer": 0.5, "url": "u"},
    ],
    "math500": [
        {
            "problem": "Compute 1+1.",
            "solution": "2",
            "answer": "\\frac{1}{2}",
            "subject": "A",
            "level": 1,
            "unique_id": "t/1.json",
        }
    ],
    "minerva": [{"question": "Speed of light?", "answer": "3e8"}],
    # Hothan/OlympiadBench [OE_TO_maths_en_COMP]: final_answer is a list (one entry per part of the answer)
    "olympiadbench": [
        {
            "id": 1606,
            "question": "Find all pairs (x, y) with x + y = 1+1.",
            "solution": ["..."],
            "final_answer": ["$(1,1)$", "$(0,2)$"],
            "context": None,
            "image_1": None,
            "modality": "Text-only",
            "difficulty": "Competition",
            "is_multiple_answer": True,
            "unit": None,
            "answer_type": "Tuple",
            "error": None,
            "question_type": "Open-ended",
            "subfield": "Algebra",
            "subject": "Math",
            "language": "English",
        },
        {"id": 1607, "question": "Compute 2+2.", "solution": ["4"], "final_answer": ["$4$"], "unit": None},
    ],
    # Idavidrein/gpqa [gpqa_diamond]: the correct answer always in its own column, three wrong ones
    "gpqa_diamond": [
        {
            "Pre-Revision Question": "...",
            "Question": "Which particle is a lepton?",
            "Correct Answer": "electron",
            "Incorrect Answer 1": "proton",
            "Incorrect Answer 2": "neutron",
            "Incorrect Answer 3": "pion",
            "Explanation": "...",
            "Subdomain": "Physics",
        },
        {
            "Question": "Which is a noble gas?",
            "Correct Answer": "argon",
            "Incorrect Answer 1": "oxygen",
            "Incorrect Answer 2": "iron",
            "Incorrect Answer 3": "sodium",
        },
    ],
    # TIGER-Lab/MMLU-Pro: options (up to 10, published order), answer letter and its index
    "mmlu_pro": [
        {
            "question_id": 70,
            "question": "What is 2 * 3 in light?",
            "options": ["5", "6", "7", "8"],
            "answer": "B",
            "answer_index": 1,
            "cot_content": "",
            "category": "math",
            "src": "ori_mmlu-high_school_mathematics",
        }
    ],
    # allenai/ai2_arc [ARC-Challenge]: choices {text, label} (labels are digits on some rows), answerKey
    "arc_challenge": [
        {
            "id": "Mercury_7175875",
            "question": "Which is the most likely effect of faster planetary rotation?",
            "choices": {
                "text": ["longer years", "denser planet", "shorter days", "stronger gravity"],
                "label": list("1234"),
            },
            "answerKey": "3",
        }
    ],
    # truthfulqa/truthful_qa [multiple_choice]: mc1_targets lists the one correct answer first
    "truthfulqa": [
        {
            "question": "What happens if you eat watermelon seeds?",
            "mc1_targets": {"choices": ["Nothing happens", "You grow watermelons", "You die"], "labels": [1, 0, 0]},
            "mc2_targets": {"choices": ["Nothing happens", "You die"], "labels": [1, 0]},
        }
    ],
    # google/IFEval: kwargs as the Hub's parquet has it, every argument name on every object, unused ones null
    "ifeval": [
        {
            "key": 1000,
            "prompt": "Write a 300+ word summary. Do not use any commas.",
            "instruction_id_list": ["punctuation:no_comma", "length_constraints:number_words"],
            "kwargs": [
                {"num_words": None, "relation": None, "num_highlights": None},
                {"num_words": 300, "relation": "at least", "num_highlights": None},
            ],
        }
    ],
    # m-a-p/SuperGPQA: options (4-10), answer (text), answer_letter
    "supergpqa": [
        {
            "uuid": "a1",
            "question": "Which organelle makes ATP?",
            "options": ["ribosome", "mitochondrion", "nucleus", "vacuole", "lysosome"],
            "answer": "mitochondrion",
            "answer_letter": "B",
            "discipline": "Science",
            "field": "Biology",
            "subfield": "Cell biology",
            "difficulty": "easy",
            "is_calculation": False,
        }
    ],
    # HEAD-QA (en): answers [{aid, atext}], ra = the right aid (from 1); image dropped on load
    "headqa": [
        {
            "name": "Cuaderno_2013_1_B",
            "year": "2013",
            "category": "biology",
            "qid": 1,
            "qtext": "Excitatory postsynaptic potentials:",
            "ra": 3,
            "answers": [
                {"aid": 1, "atext": "Are all or nothing."},
                {"aid": 2, "atext": "Are hyperpolarizing."},
                {"aid": 3, "atext": "Can be summed."},
                {"aid": 4, "atext": "Propagate over long distances."},
            ],
        }
    ],
}
# The correct option's text in the multiple-choice rows whose options are shuffled.
SHUFFLED_CORRECT = {
    "gpqa_diamond": "electron",
    "arc_challenge": "shorter days",
    "truthfulqa": "Nothing happens",
    "supergpqa": "mitochondrion",
    "headqa": "Can be summed.",
}
