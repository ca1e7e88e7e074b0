"""What a text says about a finding: present, absent or possible, read from the whole clause.

A summary that drops "absent" from "Ductal carcinoma in situ, absent." states the opposite of the
report, so the status of a finding is read from every cue around its keyword, not only from the
keyword's comma segment:
- cues before it govern it ("no", "negative for", "no evidence of", "without", "suspicious for",
  "cannot rule out", "positive for", "with"), and a list after the cue ("negative for necrosis,
  lymphovascular invasion and DCIS"): a list joined by and/or/nor, or a single item;
- cues after it close it ("absent", "not identified", "is not seen", "negative", "cannot be
  excluded", "present", "identified"), across commas and descriptors ("DCIS, cribriform type,
  present") or a list of findings ("LVI and DCIS are absent"), but never across another finding
  with its own words ("IDC, grade 2, DCIS absent" says nothing about the IDC).
A negation or doubt before the keyword beats a positive participle after it ("no LVI identified",
"no evidence of DCIS is seen"), and uncertainty is its own status: "suspicious for LVI" is
"possible", never "present". The same reader checks summaries against their reports.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

Status = Literal["present", "absent", "possible"]
_UNSTATED = "unstated"  # "LVI: not assessed" names the finding without saying anything about it

# Patterns run case-sensitively on ASCII-lowered text and start with a letter, not \b, so the
# regex engine can skip ahead to possible first letters (5x faster on long reports); word starts
# are checked in `finding_matches` instead.
FINDINGS: dict[str, re.Pattern[str]] = {
    "lvi": re.compile(
        r"lympho?-?\s?vascular(?:\s+(?:space\s+)?invasion)?|angiolymphatic(?:\s+invasion)?"
        r"|lymphatic\s+invasion|vascular\s+invasion|lvi\b"
    ),
    "dcis": re.compile(r"ductal\s+carcinoma\s+in[- ]situ(?:\s*\(dcis\))?|dcis\b|intraductal\s+carcinoma"),
    "lcis": re.compile(r"lobular\s+carcinoma\s+in[- ]situ(?:\s*\(lcis\))?|lcis\b"),
    "necrosis": re.compile(r"(?:tumou?r\s+|comedo[- ]?)?necros[ie]s\b|necrotic\b"),
    "calcifications": re.compile(r"(?:micro-?)?calcifications?\b"),
    "invasive": re.compile(
        r"(?:invasive|infiltrating)\s+(?:(?:mammary|ductal|lobular|mucinous|papillary|micropapillary)\s+)*carcinoma\b"
    ),
}
_NOT_AFTER = {"necrosis": "fat "}  # fat necrosis is a benign reaction, not tumour necrosis
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def lower(text: str) -> str:
    """ASCII letters lowered and nothing else, so every offset stays valid."""
    return text.translate(_ASCII_LOWER)


def finding_matches(finding: str, low: str):
    """Matches of a finding in lowered text that start a word (and are not, e.g., fat necrosis)."""
    not_after = _NOT_AFTER.get(finding)
    for m in FINDINGS[finding].finditer(low):
        start = m.start()
        if start and (low[start - 1].isalnum() or low[start - 1] == "_"):
            continue
        if not_after and low.endswith(not_after, 0, start):
            continue
        yield m


# Nouns that are not read here but end another finding's scope (a list of them is still a list).
_OTHER_NOUNS = re.compile(
    r"\bmargins?\b|\blymph\s+nodes?\b|\bmetasta\w+(?:\s+carcinoma)?|\bpaget'?s?\s+disease\b"
    r"|\bcarcinoma\b|\btumou?r\b"
)

_CUES: list[tuple[str, str, str]] = [  # (regex, "pre"/"post"/"adjective", status); longer phrases first
    (
        r"not\s+(?:assessed|evaluated|assessable|applicable|reported|performed)|cannot\s+be\s+(?:assessed|evaluated|determined)"
        r"|\bunknown\b|\bn/a\b",
        "post",
        _UNSTATED,
    ),
    (
        r"cannot\s+be\s+(?:excluded|ruled\s+out)|can'?t\s+be\s+(?:excluded|ruled\s+out)|not\s+(?:be\s+)?(?:excluded|ruled\s+out)"
        r"|(?:is|are)\s+(?:suspected|questionable|equivocal|indeterminate|possible|probable)|\bsuspected\b|\bequivocal\b|\bindeterminate\b",
        "post",
        "possible",
    ),
    (
        r"not\s+(?:definitively\s+|definitely\s+)?(?:identified|seen|present|detected|found|appreciated|noted|visualized)"
        r"|none\s+(?:identified|seen|present|detected)|\babsent\b|\bnegative\b(?!\s+for)|\bnone\b|\buninvolved\b",
        "post",
        "absent",
    ),
    (
        r"suspicious\s+(?:for|of)|suggestive\s+of|concerning\s+for|worrisome\s+for|cannot\s+(?:rule\s+out|exclude)"
        r"|can'?t\s+(?:rule\s+out|exclude)|\bpossible\b|\bpossibly\b|\bprobable\b|\bquestionable\b|\bfocus\s+suspicious\s+for",
        "pre",
        "possible",
    ),
    (
        r"no\s+(?:evidence|sign|signs|definite\s+evidence)\s+of|negative\s+for|free\s+of|absence\s+of|without(?:\s+evidence\s+of)?"
        r"|(?:does|did|do)\s+not\s+(?:show|demonstrate|reveal|contain|identify)|\bno\b|\bnot\b|\bnor\b",
        "pre",
        "absent",
    ),
    (
        r"positive\s+for|presence\s+of|\bwith\b|associated\s+with|\bshows?\b|\bshowing\b|\bdemonstrat\w*|\bfeatures?\s+of",
        "pre",
        "present",
    ),
    (r"\bpresent\b|\bidentified\b|\bseen\b|\bnoted\b|\bdetected\b|\bpositive\b|\binvolved\b", "post", "present"),
    (
        r"\bextensive\b|\bfocal\b|\bmultifocal\b|\bprominent\b",
        "adjective",
        "present",
    ),  # "extensive necrosis", "LVI: focal"
]
_CUE = re.compile("|".join(f"(?P<c{i}>{pattern})" for i, (pattern, _, _) in enumerate(_CUES)))  # on lowered clauses
_GLUE = re.compile(
    r"^(?:[\s,:/()\-]|\band\b|\bor\b|\bnor\b|\bis\b|\bare\b|\bwas\b|\bwere\b|\bboth\b|\beither\b|\bneither\b"
    r"|\bextensive\b|\bfocal\b|\bmultifocal\b|\bprominent\b)*$"
)
_LIST_WORD = re.compile(r"\b(?:and|or|nor)\b")
_MAX_FILLER_WORDS = 3  # "no evidence of [definite residual] DCIS": words between a cue and its first item
_MAX_DESCRIPTOR_WORDS = 8  # "DCIS[, cribriform type, nuclear grade 2,] present"
_CLAUSE_END = re.compile(r"(?<!\d)\.|\.(?!\d)|;|\n")  # "2.1 cm" is one clause, "grade 2. DCIS" two
_ORDER = (_UNSTATED, "possible", "absent", "present")  # when two cues disagree: doubt, then negation


@lru_cache(maxsize=64)
def clauses(text: str) -> tuple[str, ...]:
    """Sentences and clauses; a full stop between digits (2.1) does not split. Cached: every
    fact reader walks the same diagnostic text."""
    return tuple(c.strip() for c in _CLAUSE_END.split(text) if c.strip())


@lru_cache(maxsize=4096)
def _nouns(clause: str) -> tuple[tuple[int, int], ...]:
    """Spans of every finding keyword and scope-ending noun, without overlaps (the earlier wins)."""
    spans = sorted(
        {m.span() for f in FINDINGS for m in finding_matches(f, clause)}
        | {m.span() for m in _OTHER_NOUNS.finditer(clause)}
    )
    kept: list[tuple[int, int]] = []
    for s, e in spans:
        if kept and s < kept[-1][1]:
            if e > kept[-1][1] and s == kept[-1][0]:
                kept[-1] = (s, e)
            continue
        kept.append((s, e))
    return tuple(kept)


@lru_cache(maxsize=4096)
def _cues(clause: str) -> tuple[tuple[int, int, str, str], ...]:
    found = []
    for m in _CUE.finditer(clause):
        i = int(next(k for k, v in m.groupdict().items() if v is not None)[1:])
        found.append((m.start(), m.end(), _CUES[i][1], _CUES[i][2]))
    return tuple(found)


def _without_nouns(text: str, offset: int, nouns: Sequence[tuple[int, int]]) -> tuple[str, int]:
    """`text` (starting at `offset` in the clause) with the nouns inside it blanked, and how many."""
    chars, count = list(text), 0
    for s, e in nouns:
        if s >= offset and e <= offset + len(text):
            chars[s - offset : e - offset] = " " * (e - s)
            count += 1
    return "".join(chars), count


def _pre_governs(
    clause: str,
    cue_end: int,
    key: tuple[int, int],
    nouns: Sequence[tuple[int, int]],
    cues: Sequence[tuple[int, int, str, str]],
) -> bool:
    """Whether the keyword at `key` is in the scope of a cue ending at `cue_end`: the first item
    after at most a few filler words, or an item of a list joined by and/or/nor."""
    items = [n for n in nouns if n[0] >= cue_end]
    if not items:
        return False
    if len(clause[cue_end : items[0][0]].split()) > _MAX_FILLER_WORDS:
        return False
    run, seps = [items[0]], []
    for prev, nxt in zip(items, items[1:]):
        sep = clause[prev[1] : nxt[0]]
        if not _GLUE.match(sep):
            break
        after = clause[nxt[1] :]
        own_cue = next((c for c in cues if c[0] >= nxt[1]), None)
        if (
            "," in sep
            and not _LIST_WORD.search(sep)
            and own_cue
            and own_cue[2] in ("post", "adjective")
            and _GLUE.match(after[: own_cue[0] - nxt[1]])
        ):
            break  # ", LVI present": a new statement, not a list item
        run.append(nxt)
        seps.append(sep)
    if len(run) > 1 and not any(_LIST_WORD.search(s) for s in seps):
        run = run[:1]
    return key in run


def _post_applies(clause: str, key: tuple[int, int], cue_start: int, nouns: Sequence[tuple[int, int]]) -> bool:
    gap, n_nouns = _without_nouns(clause[key[1] : cue_start], key[1], nouns)
    if n_nouns:
        return bool(_GLUE.match(gap))  # "LVI and DCIS are absent"
    return len(gap.replace(",", " ").split()) <= _MAX_DESCRIPTOR_WORDS


def status_at(clause: str, key: tuple[int, int]) -> str | None:
    """The status of the finding whose keyword spans `key` in `clause`: a Status, "unstated"
    ("not assessed"), or None when no cue reaches it."""
    clause = lower(clause)
    nouns = _nouns(clause)
    enclosing = next((n for n in nouns if n[0] <= key[0] and key[1] <= n[1]), None)
    if enclosing:  # a keyword inside a longer noun ("carcinoma" of "invasive carcinoma") shares its status
        key = enclosing
    else:
        nouns = sorted([*nouns, key])
    cues = _cues(clause)
    before = [c for c in cues if c[1] <= key[0]]
    after = [c for c in cues if c[0] >= key[1]]
    adjective = (
        before[-1] if before and before[-1][2] == "adjective" and not clause[before[-1][1] : key[0]].strip() else None
    )
    governing = [c for c in before if c[2] != "adjective"]  # "no extensive necrosis": adjectives are filler words
    pre = (
        governing[-1]
        if governing and governing[-1][2] == "pre" and _pre_governs(clause, governing[-1][1], key, nouns, cues)
        else None
    )
    pre = pre or adjective  # else an adjective right before the finding states it: "with extensive necrosis"
    post = (
        after[0]
        if after and after[0][2] in ("post", "adjective") and _post_applies(clause, key, after[0][0], nouns)
        else None
    )
    if pre and post:
        return min(pre[3], post[3], key=_ORDER.index)
    if pre:
        return pre[3]
    return post[3] if post else None


@lru_cache(maxsize=64)
def _clause_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in _CLAUSE_END.finditer(text)]


def _clause_of(text: str, start: int, end: int) -> tuple[str, tuple[int, int]]:
    """The clause of `text` holding text[start:end], and the span within it."""
    starts = _clause_starts(text)
    i = bisect.bisect_right(starts, start) - 1
    stop = starts[i + 1] - 1 if i + 1 < len(starts) else len(text)
    return text[starts[i] : stop], (start - starts[i], end - starts[i])


@lru_cache(maxsize=1024)
def read_status(text: str, finding: str, bare_means_present: bool = False) -> Status | None:
    """The first stated status of `finding` (a key of FINDINGS) in `text` (cached: the summariser
    and the consistency check read the same report).

    `bare_means_present`: in a caption a finding named without a status word asserts it
    ("IDC; DCIS; ER+"), while in a report a bare name may be a heading or a question."""
    low = lower(text)
    for m in finding_matches(finding, low):
        clause, span = _clause_of(low, m.start(), m.end())
        status = status_at(clause, span)
        if status is None and bare_means_present:
            status = "present"
        if status is not None and status != _UNSTATED:
            return status  # type: ignore[return-value]
    return None
