"""TG-263 renaming of structure names (rules first, a local LLM only as a checked fallback).

Use :class:`Renamer` (``Renamer.from_paths()``) for names, :func:`rename_rtstruct` for a
structure set, and the node engine ``tg263_rename`` (:mod:`engines.naming.engine`).
"""

from engines.naming.decision import METHODS, Decision
from engines.naming.renamer import Renamer
from engines.naming.vocabulary import Vocabulary, VocabularyError, load_vocabulary

__all__ = ["METHODS", "Decision", "Renamer", "Vocabulary", "VocabularyError", "load_vocabulary"]
