"""ONNX Runtime for segmentation models: providers chosen at run time, sessions cached.

Execution providers are picked when a model is loaded, from what the installed
onnxruntime build offers (``onnxruntime.get_available_providers()``), in the order
TensorRT, CUDA, OpenVINO (the CPU build rtnode installs, onnxruntime-openvino), CPU;
``segmentation_providers`` in the job parameters overrides the order (names or the short
forms ``tensorrt``, ``cuda``, ``openvino``, ``cpu``). Every choice and every
fallback (a requested provider missing from the build, a GPU provider failing to
initialise) is logged and returned as notes, which the engine appends to the job's
notes so the audit log and ``rtnode status`` show what ran where. Before a session is
opened on the CUDA or TensorRT provider, the CUDA and cuDNN libraries are loaded once per process
(:mod:`engines.segmentation.gpu_libraries`: pip-installed CUDA needs it).

A :class:`SessionCache` holds one ``InferenceSession`` per model (card, model sha256,
providers, threads); the engine owns one cache and lives as long as its worker process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from engines.segmentation.card import (
    ModelCard,
    ModelCardError,
    load_card,
    load_refiner,
    verified_model_path,
)
from engines.segmentation.gpu_libraries import load_cuda_libraries

logger = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS: tuple[str, ...] = (TENSORRT, CUDA)
PREFERENCE: tuple[str, ...] = (TENSORRT, CUDA, OPENVINO, CPU)
ALIASES = {
    "tensorrt": TENSORRT,
    "trt": TENSORRT,
    "cuda": CUDA,
    "gpu": CUDA,
    "openvino": OPENVINO,
    "cpu": CPU,
}
_GRAPH_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class ProviderChoice:
    """Providers to ask ONNX Runtime for, in order, and why."""

    providers: tuple[str, ...]
    notes: tuple[str, ...] = ()


def choose_providers(requested: Sequence[str] | None, available: Sequence[str]) -> ProviderChoice:
    """Pick execution providers from ``available``.

    ``requested`` (None or empty: automatic, TensorRT > CUDA > CPU) is an ordered list
    of provider names or aliases. Requested providers missing from ``available`` are
    dropped with a note; CPU is always appended as the last resort.
    """
    notes: list[str] = []
    if requested:
        wanted = [ALIASES.get(name.lower(), name) for name in requested]
        missing = [name for name in wanted if name not in available]
        if missing:
            notes.append(
                f"requested {', '.join(missing)} not available in this onnxruntime build "
                f"(available: {', '.join(available)})"
            )
        chosen = [name for name in wanted if name in available]
    else:
        chosen = [name for name in PREFERENCE if name in available]
        skipped = [name for name in GPU_PROVIDERS if name not in available]
        if skipped:
            notes.append(f"{', '.join(skipped)} not available; GPU execution not possible here")
    if CPU not in chosen:
        chosen.append(CPU)
    return ProviderChoice(tuple(dict.fromkeys(chosen)), tuple(notes))


@dataclass(frozen=True)
class RuntimeSettings:
    """How sessions are opened; every field has a default (automatic providers).

    Job parameters: ``segmentation_providers`` (list or comma-separated string),
    ``segmentation_threads`` (intra-op threads, 0 = one per physical core),
    ``segmentation_graph_optimization`` (disable, basic, extended, all),
    ``segmentation_thread_spinning`` (false: ONNX Runtime's idle threads sleep instead of
    spinning between patches, leaving the cores to torch's share of the sliding window;
    true: ONNX Runtime's default),
    ``segmentation_cache_dir`` (where the TensorRT provider keeps its built engines and
    timing cache, so a restarted worker does not build them again; the node sets it to
    ``<data_dir>/tensorrt-cache``; none: no cache).
    """

    providers: tuple[str, ...] = ()
    intra_op_threads: int = 0
    graph_optimization: str = "all"
    thread_spinning: bool = False
    cache_dir: str | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> RuntimeSettings:
        raw = params.get("segmentation_providers") or ()
        providers = tuple(p.strip() for p in raw.split(",")) if isinstance(raw, str) else tuple(raw)
        level = str(params.get("segmentation_graph_optimization", "all")).lower()
        if level not in _GRAPH_LEVELS:
            raise ValueError(
                f"segmentation_graph_optimization must be one of {', '.join(_GRAPH_LEVELS)}"
            )
        return cls(
            providers=tuple(p for p in providers if p),
            intra_op_threads=int(params.get("segmentation_threads", 0)),
            graph_optimization=level,
            thread_spinning=_flag(params.get("segmentation_thread_spinning", False)),
            cache_dir=str(params["segmentation_cache_dir"])
            if params.get("segmentation_cache_dir")
            else None,
        )

    def provider_entries(self, providers: Sequence[str]) -> list[str | tuple[str, dict[str, Any]]]:
        """``providers`` as ``InferenceSession`` takes them: TensorRT with its engine and
        timing caches in ``cache_dir`` (fp32, as the card's model), OpenVINO on the CPU in
        fp32, the others by name."""
        entries: list[str | tuple[str, dict[str, Any]]] = []
        for name in providers:
            options = (
                self._openvino_options()
                if name == OPENVINO
                else self._tensorrt_options()
                if name == TENSORRT
                else None
            )
            entries.append((name, options) if options else name)
        return entries

    def _openvino_options(self) -> dict[str, Any]:
        """OpenVINO on the CPU in fp32 (the card's precision), with our thread count."""
        options: dict[str, Any] = {"device_type": "CPU", "precision": "FP32"}
        if self.intra_op_threads > 0:
            options["num_of_threads"] = str(self.intra_op_threads)
        return options

    def _tensorrt_options(self) -> dict[str, Any] | None:
        """Engine and timing caches in ``cache_dir`` (created here); None without one."""
        if not self.cache_dir:
            return None
        try:
            Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            logger.warning("segmentation: no TensorRT engine cache (%s)", exc)
            return None
        return {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": self.cache_dir,
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": self.cache_dir,
            "trt_fp16_enable": False,
        }

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = _GRAPH_LEVELS[self.graph_optimization]
        options.intra_op_num_threads = self.intra_op_threads
        spinning = "1" if self.thread_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        return options


def _flag(value: Any) -> bool:
    """A job parameter's truth value: YAML booleans, or "true"/"1"/"yes" as text."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


@dataclass
class ModelRuntime:
    """A loaded model: its card, its ONNX Runtime session and the providers in use."""

    card: ModelCard
    card_path: Path
    session: ort.InferenceSession
    notes: tuple[str, ...] = ()
    extra_defaults: dict[str, npt.NDArray[np.float32]] = field(default_factory=dict)
    refiners: tuple[ModelRuntime, ...] = ()

    @property
    def providers(self) -> list[str]:
        """Providers the session actually uses, highest priority first."""
        result: list[str] = self.session.get_providers()
        return result

    def summary(self) -> str:
        card = self.card
        mirrored = ", mirrored test-time average" if card.test_time_mirror else ""
        line = (
            f"model {card.name} {card.version} ({card.precision}{mirrored}) on {self.providers[0]}"
        )
        for refiner in self.refiners:
            names = ", ".join(label.name for label in refiner.card.outputs.labels)
            line += f"; {names} refined by {refiner.summary()}"
        return line

    def predictor(
        self, extra_inputs: Mapping[str, Any] | None = None
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A MONAI predictor: (B, 1, *patch) image tensor -> (B, C, *patch) softmax probabilities.

        With the card's ``test_time_mirror``, each patch is also run mirrored (flipped along
        the axis, extra inputs' pairs swapped) and the two results, flipped back with the
        channel pairs swapped, are averaged: twice the inference time.
        """
        feeds = self._extra_feeds(extra_inputs or {})
        mirror = self.card.test_time_mirror
        if mirror is None:
            return lambda batch: self._probabilities(batch, feeds)
        mirrored_feeds = {
            name: _swapped(v, mirror.swap_inputs.get(name, ())) for name, v in feeds.items()
        }
        dims = [2 + mirror.axis]

        def predict(batch: torch.Tensor) -> torch.Tensor:
            """The mean of the patch's probabilities and those of its mirror image."""
            direct = self._probabilities(batch, feeds)
            flipped = self._probabilities(torch.flip(batch, dims=dims), mirrored_feeds)
            back = torch.flip(flipped, dims=dims)
            for a, b in mirror.swap_channels:
                back[:, [a, b]] = back[:, [b, a]]
            return (direct + back) / 2

        return predict

    def _probabilities(
        self, batch: torch.Tensor, feeds: Mapping[str, npt.NDArray[np.float32]]
    ) -> torch.Tensor:
        """Softmax probabilities of one batch of patches."""
        array = np.ascontiguousarray(batch.detach().cpu().numpy(), dtype=np.float32)
        extra = {name: np.repeat(v[None], array.shape[0], axis=0) for name, v in feeds.items()}
        (logits,) = self.session.run(
            [self.card.outputs.name], {self.card.input.name: array, **extra}
        )
        return torch.softmax(torch.from_numpy(logits), dim=1)

    def _extra_feeds(self, given: Mapping[str, Any]) -> dict[str, npt.NDArray[np.float32]]:
        feeds: dict[str, npt.NDArray[np.float32]] = {}
        for spec in self.card.extra_inputs:
            if spec.name in given:
                value = np.asarray(given[spec.name], dtype=np.float32).reshape(-1)
                if value.size != spec.length:
                    raise ValueError(
                        f"extra input {spec.name} needs {spec.length} values, got {value.size}"
                    )
                feeds[spec.name] = value
            elif spec.required:
                raise ValueError(f"model {self.card.name} needs extra input {spec.name!r}")
            else:
                feeds[spec.name] = np.zeros(spec.length, dtype=np.float32)
        return feeds


def _swapped(
    values: npt.NDArray[np.float32], pairs: Sequence[tuple[int, int]]
) -> npt.NDArray[np.float32]:
    """A copy of ``values`` with each pair of elements exchanged."""
    out = values.copy()
    for a, b in pairs:
        out[[a, b]] = values[[b, a]]
    return out


def open_runtime(card_path: Path, settings: RuntimeSettings | None = None) -> ModelRuntime:
    """Load a card, check its model file's sha256, open a session on the chosen providers.

    Raises
    ------
    ModelCardError
        When the card is invalid, the model file missing or changed, or the ONNX graph's
        inputs and outputs do not match the card.
    """
    settings = settings or RuntimeSettings()
    card = load_card(card_path)
    model = verified_model_path(card, card_path)
    choice = choose_providers(settings.providers, ort.get_available_providers())
    session, notes = _open_session(model, settings, choice)
    _check_signature(card, card_path, session)
    refiners = tuple(
        _open_refiner(path, card_path, settings) for path in card.refiner_paths(card_path)
    )
    notes += [note for refiner in refiners for note in refiner.notes]  # fallbacks too
    runtime = ModelRuntime(
        card=card,
        card_path=card_path,
        session=session,
        notes=tuple(dict.fromkeys(notes)),
        refiners=refiners,
    )
    logger.info("segmentation %s (%s)", runtime.summary(), "; ".join(notes) or "no fallback")
    return runtime


def _open_refiner(path: Path, parent: Path, settings: RuntimeSettings) -> ModelRuntime:
    """A ``refined_by`` model of ``parent``: a card with a ``region`` (checked first)."""
    load_refiner(path, parent)
    return open_runtime(path, settings)


def _open_session(
    model: Path, settings: RuntimeSettings, choice: ProviderChoice
) -> tuple[ort.InferenceSession, list[str]]:
    notes = list(choice.notes)
    if {CUDA, TENSORRT} & set(choice.providers):
        notes += load_cuda_libraries()
    options = settings.session_options()
    try:
        session = ort.InferenceSession(
            str(model), options, providers=settings.provider_entries(choice.providers)
        )
    except Exception as exc:  # a GPU provider failing to start must not stop CPU inference
        if choice.providers == (CPU,):
            raise
        notes.append(f"{choice.providers[0]} failed to start ({exc}); falling back to {CPU}")
        logger.warning("segmentation: %s", notes[-1])
        session = ort.InferenceSession(str(model), settings.session_options(), providers=[CPU])
    actual = session.get_providers()
    if actual[0] != choice.providers[0]:
        notes.append(f"{choice.providers[0]} could not be initialised; running on {actual[0]}")
        logger.warning("segmentation: %s", notes[-1])
    return session, notes


def _check_signature(card: ModelCard, card_path: Path, session: ort.InferenceSession) -> None:
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    problems = []
    declared = {card.input.name, *(e.name for e in card.extra_inputs)}
    if card.input.name not in inputs:
        problems.append(f"the model has no input {card.input.name!r} (it has {', '.join(inputs)})")
    elif len(inputs[card.input.name].shape) != 5:
        problems.append(f"input {card.input.name!r} must be 5-D (batch, channel, x, y, z)")
    problems += [
        f"model input {name!r} is not declared in the card"
        for name in inputs
        if name not in declared
    ]
    problems += [
        f"extra input {e.name!r} is declared in the card but not a model input"
        for e in card.extra_inputs
        if e.name not in inputs
    ]
    if card.outputs.name not in outputs:
        problems.append(
            f"the model has no output {card.outputs.name!r} (it has {', '.join(outputs)})"
        )
    else:
        channels = outputs[card.outputs.name].shape[1]
        if isinstance(channels, int) and channels != card.outputs.channels:
            problems.append(
                f"the model outputs {channels} channels, the card says {card.outputs.channels}"
            )
    if problems:
        raise ModelCardError(f"{card_path}: model and card disagree: " + "; ".join(problems))


class SessionCache:
    """Open runtimes keyed by card path, model sha256 and settings (one per worker process)."""

    def __init__(self) -> None:
        self._runtimes: dict[tuple[str, tuple[str, ...], RuntimeSettings], ModelRuntime] = {}

    def get(self, card_path: Path, settings: RuntimeSettings) -> tuple[ModelRuntime, bool]:
        """The runtime for ``card_path`` and whether it was opened by this call.

        The card is re-read on every call (it is small); a changed model file (new
        sha256 in the card) opens a new session.
        """
        card = load_card(card_path)
        shas = (card.sha256, *(load_card(p).sha256 for p in card.refiner_paths(card_path)))
        key = (str(card_path.resolve()), shas, settings)
        if key in self._runtimes:
            return self._runtimes[key], False
        runtime = open_runtime(card_path, settings)
        self._runtimes[key] = runtime
        return runtime, True

    def __len__(self) -> int:
        return len(self._runtimes)
