"""Clinical text stage (RO-LMM-S/-P on the node): facts, reconciliation, RT strategy, summary.

A deterministic extractor carries the facts; an optional local LLM (llama.cpp, JSON-schema
constrained) fills only what the rules did not find and passes a literal check against the
note; every difference between the two is reported. The strategy comes from protocol files
(``config/protocols/*.yaml``), never from the LLM.
"""
