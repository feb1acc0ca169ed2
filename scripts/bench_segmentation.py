"""Benchmark the segmentation engine: ONNX Runtime vs PyTorch eager, and whole CTs.

    .venv/bin/python scripts/bench_segmentation.py [--threads 2] [--reps 4] [--json out.json]

1. Same weights, same input: the shipped network in PyTorch eager (``torch.inference_mode``)
   and the exported ONNX model in ONNX Runtime (CPU, the engine's session options), on one
   card-sized patch and on a whole model-grid volume by MONAI sliding-window inference.
   The shipped model's grid is the training grid with its axes permuted (the card's
   ``training.exported_axis_order``; engines/segmentation/export.py): PyTorch runs on it
   (the same network as the ONNX file) and, as a second peer, on the training grid (the
   network as trained, the input transposed back), PyTorch's faster layout on this CPU;
   ONNX Runtime also runs an export on the training grid (``ort_training_grid``).
   Blocks of runs alternate (PyTorch, ORT, PyTorch, ...) so load from other processes
   hits both alike; min and median are printed, with ORT variants (graph optimisation
   level, threads, memory arena, thread spinning) and, where the build has it, ORT's
   OpenVINO provider (``ort_openvino``: the engine's choice with onnxruntime-openvino). Peak memory of each runtime is measured in its own
   child process (peak RSS, and the increase over the process after imports).
   The weights are the training checkpoint when present (``--checkpoint``; the export
   must then reproduce the shipped model's sha256), else a seeded initialisation of the
   same network (the timing does not depend on the weight values).
2. Seconds per 512 x 512 x 150 CT (3 mm) through the shipped pipeline: DICOM decode,
   ``classical_body_lungs``, ``segment_onnx``, ``rtstruct_writer``.
3. Peak RSS of that pipeline on a 512 x 512 x 300 CT (1.5 mm), in a child process.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engines.segmentation.card import file_sha256, load_card  # noqa: E402
from engines.segmentation.engine import DEFAULT_CARD  # noqa: E402
from engines.segmentation.export import (  # noqa: E402
    AxisOrder,
    export_onnx,
    inverse_order,
    permute_axes,
    permute_network,
    tensor_dims,
)
from engines.segmentation.network import build_network, load_checkpoint, thorax_network_spec  # noqa: E402

CHECKPOINT = REPO / "var" / "segmentation-training" / "thorax.pt"
SEED = 1_000_003
# Training grid (RAS) of a 512 x 512 x 150 thorax CT cropped to the body
VOLUME_GRID = (208, 160, 150)


def axis_order() -> AxisOrder:
    """How the shipped model's grid permutes the training grid."""
    order = load_card(DEFAULT_CARD).training.get("exported_axis_order", [0, 1, 2])
    return (int(order[0]), int(order[1]), int(order[2]))


def permuted(x: torch.Tensor, order: AxisOrder) -> torch.Tensor:
    """``x`` (batch, channel, *grid) with its spatial axes permuted by ``order``."""
    return x.permute(*tensor_dims(order)).contiguous()


# --------------------------------------------------------------------------- weights


def bench_network(checkpoint: Path, work: Path) -> tuple[torch.nn.Module, Path, str]:
    """The PyTorch network as trained, its ONNX export on the shipped grid (same weights),
    and where they came from."""
    card = load_card(DEFAULT_CARD)
    onnx_path = work / "bench.onnx"
    order = axis_order()
    if checkpoint.exists():
        network, _ = load_checkpoint(checkpoint)
        export_onnx(permute_network(network, order), onnx_path, card.input.patch_size)
        same = file_sha256(onnx_path) == card.sha256
        source = f"checkpoint {checkpoint.name} (export {'==' if same else '!='} shipped sha256)"
    else:
        torch.manual_seed(0)
        network = build_network(thorax_network_spec(card.outputs.channels)).eval()
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
        export_onnx(permute_network(network, order), onnx_path, card.input.patch_size)
        source = "seeded initialisation (no checkpoint found)"
    return network, onnx_path, source


def ort_session(
    onnx_path: Path, threads: int, provider: str = "CPUExecutionProvider", **options: Any
) -> Any:
    """A session with the engine's options on ``provider`` (the engine's OpenVINO options
    for OpenVINOExecutionProvider) and the variant's changes."""
    import onnxruntime as ort

    from engines.segmentation.runtime import RuntimeSettings

    settings = RuntimeSettings(
        intra_op_threads=threads, graph_optimization=options.get("level", "all")
    )
    so = settings.session_options()
    so.enable_cpu_mem_arena = options.get("arena", True)
    if "spinning" in options:
        so.add_session_config_entry("session.intra_op.allow_spinning", options["spinning"])
    providers = settings.provider_entries(list(dict.fromkeys([provider, "CPUExecutionProvider"])))
    return ort.InferenceSession(str(onnx_path), so, providers=providers)


def openvino_available() -> bool:
    import onnxruntime as ort

    return "OpenVINOExecutionProvider" in ort.get_available_providers()


# --------------------------------------------------------------------------- timing


def alternating(runs: dict[str, Any], rounds: int, block: int = 3) -> dict[str, dict[str, float]]:
    """Run each callable in blocks of ``block`` calls, the blocks in turn, ``rounds`` times.

    Blocks (not single calls) in turn: a runtime's idle threads spin for a while after a
    call (ORT's thread pool, OpenMP), which would slow whichever ran right after it.
    Load from other processes hits every runtime alike. Returns seconds, min and median.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(rounds):
        for name, fn in runs.items():
            fn()  # first call of the block: lets the previous runtime's threads settle
            for _ in range(block):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {n: {"min_s": min(t), "median_s": statistics.median(t)} for n, t in times.items()}


def patch_and_volume(
    trained: torch.nn.Module, onnx_path: Path, threads: int, reps: int
) -> dict[str, Any]:
    from monai.inferers import sliding_window_inference

    card = load_card(DEFAULT_CARD)
    order = axis_order()
    inverse = inverse_order(order)
    network = permute_network(trained, order)  # the ONNX file's network, in PyTorch
    patch = card.input.patch_size
    x = torch.randn(1, 1, *patch, generator=torch.Generator().manual_seed(0))
    x_trained = permuted(x, inverse)
    xn = x.numpy()
    sessions = {
        "ort": ort_session(onnx_path, threads),
        "ort_basic_opt": ort_session(onnx_path, threads, level="basic"),
        "ort_1_thread": ort_session(onnx_path, 1),
        "ort_no_arena": ort_session(onnx_path, threads, arena=False),
        "ort_spinning": ort_session(onnx_path, threads, spinning="1"),  # ORT default
    }
    if openvino_available():  # the engine's choice on CPU hosts (onnxruntime-openvino)
        sessions["ort_openvino"] = ort_session(onnx_path, threads, "OpenVINOExecutionProvider")
    runs: dict[str, Any] = {"pytorch": lambda: network(x)}
    if order != (0, 1, 2):
        runs["pytorch_training_grid"] = lambda: trained(x_trained)
    for name, session in sessions.items():
        runs[name] = lambda s=session: s.run(None, {"image": xn})
    if order != (0, 1, 2):
        trained_onnx = onnx_path.with_name("bench_training_grid.onnx")
        export_onnx(trained, trained_onnx, permute_axes(patch, inverse))
        session_trained = ort_session(trained_onnx, threads)
        xn_trained = x_trained.numpy()
        runs["ort_training_grid"] = lambda: session_trained.run(None, {"image": xn_trained})
    with torch.inference_mode():
        per_patch = alternating(runs, reps)
        with torch.no_grad():
            expected = network(x).numpy()
        diff = float(np.abs(sessions["ort"].run(None, {"image": xn})[0] - expected).max())

        volume = torch.randn(
            1, 1, *permute_axes(VOLUME_GRID, order), generator=torch.Generator().manual_seed(1)
        )
        volume_trained = permuted(volume, inverse)
        patch_trained = permute_axes(patch, inverse)
        session = sessions["ort"]

        def ort_predict(b: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"image": b.numpy()})[0])

        def sw(predictor: Any, trained_grid: bool = False) -> Any:
            return lambda: sliding_window_inference(
                volume_trained if trained_grid else volume,
                patch_trained if trained_grid else patch,
                1,
                predictor,
                overlap=card.input.overlap,
                mode="gaussian",
            )

        volume_runs = {"pytorch": sw(network), "ort": sw(ort_predict)}
        if "ort_openvino" in sessions:
            openvino = sessions["ort_openvino"]

            def openvino_predict(b: torch.Tensor) -> torch.Tensor:
                return torch.from_numpy(openvino.run(None, {"image": b.numpy()})[0])

            volume_runs["ort_openvino"] = sw(openvino_predict)
        if order != (0, 1, 2):
            volume_runs["pytorch_training_grid"] = sw(trained, trained_grid=True)
        per_volume = alternating(volume_runs, max(2, reps // 2), block=1)
    return {
        "patch": list(patch),
        "axis_order": list(order),
        "per_patch": per_patch,
        "max_abs_diff": diff,
        "volume_grid": list(permute_axes(VOLUME_GRID, order)),
        "per_volume": per_volume,
    }


# --------------------------------------------------------------------------- memory (child processes)


def child_peak(kind: str, onnx_path: Path, threads: int) -> dict[str, float]:
    """Peak RSS of a child that runs one runtime on the whole-volume sliding window."""
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--onnx",
            str(onnx_path),
            "--threads",
            str(threads),
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_child(kind: str, onnx_path: Path, threads: int) -> None:
    from monai.inferers import sliding_window_inference

    card = load_card(DEFAULT_CARD)
    torch.set_num_threads(threads)
    order = axis_order()
    volume = torch.randn(
        1, 1, *permute_axes(VOLUME_GRID, order), generator=torch.Generator().manual_seed(1)
    )
    if kind == "pytorch":
        network = build_network(thorax_network_spec(card.outputs.channels)).eval()
        predictor: Any = permute_network(network, order)
    else:
        provider = "OpenVINOExecutionProvider" if kind == "ort_openvino" else "CPUExecutionProvider"
        session = ort_session(onnx_path, threads, provider)

        def predictor(b: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(session.run(None, {"image": b.numpy()})[0])

    base = _peak_rss_mb()
    with torch.inference_mode():
        sliding_window_inference(
            volume, card.input.patch_size, 1, predictor, overlap=card.input.overlap, mode="gaussian"
        )
    peak = _peak_rss_mb()
    print(json.dumps({"peak_rss_mb": round(peak, 1), "increase_mb": round(peak - base, 1)}))


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- whole CTs


def write_phantom_ct(directory: Path, n_slices: int, thickness_mm: float) -> list[Path]:
    from engines.segmentation.training.dicom import ct_datasets, write_ct
    from engines.segmentation.training.phantom import Acquisition, Anatomy, scan

    anatomy = Anatomy.sample(SEED)
    xs = ((np.arange(512) - 255.5) * (500.0 / 512)).astype(np.float32)
    z0 = 0.5 * anatomy.apex_z - thickness_mm * (n_slices - 1) / 2
    zs = (z0 + thickness_mm * np.arange(n_slices)).astype(np.float32)
    hu, _ = scan(anatomy, Acquisition(xs, xs.copy(), zs, noise_hu=20.0, noise_seed=SEED))
    return write_ct(ct_datasets(hu, Acquisition(xs, xs.copy(), zs)), directory)


def pipeline_seconds(files: list[Path], out_dir: Path, threads: int) -> dict[str, float]:
    """Wall time of each shipped pipeline step on one CT (fresh engines, model warm)."""
    from engines.base import EngineContext
    from engines.classical.body_lungs import BodyLungsEngine
    from engines.rtstruct.engine import RTStructWriterEngine
    from engines.segmentation.engine import SegmentationEngine

    segment = SegmentationEngine()
    params = {"segmentation_threads": threads}
    segment._runtime(
        EngineContext(job_id=0, input_files=[], output_dir=out_dir, params=params)
    )  # warm
    ctx = EngineContext(job_id=1, input_files=files, output_dir=out_dir, params=params)
    steps: dict[str, float] = {}
    for name, fn in (
        ("decode_dicom", lambda: ctx.ct),
        ("classical_body_lungs", lambda: BodyLungsEngine().run(ctx)),
        ("segment_onnx", lambda: segment.run(ctx)),
        ("rtstruct_writer", lambda: RTStructWriterEngine().run(ctx)),
    ):
        start = time.perf_counter()
        fn()
        steps[name] = round(time.perf_counter() - start, 2)
    steps["total"] = round(sum(steps.values()), 2)
    steps["structures"] = len(ctx.structures)
    return steps


def run_rss_child(ct_dir: Path, threads: int) -> None:
    files = sorted(ct_dir.glob("*.dcm"))
    with tempfile.TemporaryDirectory() as out:
        steps = pipeline_seconds(files, Path(out), threads)
    print(json.dumps({"peak_rss_mb": round(_peak_rss_mb(), 1), "seconds": steps}))


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reps", type=int, default=4, help="rounds of blocks of 3 runs")
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-ct", action="store_true", help="only the runtime comparison")
    parser.add_argument(
        "--child", choices=["pytorch", "ort", "ort_openvino", "rss"], help=argparse.SUPPRESS
    )
    parser.add_argument("--onnx", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ct-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child == "rss":
        run_rss_child(args.ct_dir, args.threads)
        return 0
    if args.child:
        run_child(args.child, args.onnx, args.threads)
        return 0

    result: dict[str, Any] = {"threads": args.threads}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        network, onnx_path, source = bench_network(args.checkpoint, work)
        result["weights"] = source
        result["runtime"] = patch_and_volume(network, onnx_path, args.threads, args.reps)
        result["peak_memory"] = {
            k: child_peak(k, onnx_path, args.threads)
            for k in ("pytorch", "ort", *(["ort_openvino"] if openvino_available() else []))
        }
        if not args.skip_ct:
            ct150 = work / "ct150"
            files = write_phantom_ct(ct150, 150, 3.0)
            result["ct_512x512x150_seconds"] = pipeline_seconds(
                files, work / "out150", args.threads
            )
            ct300 = work / "ct300"
            write_phantom_ct(ct300, 300, 1.5)
            done = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "rss",
                    "--ct-dir",
                    str(ct300),
                    "--threads",
                    str(args.threads),
                ],
                capture_output=True,
                text=True,
                check=True,
                timeout=1800,
            )
            result["ct_512x512x300"] = json.loads(done.stdout.strip().splitlines()[-1])
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


def report(r: dict[str, Any]) -> str:
    rt = r["runtime"]
    pp, pv = rt["per_patch"], rt["per_volume"]
    lines = [
        f"weights: {r['weights']}; {r['threads']} threads; max |PyTorch - ORT| {rt['max_abs_diff']:.2g}",
        f"shipped grid = training grid with axes permuted {tuple(rt['axis_order'])}",
        f"patch {'x'.join(map(str, rt['patch']))} (shipped grid):",
    ]

    def ratios(runs: dict[str, dict[str, float]], t: dict[str, float]) -> str:
        text = f"PyTorch/this {runs['pytorch']['median_s'] / t['median_s']:4.2f}x"
        if "pytorch_training_grid" in runs:
            best = runs["pytorch_training_grid"]["median_s"] / t["median_s"]
            text += f"  PyTorch training grid/this {best:4.2f}x"
        return text

    for name, t in pp.items():
        lines.append(
            f"  {name:22s} min {t['min_s'] * 1000:7.0f} ms  median {t['median_s'] * 1000:7.0f} ms  {ratios(pp, t)}"
        )
    lines.append(f"sliding window over {'x'.join(map(str, rt['volume_grid']))} (shipped grid):")
    for name, t in pv.items():
        lines.append(
            f"  {name:22s} min {t['min_s']:6.2f} s  median {t['median_s']:6.2f} s  {ratios(pv, t)}"
        )
    for name, m in r["peak_memory"].items():
        lines.append(
            f"peak RSS {name}: {m['peak_rss_mb']:.0f} MB (+{m['increase_mb']:.0f} MB for inference)"
        )
    if "ct_512x512x150_seconds" in r:
        lines.append(f"512x512x150 CT, seconds per step: {r['ct_512x512x150_seconds']}")
        big = r["ct_512x512x300"]
        lines.append(
            f"512x512x300 CT: peak RSS {big['peak_rss_mb']:.0f} MB, seconds {big['seconds']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
