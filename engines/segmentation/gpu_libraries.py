"""Load the CUDA and cuDNN libraries that onnxruntime-gpu's GPU providers need.

onnxruntime-gpu finds CUDA and cuDNN in the default library path (a system CUDA
install) or, when they come as pip packages (``onnxruntime-gpu[cuda,cudnn]``, the
``nvidia-*`` wheels), only after ``onnxruntime.preload_dlls()`` has loaded them, or after
a CUDA build of torch was imported. rtnode pins the CPU build of torch, so the
segmentation runtime calls :func:`load_cuda_libraries` before it opens a session on a GPU
provider; without it the CUDA provider fails to start and the model runs on the CPU.

No torch import here, so a process can check its GPU setup without torch's libraries
(``scripts/bench_segmentation_gpu.py`` does, in child processes).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging

import onnxruntime as ort

logger = logging.getLogger(__name__)


@functools.cache
def load_cuda_libraries() -> tuple[str, ...]:
    """Once per process: ``onnxruntime.preload_dlls()`` where this build has it.

    Returns notes for the audit: the libraries that could not be loaded (the GPU
    provider will then fail to start and the runtime falls back with its own note).
    Empty where everything loaded, or where the build has no ``preload_dlls`` (CPU
    builds, onnxruntime before 1.21).
    """
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return ()
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # preload_dlls reports by print()
            preload()
    except Exception as exc:  # a broken install must not stop CPU inference
        printed.write(f"onnxruntime.preload_dlls failed: {exc}\n")
    failures = [
        line.strip()
        for line in printed.getvalue().splitlines()
        if line.strip().startswith(("Failed to load", "onnxruntime.preload_dlls failed"))
    ]
    for line in failures:
        logger.warning("segmentation: %s", line)
    if not failures:
        logger.info("segmentation: CUDA and cuDNN libraries loaded (onnxruntime.preload_dlls)")
        return ()
    return (
        f"CUDA/cuDNN libraries missing ({len(failures)}: {failures[0]}); "
        "install onnxruntime-gpu[cuda,cudnn] or a system CUDA matching the build",
    )
