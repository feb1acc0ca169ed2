"""``rtnode export-model`` and ``rtnode check-model``: segmentation models and their cards.

``rtnode export-model CHECKPOINT --card-template T.yaml --out MODEL.onnx`` exports a
PyTorch (MONAI) network checkpoint to ONNX (dynamic spatial axes, ir_version 13), checks
ONNX Runtime against PyTorch (max abs difference printed) and writes ``MODEL.yaml``, the
card with the model's sha256. ``rtnode check-model CARD...`` validates cards (schema,
sha256 of the model file, model inputs and outputs against the card) and, with
``--smoke``, runs one patch to show the execution provider and the time it takes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from appliance.yamlsource import ConfigError, ConfigProblem, load_yaml

logger = logging.getLogger(__name__)


def add_model_parsers(subparsers: Any) -> None:
    """Add ``export-model`` and ``check-model`` to ``rtnode``'s sub-parsers."""
    export = subparsers.add_parser(
        "export-model", help="export a PyTorch/MONAI checkpoint to ONNX with its model card"
    )
    export.add_argument(
        "checkpoint", type=Path, help="torch.save dict with 'network' and 'state_dict'"
    )
    export.add_argument(
        "--card-template", type=Path, required=True, help="card YAML without sha256"
    )
    export.add_argument("--out", type=Path, required=True, help="MODEL.onnx (card: MODEL.yaml)")
    export.add_argument("--tolerance", type=float, default=1e-3, help="max |PyTorch - ORT| allowed")
    export.add_argument(
        "--axis-order",
        type=_axis_order,
        default=(0, 1, 2),
        help="export on the model grid with spatial axes permuted, e.g. 2,1,0 (the card's "
        "orientation, spacing and patch follow); default: as trained",
    )
    export.set_defaults(func=cmd_export_model)

    check = subparsers.add_parser("check-model", help="validate model cards and their model files")
    check.add_argument("cards", nargs="+", type=Path, metavar="CARD")
    check.add_argument("--smoke", action="store_true", help="also run one patch and time it")
    check.add_argument(
        "--providers", help="execution providers, e.g. cuda,cpu (default: automatic)"
    )
    check.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = automatic)")
    check.set_defaults(func=cmd_check_model)


def _axis_order(text: str) -> tuple[int, int, int]:
    """``2,1,0`` -> (2, 1, 0): a permutation of the three spatial axes."""
    try:
        order = tuple(int(part) for part in text.split(","))
    except ValueError:
        order = ()
    if sorted(order) != [0, 1, 2]:
        raise argparse.ArgumentTypeError(f"not a permutation of 0,1,2: {text!r}")
    return (order[0], order[1], order[2])


def cmd_export_model(args: argparse.Namespace) -> int:
    """Export a checkpoint; 0 on success, 1 when the export or the comparison fails."""
    from engines.segmentation.card import ModelCardError
    from engines.segmentation.export import export_model, load_card_template
    from engines.segmentation.network import load_checkpoint

    try:
        network, _ = load_checkpoint(args.checkpoint)
        template = load_card_template(args.card_template)
        report = export_model(
            network, template, args.out, tolerance=args.tolerance, axis_order=args.axis_order
        )
    except (OSError, ValueError, ModelCardError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {report.onnx_path} ({report.size_bytes / 1e6:.1f} MB, sha256 {report.sha256})")
    print(f"wrote {report.card_path}")
    shapes = ", ".join("x".join(str(n) for n in s) for s in report.shapes_checked)
    print(f"max |PyTorch - ONNX Runtime| = {report.max_abs_diff:.3g} over inputs {shapes}")
    return 0


def cmd_check_model(args: argparse.Namespace) -> int:
    """Check each card; print every problem as ``file:line: key: message``."""
    problems: list[ConfigProblem] = []
    for card_path in args.cards:
        found = card_problems(
            card_path, providers=args.providers, threads=args.threads, smoke=args.smoke
        )
        problems += found
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    return 0


def card_problems(
    card_path: Path, *, providers: str | None = None, threads: int = 0, smoke: bool = False
) -> list[ConfigProblem]:
    """Every problem of one card: schema (with line numbers), model file, sha256, signature.

    With no problem, prints one summary line (and the smoke-test time when ``smoke``).
    ``check-config`` can call this for each card its rules refer to.
    """
    from engines.segmentation.card import ModelCard, ModelCardError, verified_model_path

    try:
        doc = load_yaml(card_path)
    except ConfigError as exc:
        return list(exc.problems)
    try:
        card = ModelCard.model_validate(doc.data)
    except ValidationError as exc:
        return [doc.problem(tuple(e["loc"]), e["msg"]) for e in exc.errors()]
    try:
        verified_model_path(card, card_path)
    except ModelCardError as exc:
        key = ("sha256",) if "sha256" in str(exc) else ("model_file",)
        return [doc.problem(key, str(exc).removeprefix(f"{card_path}: "))]
    try:
        summary = _open_and_describe(card_path, providers, threads, smoke)
    except (ModelCardError, ValueError, RuntimeError) as exc:
        return [doc.problem((), str(exc).removeprefix(f"{card_path}: "))]
    print(f"{card_path}: OK: {summary}")
    return []


def _open_and_describe(card_path: Path, providers: str | None, threads: int, smoke: bool) -> str:
    import numpy as np
    import torch

    from engines.segmentation.processing import air_value
    from engines.segmentation.runtime import RuntimeSettings, open_runtime

    params: dict[str, Any] = {"segmentation_threads": threads}
    if providers:
        params["segmentation_providers"] = providers
    runtime = open_runtime(card_path, RuntimeSettings.from_params(params))
    card = runtime.card
    text = f"{runtime.summary()}, {len(card.outputs.labels)} structures"
    for note in runtime.notes:
        text += f"; {note}"
    if smoke:
        spec = card.input
        patch = torch.full((1, 1, *spec.patch_size), air_value(spec), dtype=torch.float32)
        # declared extra inputs (a context vector) get zeros: the smoke test times the
        # network, it does not judge the output
        extra = {e.name: np.zeros(e.length, dtype=np.float32) for e in card.extra_inputs}
        predict = runtime.predictor(extra)
        predict(patch)
        start = time.perf_counter()
        out = predict(patch)
        elapsed = time.perf_counter() - start
        sums = float(np.abs(out.sum(dim=1).numpy() - 1.0).max())
        text += f"; one {'x'.join(map(str, spec.patch_size))} patch in {elapsed * 1000:.0f} ms"
        text += f" (softmax sums within {sums:.1e} of 1)"
    return text
