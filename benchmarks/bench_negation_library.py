"""Would the field's negation library read finding statuses better than the project's clause reader?

    pip install negspacy==1.1.0   # not a project dependency: this script measures it
    python benchmarks/bench_negation_library.py

negspacy's NegEx on a blank spaCy pipeline (no model download): an entity ruler for the finding names
(DCIS, LVI, tumour necrosis), one NegEx component for negation (`en_clinical` terms plus pathology
post-negations: "absent", "not identified", "none seen", "negative") and a second one, with its own
extension, for uncertainty ("suspicious for", "cannot be excluded"). Both it and the project's reader
(`case_facts`, the whole pipeline on a short report holding the sentence) read the 35 phrasings of
tests/test_summarize.py's NEGATION_TABLE; a row is right when the status (present / absent / possible)
equals the table's. Also the CPU time of the spaCy pipeline alone on hard reports (one core).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import re  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import spacy  # noqa: E402
from negspacy.negation import Negex  # noqa: E402,F401  (registers the "negex" factory)
from negspacy.termsets import termset  # noqa: E402

from histoldm.summaries.case_facts import case_facts  # noqa: E402
from histoldm.summaries.hard_reports import make_hard_reports  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_summarize import NEGATION_TABLE, _table_report  # noqa: E402

_TERMS = {
    "dcis": ["ductal carcinoma in situ", "dcis"],
    "lvi": ["lymphovascular invasion", "lymph-vascular invasion", "lymph-vascular space invasion", "lvi"],
    "necrosis": ["tumor necrosis", "necrosis"],
}


def pipeline():
    nlp = spacy.blank("en")
    nlp.add_pipe("sentencizer")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(
        [
            {"label": kind, "pattern": [{"LOWER": w} for w in re.findall(r"\w+|-", term)]}
            for kind, terms in _TERMS.items()
            for term in terms
        ]
    )
    negation = termset("en_clinical")
    negation.add_patterns(
        {
            "following_negations": [
                "absent",
                "not identified",
                "is not identified",
                "not seen",
                "is not seen",
                "none seen",
                "negative",
            ],
            "preceding_negations": ["negative for", "no evidence of", "free of"],
        }
    )
    nlp.add_pipe("negex", name="negation", config={"neg_termset": negation.get_patterns()})
    doubt = {
        "pseudo_negations": [],
        "termination": ["but", "however", ",", ";"],
        "preceding_negations": ["suspicious for", "focus suspicious for", "cannot rule out", "possible", "probable"],
        "following_negations": ["cannot be excluded", "cannot be ruled out", "is suspected", "equivocal"],
    }
    nlp.add_pipe("negex", name="uncertainty", config={"neg_termset": doubt, "extension_name": "uncertain"})
    return nlp


def library_status(nlp, sentence: str, finding: str) -> str | None:
    ents = [e for e in nlp(sentence).ents if e.label_ == finding]
    if not ents:
        return None
    if ents[0]._.uncertain:
        return "possible"
    return "absent" if ents[0]._.negex else "present"


def project_status(sentence: str, finding: str) -> str | None:
    fact = next((f for f in case_facts(_table_report("row", sentence)) if f.kind == finding), None)
    return fact.status if fact else None


def main() -> None:
    nlp = pipeline()
    right = {"library": 0, "project": 0}
    for sentence, finding, truth in NEGATION_TABLE:
        said = {"library": library_status(nlp, sentence, finding), "project": project_status(sentence, finding)}
        for name, status in said.items():
            right[name] += status == truth
        if said["library"] != truth or said["project"] != truth:
            print(f"truth {truth:8s} library {said['library']!s:8s} project {said['project']!s:8s} | {sentence!r}")
    print(
        f"NEGATION_TABLE rows right (of {len(NEGATION_TABLE)}): negspacy {right['library']}, project reader "
        f"{right['project']}"
    )
    texts = [c.text for c in make_hard_reports(100, seed=0)]
    start = time.process_time()
    for text in texts:
        nlp(text)
    print(
        f"spaCy + NegEx alone: {(time.process_time() - start) / len(texts) * 1000:.1f} ms CPU per hard report (one "
        "core)"
    )


if __name__ == "__main__":
    main()
