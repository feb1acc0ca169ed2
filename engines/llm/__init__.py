"""Shared llama.cpp runtime: one model per worker process, JSON-schema constrained output.

``LlamaRuntime`` runs in the process that owns it (a node worker); ``LLMWorker`` hosts one in
a spawned child process so that a native crash cannot take the caller down (the CLI).
Both answer ``generate_json(prompt, schema, max_tokens, timeout_s) -> dict``.
"""

from engines.llm.models import bundled_model_path
from engines.llm.runtime import (
    JsonGenerator,
    LlamaRuntime,
    LLMError,
    LLMTimeout,
    LLMUnavailable,
    available,
)
from engines.llm.worker import LLMWorker

__all__ = [
    "JsonGenerator",
    "LLMError",
    "LLMTimeout",
    "LLMUnavailable",
    "LLMWorker",
    "LlamaRuntime",
    "available",
    "bundled_model_path",
]
