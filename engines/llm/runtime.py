"""llama.cpp (llama-cpp-python) runtime with grammar-constrained JSON output.

The model is loaded once, on first use, and reused. Generation is deterministic: temperature
0, a fixed seed, and a grammar built from the caller's JSON schema, so the output always
parses and an ``enum`` in the schema closes the vocabulary. A deadline checked at every token
stops generation that runs past ``timeout_s`` (checked in Python between tokens; a hung
native call is the job of the worker process's own deadline, see :mod:`engines.llm.worker`).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "run scripts/build_llama.sh (builds llama-cpp-python into ./wheels and installs it), "
    "or install the optional extra: pip install 'rtnode[llm]'"
)
SYSTEM_PROMPT = "You answer with JSON only."


class LLMUnavailable(RuntimeError):
    """A model is configured but cannot be used (llama_cpp missing, model file missing)."""


class LLMError(RuntimeError):
    """Generation failed (bad output, crashed worker)."""


class LLMTimeout(LLMError):
    """Generation ran past its deadline."""


class JsonGenerator(Protocol):
    """Anything that turns a prompt and a JSON schema into a dict that fits the schema."""

    def generate_json(
        self, prompt: str, schema: dict[str, Any], max_tokens: int = 64, timeout_s: float = 30.0
    ) -> dict[str, Any]: ...


def available(model_path: Path | str | None) -> bool:
    """Whether the LLM path can run.

    No model configured -> ``False`` (the deterministic path works alone). A model configured
    but unusable -> :class:`LLMUnavailable` with what to do about it.
    """
    if not model_path:
        return False
    if importlib.util.find_spec("llama_cpp") is None:
        raise LLMUnavailable(
            f"an LLM model is configured ({model_path}) but llama_cpp is not installed: "
            + INSTALL_HINT
        )
    if not Path(model_path).is_file():
        raise LLMUnavailable(f"LLM model file not found: {model_path}")
    return True


class LlamaRuntime:
    """One llama.cpp model in this process.

    Parameters
    ----------
    model_path
        GGUF file.
    n_ctx
        Context size in tokens.
    n_threads
        CPU threads (``None``: one less than the machine's cores, at least one: llama.cpp's
        threads spin while they wait, so using every core starves the node's own threads
        and, measured here, makes a 2-core machine several times slower under load).
    n_gpu_layers
        Layers offloaded to a GPU; ignored (logged) by a CPU-only build.
    seed
        Sampling seed (output is greedy at temperature 0 anyway).
    """

    def __init__(
        self,
        model_path: Path | str,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        seed: int = 0,
    ) -> None:
        self.model_path = Path(model_path)
        self.n_ctx, self.n_threads, self.n_gpu_layers, self.seed = (
            n_ctx,
            n_threads if n_threads else max(1, (os.cpu_count() or 2) - 1),
            n_gpu_layers,
            seed,
        )
        self._llama: Any = None
        self._grammars: dict[str, Any] = {}
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the model now (otherwise the first call does)."""
        available(self.model_path)
        if self._llama is not None:
            return
        import llama_cpp

        self._log_gpu(llama_cpp)
        started = time.monotonic()
        self._llama = llama_cpp.Llama(
            model_path=str(self.model_path),
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            n_gpu_layers=self.n_gpu_layers,
            seed=self.seed,
            verbose=False,
        )
        logger.info("LLM %s loaded in %.1f s", self.model_path.name, time.monotonic() - started)

    def _log_gpu(self, llama_cpp: Any) -> None:
        supports = getattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)()
        if self.n_gpu_layers and not supports:
            logger.warning(
                "n_gpu_layers=%d but this llama.cpp build has no GPU: CPU", self.n_gpu_layers
            )

    def generate_json(
        self, prompt: str, schema: dict[str, Any], max_tokens: int = 64, timeout_s: float = 30.0
    ) -> dict[str, Any]:
        """Greedy, grammar-constrained completion of ``prompt`` parsed as a JSON object."""
        with self._lock:
            self.load()
            text = self._complete(prompt, schema, max_tokens, timeout_s)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LLMError(f"LLM output is not JSON: {text[:200]!r}") from exc
        if not isinstance(value, dict):
            raise LLMError(f"LLM output is not a JSON object: {text[:200]!r}")
        return value

    def _complete(
        self, prompt: str, schema: dict[str, Any], max_tokens: int, timeout_s: float
    ) -> str:
        deadline = time.monotonic() + timeout_s
        expired: list[bool] = []

        def past_deadline(_ids: Any, _logits: Any) -> bool:
            if time.monotonic() > deadline:
                expired.append(True)
                return True
            return False

        import llama_cpp

        text, stop = self._chat_prompt(prompt)
        out = self._llama.create_completion(
            prompt=text,
            grammar=self._grammar(schema),
            temperature=0.0,
            top_k=1,
            seed=self.seed,
            max_tokens=max_tokens,
            stop=stop,
            stopping_criteria=llama_cpp.StoppingCriteriaList([past_deadline]),
        )
        if expired:
            raise LLMTimeout(f"LLM generation exceeded {timeout_s:.1f} s")
        return str(out["choices"][0]["text"] or "")

    def _chat_prompt(self, prompt: str) -> tuple[str, list[str]]:
        """The model's own chat template applied to a system and a user message."""
        messages: Any = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
        template = self._llama.metadata.get("tokenizer.chat_template")
        if not template:
            return f"{SYSTEM_PROMPT}\nUser: {prompt}\nAssistant:", ["\nUser:"]
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self._llama._model
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(self._llama.token_eos()),
            bos_token=model.token_get_text(self._llama.token_bos()),
        )
        formatted = formatter(messages=messages)
        stop = formatted.stop if isinstance(formatted.stop, list) else [formatted.stop or ""]
        return formatted.prompt, [s for s in stop if s]

    def _grammar(self, schema: dict[str, Any]) -> Any:
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            import llama_cpp

            self._grammars[key] = llama_cpp.LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]
