"""Prompt templates: presets shipped with histoldm or the user's own file.

A template is either plain text (one user message) or a YAML/JSON list of `{role, content}`
messages. Three variables are replaced literally, not with str.format, because reports are full
of braces: `{report}`, `{token_budget}` (CLIP tokens) and `{word_budget}` (tokens / 1.4, since
LLMs count words better than CLIP tokens; medical English averages about 1.4 CLIP tokens a word).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from histoldm.errors import UserError
from histoldm.fileio import read_text_input

PRESETS = ("pathldm", "targeted")
_PRESET_DIR = Path(__file__).resolve().parent.parent / "resources" / "prompts"
ROLES = ("system", "user", "assistant")
TOKENS_PER_WORD = 1.4


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    messages: tuple[tuple[str, str], ...]  # (role, content)

    @property
    def sha256(self) -> str:
        """Identifies the template (not the rendered prompt), for the output records."""
        return hashlib.sha256(json.dumps(self.messages).encode("utf-8")).hexdigest()


def word_budget(token_budget: int) -> int:
    return max(1, int(token_budget / TOKENS_PER_WORD))


def _parse(text: str, source: str, as_messages: bool) -> tuple[tuple[str, str], ...]:
    if not as_messages:
        return (("user", text.strip()),)
    try:
        data = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as e:
        raise UserError(f"{source}: malformed YAML/JSON prompt ({str(e).splitlines()[0]})") from None
    if isinstance(data, str):
        return (("user", data.strip()),)
    if not isinstance(data, list) or not data:
        raise UserError(f"{source}: a prompt file holds text or a non-empty list of {{role, content}} messages")
    messages = []
    for i, m in enumerate(data):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise UserError(f"{source}: message {i + 1} needs role (one of {', '.join(ROLES)}) and content text")
        messages.append((m["role"], m["content"]))
    return tuple(messages)


def load_prompt(spec: str) -> PromptTemplate:
    """A preset name (`pathldm`, `targeted`) or a path to a .txt/.yaml/.yml/.json template."""
    if spec in PRESETS:
        text = (_PRESET_DIR / f"{spec}.yaml").read_text(encoding="utf-8")
        return PromptTemplate(spec, _parse(text, f"preset {spec}", as_messages=True))
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"{spec}: not a prompt preset ({', '.join(PRESETS)}) nor a prompt file")
    text = read_text_input(path, "prompt file")
    messages = _parse(text, str(path), as_messages=path.suffix.lower() in (".yaml", ".yml", ".json"))
    if not any("{report}" in content for _, content in messages):
        raise UserError(f"{path}: the prompt never uses {{report}}, so the model would not see the report")
    return PromptTemplate(path.name, messages)


def render(template: PromptTemplate, report: str, token_budget: int) -> list[dict[str, str]]:
    """Chat messages with the variables filled in."""
    values = {"{report}": report, "{token_budget}": str(token_budget), "{word_budget}": str(word_budget(token_budget))}
    rendered = []
    for role, content in template.messages:
        for key in ("{token_budget}", "{word_budget}", "{report}"):  # report last: it may contain the others
            content = content.replace(key, values[key])
        rendered.append({"role": role, "content": content})
    return rendered


def feedback(reply_tokens: int | None, token_budget: int) -> str:
    """The regeneration message after a reply that was over budget (or empty when reply_tokens is None)."""
    words = word_budget(token_budget)
    if reply_tokens is None:
        return (
            f"That reply was empty. Write the summary in at most {token_budget} tokens (about {words} words). "
            "Reply with the summary only."
        )
    return (
        f"That was {reply_tokens} tokens; rewrite it in at most {token_budget} tokens (about {words} words), "
        "keeping the most important findings. Reply with the summary only."
    )


def contradiction_feedback(problems: list[str], token_budget: int) -> str:
    """The regeneration message after a reply that states a finding differently from the report."""
    return (
        f"That summary contradicts the report: {'; '.join(problems)}. Rewrite it in at most {token_budget} tokens "
        f"(about {word_budget(token_budget)} words), stating every finding as the report does: keep 'no', 'absent', "
        "'not identified', 'negative' and doubts such as 'possible' or 'cannot be excluded'. "
        "Reply with the summary only."
    )
