"""Benchmark the segmentation engine on a GPU host: ORT CUDA / TensorRT vs PyTorch eager.

    python scripts/bench_segmentation_gpu.py [--reps 10] [--json out.json]

Needs onnxruntime-gpu (in place of onnxruntime) and a CUDA build of torch; on a host
without a GPU it says so and stops. Five parts:

0. Libraries, in child processes that never import torch (as with rtnode's pinned CPU
   torch): which providers a session on the shipped model gets from onnxruntime-gpu
   alone, and after ``engines.segmentation.gpu_libraries.load_cuda_libraries()``.
1. Provider choice: the engine's own ``open_runtime`` on the shipped card with automatic
   providers, and with ``cuda`` and ``cpu`` asked for: the providers each session uses
   and the notes (fallbacks) the engine logs and puts in the audit.
2. Same weights, same input, one card-sized patch (shipped grid): PyTorch eager on the
   GPU (on the shipped grid and on the training grid) against ONNX Runtime's CUDA
   provider, each host to host (numpy / CPU tensor in and out, as the engine calls it)
   and device resident (input and output on the GPU; IO binding for ONNX Runtime).
   The weights are a seeded initialisation (timing does not depend on their values);
   the maximum |PyTorch - ORT| is printed.
3. MONAI sliding-window inference over a 512 x 512 x 150 thorax's model grid, the
   engine's way (one patch per call, host predictor) for ORT; PyTorch with the volume
   on the GPU.
4. A 512 x 512 x 150 phantom CT through ``segment_onnx`` (the shipped cascade) on the
   automatic providers and on the CPU provider (all cores): seconds, and the Dice of
   every structure between the two runs (the GPU must draw the same contours).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402
from bench_segmentation import (  # noqa: E402
    VOLUME_GRID,
    alternating,
    axis_order,
    bench_network,
    ort_session,
    permuted,
    write_phantom_ct,
)

from engines.segmentation.card import ModelCard, load_card  # noqa: E402
from engines.segmentation.engine import DEFAULT_CARD  # noqa: E402
from engines.segmentation.export import inverse_order, permute_axes, permute_network  # noqa: E402
from engines.segmentation.runtime import CPU, CUDA, RuntimeSettings, open_runtime  # noqa: E402
from engines.segmentation.training.metrics import dice  # noqa: E402


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def synchronised(runs: dict[str, Callable[[], Any]]) -> dict[str, Callable[[], Any]]:
    """Each callable followed by a GPU synchronise, so a timed call includes its kernels."""

    def then_synchronise(fn: Callable[[], Any]) -> Callable[[], None]:
        def call() -> None:
            fn()
            synchronize()

        return call

    return {name: then_synchronise(fn) for name, fn in runs.items()}


LIBRARY_CHECK = """
import json, sys
import onnxruntime as ort
from pathlib import Path
from engines.segmentation.card import load_card, verified_model_path
card = Path(sys.argv[2])
notes = []
if sys.argv[1] == "load":
    from engines.segmentation.gpu_libraries import load_cuda_libraries
    notes = list(load_cuda_libraries())
model = verified_model_path(load_card(card), card)
session = ort.InferenceSession(str(model), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
print(json.dumps({"providers": session.get_providers(), "notes": notes,
                  "torch_imported": "torch" in sys.modules}))
"""


def libraries_part() -> dict[str, Any]:
    """A CUDA session on the shipped model in a fresh process without torch: as is,
    and after load_cuda_libraries()."""
    result: dict[str, Any] = {}
    for mode in ("as_is", "load"):
        done = subprocess.run(
            [sys.executable, "-c", LIBRARY_CHECK, mode, str(DEFAULT_CARD)],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=300,
        )
        lines = done.stdout.strip().splitlines()
        result[mode] = (
            json.loads(lines[-1])
            if done.returncode == 0 and lines
            else {"error": (done.stderr or done.stdout).strip().splitlines()[-3:]}
        )
    return result


def providers_part() -> dict[str, Any]:
    """What the engine's runtime chooses on this host, with the notes it records."""
    result: dict[str, Any] = {"available": ort.get_available_providers()}
    for label, asked in (("automatic", ()), ("cuda", ("cuda",)), ("cpu", ("cpu",))):
        start = time.perf_counter()
        runtime = open_runtime(DEFAULT_CARD, RuntimeSettings(providers=asked))
        result[label] = {
            "summary": runtime.summary(),
            "providers": runtime.providers,
            "notes": list(runtime.notes),
            "open_s": round(time.perf_counter() - start, 2),
        }
    return result


def bound_run(
    session: Any, card: ModelCard, x: torch.Tensor, out: torch.Tensor
) -> Callable[[], None]:
    """ORT on device-resident input and output (IO binding to torch tensors)."""
    binding = session.io_binding()
    kind, index = x.device.type, x.device.index or 0
    binding.bind_input(card.input.name, kind, index, np.float32, list(x.shape), x.data_ptr())
    binding.bind_output(card.outputs.name, kind, index, np.float32, list(out.shape), out.data_ptr())

    def run() -> None:
        session.run_with_iobinding(binding)

    return run


def patch_and_volume(reps: int, work: Path, gpu: torch.device) -> dict[str, Any]:
    from monai.inferers import sliding_window_inference

    card = load_card(DEFAULT_CARD)
    order = axis_order()
    inverse = inverse_order(order)
    trained, onnx_path, source = bench_network(work / "no-checkpoint.pt", work)
    shipped = permute_network(trained, order).to(gpu).eval()
    trained = trained.to(gpu).eval()
    patch = card.input.patch_size
    x = torch.randn(1, 1, *patch, generator=torch.Generator().manual_seed(0))
    x_gpu = x.to(gpu)
    x_trained_gpu = permuted(x, inverse).to(gpu)
    xn = x.numpy()
    session = ort_session(onnx_path, 0, CUDA if gpu.type == "cuda" else CPU)
    feeds = {card.input.name: xn}
    out_gpu = torch.empty(1, card.outputs.channels, *patch, device=gpu)
    with torch.inference_mode():
        expected = shipped(x_gpu).cpu().numpy()
        got = session.run(None, feeds)[0]
        diff = float(np.abs(got - expected).max())
        runs: dict[str, Callable[[], Any]] = {
            "pytorch_host": lambda: shipped(x.to(gpu)).cpu(),
            "pytorch_training_grid_host": lambda: trained(permuted(x, inverse).to(gpu)).cpu(),
            "ort_host": lambda: session.run(None, feeds),
            "pytorch_resident": lambda: shipped(x_gpu),
            "pytorch_training_grid_resident": lambda: trained(x_trained_gpu),
            "ort_resident": bound_run(session, card, x_gpu, out_gpu),
        }
        per_patch = alternating(synchronised(runs), reps, block=1)
        bound_diff = float(np.abs(out_gpu.cpu().numpy() - expected).max())

        volume = torch.randn(
            1, 1, *permute_axes(VOLUME_GRID, order), generator=torch.Generator().manual_seed(1)
        )
        volume_gpu = volume.to(gpu)
        volume_trained_gpu = permuted(volume, inverse).to(gpu)

        def ort_predict(b: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {card.input.name: b.numpy()})[0])

        def sw(image: torch.Tensor, roi: Any, predictor: Any) -> Callable[[], Any]:
            return lambda: sliding_window_inference(
                image, roi, 1, predictor, overlap=card.input.overlap, mode="gaussian"
            )

        volume_runs = {
            "pytorch": sw(volume_gpu, patch, shipped),
            "pytorch_training_grid": sw(volume_trained_gpu, permute_axes(patch, inverse), trained),
            "ort_engine_way": sw(volume, patch, ort_predict),
        }
        per_volume = alternating(synchronised(volume_runs), max(2, reps // 3), block=1)
    return {
        "weights": source,
        "patch": list(patch),
        "max_abs_diff": diff,
        "max_abs_diff_io_binding": bound_diff,
        "per_patch": per_patch,
        "volume_grid": list(permute_axes(VOLUME_GRID, order)),
        "per_volume": per_volume,
        "torch_peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)
        if gpu.type == "cuda"
        else None,
    }


def whole_ct(work: Path) -> dict[str, Any]:
    """segment_onnx on one phantom CT, automatic providers vs CPU: seconds and Dice."""
    from engines.base import EngineContext
    from engines.segmentation.engine import SegmentationEngine

    files = write_phantom_ct(work / "ct150", 150, 3.0)
    result: dict[str, Any] = {}
    masks: dict[str, dict[str, np.ndarray]] = {}
    for label, params in (("automatic", {}), ("cpu", {"segmentation_providers": "cpu"})):
        engine = SegmentationEngine()
        warm = EngineContext(job_id=0, input_files=files, output_dir=work, params=params)
        engine.run(warm)  # opens the sessions, first CUDA kernels
        seconds = []
        for job in (1, 2):
            ctx = EngineContext(job_id=job, input_files=files, output_dir=work, params=params)
            ctx.ct  # noqa: B018 - decode outside the timed region
            start = time.perf_counter()
            engine.run(ctx)
            seconds.append(round(time.perf_counter() - start, 2))
        masks[label] = {s.name: s.mask for s in ctx.structures}
        result[label] = {"segment_onnx_s": seconds, "notes": ctx.notes}
    result["dice_automatic_vs_cpu"] = {
        name: round(dice(mask, masks["cpu"].get(name, np.zeros_like(mask))), 4)
        for name, mask in masks["automatic"].items()
    }
    return result


def report(r: dict[str, Any]) -> str:
    lines = [f"host: {r['host']}"]
    for mode, found in r["libraries"].items():
        lines.append(f"  without torch, CUDA session, libraries {mode}: {found}")
    lines.append(f"providers available: {r['providers']['available']}")
    for label in ("automatic", "cuda", "cpu"):
        p = r["providers"][label]
        lines.append(f"  {label:9s} -> {p['providers']}  notes: {p['notes'] or 'none'}")
    rt = r["runtime"]
    lines.append(
        f"patch {'x'.join(map(str, rt['patch']))}: max |PyTorch - ORT| {rt['max_abs_diff']:.2g}"
        f" (IO binding {rt['max_abs_diff_io_binding']:.2g})"
    )
    for group in ("host", "resident"):
        runs = {n: t for n, t in rt["per_patch"].items() if n.endswith(group)}
        ort_t = runs[f"ort_{group}"]["median_s"]
        for name, t in runs.items():
            lines.append(
                f"  {name:32s} median {t['median_s'] * 1000:7.2f} ms  min {t['min_s'] * 1000:7.2f} ms"
                f"  this/ORT {t['median_s'] / ort_t:5.2f}x"
            )
    lines.append(f"sliding window over {'x'.join(map(str, rt['volume_grid']))}:")
    for name, t in rt["per_volume"].items():
        lines.append(f"  {name:32s} median {t['median_s']:6.3f} s  min {t['min_s']:6.3f} s")
    if "whole_ct" in r:
        ct = r["whole_ct"]
        lines.append(
            f"512x512x150 phantom CT, segment_onnx seconds: automatic {ct['automatic']['segment_onnx_s']},"
            f" cpu {ct['cpu']['segment_onnx_s']}"
        )
        lines.append(f"  Dice automatic vs cpu: {ct['dice_automatic_vs_cpu']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-ct", action="store_true", help="no whole-CT part")
    parser.add_argument(
        "--cpu-dry-run", action="store_true", help="check this script on a host without a GPU"
    )
    args = parser.parse_args()
    if args.cpu_dry_run:
        gpu = torch.device("cpu")
    elif not torch.cuda.is_available() or CUDA not in ort.get_available_providers():
        print(
            "needs a CUDA GPU, a CUDA build of torch and onnxruntime-gpu "
            f"(torch CUDA: {torch.cuda.is_available()}; ORT: {ort.get_available_providers()})"
        )
        return 2
    else:
        gpu = torch.device("cuda")
    name = torch.cuda.get_device_name(0) if gpu.type == "cuda" else "no GPU (dry run)"
    result: dict[str, Any] = {
        "host": f"{name}, {platform.processor() or platform.machine()}, "
        f"onnxruntime {ort.__version__}, torch {torch.__version__}",
        "libraries": libraries_part(),
        "providers": providers_part(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result["runtime"] = patch_and_volume(args.reps, work, gpu)
        if not args.skip_ct:
            result["whole_ct"] = whole_ct(work)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
