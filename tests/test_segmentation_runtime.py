"""ONNX Runtime sessions: provider choice and fallback notes, caching, card/model checks.

The models here are tiny and made in the test (no shipped model needed). The tests hold on
any host: where they need a GPU provider to be missing or to fail, they say so through
``onnxruntime.get_available_providers`` and ``InferenceSession`` (monkeypatched), so they
pass alike with the CPU build and with onnxruntime-gpu on a GPU host.
"""

from __future__ import annotations

import atexit
import functools
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from engines.base import EngineContext, EngineError
from engines.segmentation import gpu_libraries
from engines.segmentation import runtime as runtime_module
from engines.segmentation.card import ModelCard, ModelCardError, file_sha256, write_card
from engines.segmentation.engine import SegmentationEngine, segment_ct
from engines.segmentation.export import export_model
from engines.segmentation.network import ResidualUNet
from engines.segmentation.processing import BoxMask, VolumeGeometry
from engines.segmentation.runtime import (
    CPU,
    CUDA,
    OPENVINO,
    TENSORRT,
    RuntimeSettings,
    SessionCache,
    choose_providers,
    open_runtime,
)
from tests.support import make_node, write_config


def tiny_template(**changes: Any) -> dict[str, Any]:
    """A valid card template for a 3-channel model (External = 1 + 2, Heart = 2)."""
    card: dict[str, Any] = {
        "name": "tiny-test-model",
        "version": "0.0.1",
        "intended_use": "unit tests only",
        "input": {
            "spacing_mm": [4.0, 4.0, 4.0],
            "orientation": "RAS",
            "intensity": {
                "window_hu": [-1000, 1000],
                "normalisation": {"kind": "linear", "out_range": [-1, 1]},
            },
            "patch_size": [32, 32, 16],
            "overlap": 0.25,
        },
        "outputs": {
            "channels": 3,
            "labels": [
                {
                    "index": 1,
                    "name": "External",
                    "color_rgb": [0, 255, 0],
                    "interpreted_type": "EXTERNAL",
                    "covers": [1, 2],
                    "postprocess": {"largest_component": True, "fill_holes": True},
                },
                {
                    "index": 2,
                    "name": "Heart",
                    "color_rgb": [255, 0, 128],
                    "interpreted_type": "ORGAN",
                },
            ],
        },
    }
    card.update(changes)
    return card


def tiny_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return ResidualUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=3,
        channels=(4, 8),
        strides=(2,),
        num_res_units=1,
        norm="BATCH",
        act="RELU",
    ).eval()


@functools.cache
def _exported_tiny_model() -> Path:
    """The tiny network exported once per test session (export takes a second or two)."""
    directory = Path(tempfile.mkdtemp(prefix="rtnode-tiny-model-"))
    atexit.register(shutil.rmtree, directory, True)
    return export_model(tiny_network(), tiny_template(), directory / "tiny.onnx").card_path


def make_tiny_model(directory: Path) -> Path:
    """A private copy of the exported tiny model and its card in ``directory``."""
    card = _exported_tiny_model()
    directory.mkdir(parents=True, exist_ok=True)
    for path in (card, card.with_suffix(".onnx")):
        shutil.copyfile(path, directory / path.name)
    return directory / card.name


def make_context_model(directory: Path, *, required: bool) -> Path:
    """A 1x1x1-conv model with a second input ``context`` (N, 4); returns the card path."""
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["c"]),
        helper.make_node("ReduceSum", ["context", "axes"], ["s"], keepdims=1),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Reshape", ["z", "shape"], ["z5"]),
        helper.make_node("Add", ["c", "z5"], ["logits"]),
    ]
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT, [3, 1, 1, 1, 1], [1.0, -1.0, 0.5]),
        helper.make_tensor("b", TensorProto.FLOAT, [3], [0.0, 0.0, 0.0]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("shape", TensorProto.INT64, [5], [-1, 1, 1, 1, 1]),
    ]
    return save_context_model(directory, "context", nodes, inits, required=required)


def save_context_model(
    directory: Path,
    stem: str,
    nodes: list[onnx.NodeProto],
    inits: list[onnx.TensorProto],
    *,
    required: bool,
    **card_changes: Any,
) -> Path:
    """Save a graph of inputs ``image`` (N, 1, x, y, z) and ``context`` (N, 4) and output
    ``logits`` (N, 3, x, y, z) as ``stem.onnx`` with its card ``stem.yaml``."""
    graph = helper.make_graph(
        nodes,
        stem,
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 1, "x", "y", "z"]),
            helper.make_tensor_value_info("context", TensorProto.FLOAT, ["n", 4]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 3, "x", "y", "z"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 13
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.onnx"
    onnx.save(model, str(path))
    extra = [{"name": "context", "length": 4, "required": required, "description": "test"}]
    card = ModelCard.model_validate(
        tiny_template(
            model_file=path.name, sha256=file_sha256(path), extra_inputs=extra, **card_changes
        )
    )
    card_path = directory / f"{stem}.yaml"
    write_card(card, card_path)
    return card_path


@pytest.fixture(scope="module")
def tiny_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


# --------------------------------------------------------------------------- providers


def test_automatic_choice_prefers_tensorrt_then_cuda_then_cpu() -> None:
    choice = choose_providers(None, ["CPUExecutionProvider", CUDA, TENSORRT])
    assert choice.providers == (TENSORRT, CUDA, CPU)
    assert choice.notes == ()


def test_cpu_only_build_says_gpu_is_not_possible() -> None:
    choice = choose_providers(None, [CPU, "AzureExecutionProvider"])
    assert choice.providers == (CPU,)
    assert "TensorrtExecutionProvider, CUDAExecutionProvider not available" in choice.notes[0]


def test_requested_provider_missing_falls_back_to_cpu_with_note() -> None:
    choice = choose_providers(["cuda"], [CPU])
    assert choice.providers == (CPU,)
    assert "requested CUDAExecutionProvider not available" in choice.notes[0]


def test_openvino_comes_after_the_gpu_providers_and_before_cpu() -> None:
    choice = choose_providers(None, [CPU, OPENVINO])
    assert choice.providers == (OPENVINO, CPU)
    assert "GPU execution not possible here" in choice.notes[0]
    assert choose_providers(None, [TENSORRT, CUDA, CPU]).providers == (TENSORRT, CUDA, CPU)
    assert choose_providers(["openvino"], [OPENVINO, CPU]).providers == (OPENVINO, CPU)


def test_openvino_runs_on_the_cpu_in_fp32_with_our_threads() -> None:
    (entry, cpu) = RuntimeSettings(intra_op_threads=2).provider_entries([OPENVINO, CPU])
    assert entry == (OPENVINO, {"device_type": "CPU", "precision": "FP32", "num_of_threads": "2"})
    assert cpu == CPU
    (entry, _) = RuntimeSettings().provider_entries([OPENVINO, CPU])
    assert isinstance(entry, tuple) and "num_of_threads" not in entry[1]


@pytest.mark.skipif(
    OPENVINO not in runtime_module.ort.get_available_providers(),
    reason="this onnxruntime build has no OpenVINO provider",
)
def test_openvino_gives_the_cpu_providers_probabilities(tiny_card: Path) -> None:
    batch = torch.randn(2, 1, 32, 32, 16, generator=torch.Generator().manual_seed(3))
    openvino = open_runtime(tiny_card, RuntimeSettings(providers=("openvino",)))
    cpu = open_runtime(tiny_card, RuntimeSettings(providers=("cpu",)))
    assert openvino.providers[0] == OPENVINO and cpu.providers == [CPU]
    assert torch.allclose(openvino.predictor()(batch), cpu.predictor()(batch), atol=1e-5)


def test_requested_order_is_kept_and_cpu_appended() -> None:
    assert choose_providers(["cuda"], [TENSORRT, CUDA, CPU]).providers == (CUDA, CPU)
    assert choose_providers(["CPUExecutionProvider"], [CUDA, CPU]).providers == (CPU,)


def test_settings_from_params() -> None:
    settings = RuntimeSettings.from_params(
        {"segmentation_providers": "cuda, cpu", "segmentation_threads": 2}
    )
    assert settings.providers == ("cuda", "cpu")
    assert settings.intra_op_threads == 2
    with pytest.raises(ValueError, match="segmentation_graph_optimization"):
        RuntimeSettings.from_params({"segmentation_graph_optimization": "max"})


def _gpu_providers_fail(monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    """Advertise CUDA; sessions asked for it either raise or start on CPU alone, the two
    ways a GPU provider fails (driver or library missing)."""
    real = runtime_module.ort.InferenceSession

    def session(path: str, options: Any = None, providers: Any = None) -> Any:
        if providers and providers[0] != CPU and how == "raise":
            raise RuntimeError("CUDA failure 100: no CUDA-capable device is detected")
        return real(path, options, providers=[CPU])

    monkeypatch.setattr(runtime_module.ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(runtime_module.ort, "InferenceSession", session)


@pytest.mark.parametrize("how", ["raise", "starts on cpu"])
def test_gpu_that_cannot_start_runs_on_cpu_and_says_so(
    tiny_card: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    _gpu_providers_fail(monkeypatch, how)
    with caplog.at_level(logging.WARNING, logger="engines.segmentation.runtime"):
        runtime = open_runtime(tiny_card)
    assert runtime.providers[0] == CPU
    assert any("CUDAExecutionProvider" in n and CPU in n for n in runtime.notes), runtime.notes
    assert any("CUDAExecutionProvider" in r.message for r in caplog.records)


def test_engine_notes_show_provider_and_fallback(
    tiny_card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_module.ort, "get_available_providers", lambda: [CPU])
    engine = SegmentationEngine(card=tiny_card)
    ctx = EngineContext(
        job_id=7, input_files=[], output_dir=tmp_path, params={"segmentation_providers": ["cuda"]}
    )
    runtime = engine._runtime(ctx)
    assert runtime.providers == [CPU]
    assert any("on CPUExecutionProvider" in n for n in ctx.notes), ctx.notes
    assert any("requested CUDAExecutionProvider not available" in n for n in ctx.notes), ctx.notes


@pytest.fixture
def fresh_cuda_loader() -> Iterator[None]:
    """load_cuda_libraries() runs again in the test and forgets the test's answer after."""
    gpu_libraries.load_cuda_libraries.cache_clear()
    yield
    gpu_libraries.load_cuda_libraries.cache_clear()


@pytest.mark.usefixtures("fresh_cuda_loader")
def test_cuda_libraries_are_loaded_once_and_failures_noted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def preload() -> None:
        calls.append(1)
        print("Failed to load libcublas.so.13: cannot open shared object file")
        print("Please follow https://onnxruntime.ai/docs/install/#cuda-and-cudnn to install CUDA.")

    monkeypatch.setattr(gpu_libraries.ort, "preload_dlls", preload, raising=False)
    with caplog.at_level(logging.WARNING, logger="engines.segmentation.gpu_libraries"):
        (note,) = gpu_libraries.load_cuda_libraries()
    assert "libcublas.so.13" in note and "onnxruntime-gpu[cuda,cudnn]" in note
    assert any("libcublas.so.13" in r.message for r in caplog.records)
    assert gpu_libraries.load_cuda_libraries() == (note,) and calls == [1]


@pytest.mark.usefixtures("fresh_cuda_loader")
def test_cuda_libraries_without_preload_or_without_failures_give_no_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(gpu_libraries.ort, "preload_dlls", raising=False)
    assert gpu_libraries.load_cuda_libraries() == ()
    monkeypatch.setattr(gpu_libraries.ort, "preload_dlls", lambda: None, raising=False)
    gpu_libraries.load_cuda_libraries.cache_clear()
    assert gpu_libraries.load_cuda_libraries() == ()


def test_gpu_libraries_are_loaded_only_for_gpu_providers(
    tiny_card: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[int] = []

    def load() -> tuple[str, ...]:
        loads.append(1)
        return ("CUDA/cuDNN libraries missing (test)",)

    monkeypatch.setattr(runtime_module, "load_cuda_libraries", load)
    monkeypatch.setattr(runtime_module.ort, "get_available_providers", lambda: [CPU])
    assert "CUDA/cuDNN libraries missing (test)" not in open_runtime(tiny_card).notes
    assert loads == []
    _gpu_providers_fail(monkeypatch, "starts on cpu")
    runtime = open_runtime(tiny_card)
    assert loads == [1] and "CUDA/cuDNN libraries missing (test)" in runtime.notes


def test_idle_threads_sleep_unless_spinning_is_asked_for() -> None:
    def spinning(settings: RuntimeSettings) -> str:
        options = settings.session_options()
        value: str = options.get_session_config_entry("session.intra_op.allow_spinning")
        return value

    assert spinning(RuntimeSettings()) == "0"
    assert spinning(RuntimeSettings.from_params({"segmentation_thread_spinning": True})) == "1"
    assert spinning(RuntimeSettings.from_params({"segmentation_thread_spinning": "yes"})) == "1"
    assert spinning(RuntimeSettings.from_params({"segmentation_thread_spinning": "false"})) == "0"


def test_tensorrt_gets_engine_and_timing_caches_in_the_cache_dir(tmp_path: Path) -> None:
    cache = tmp_path / "var" / "tensorrt-cache"
    settings = RuntimeSettings.from_params({"segmentation_cache_dir": cache})
    entries = settings.provider_entries([TENSORRT, CUDA, CPU])
    assert entries[1:] == [CUDA, CPU]
    name, options = entries[0]
    assert name == TENSORRT and cache.is_dir()
    assert options["trt_engine_cache_enable"] and options["trt_timing_cache_enable"]
    assert options["trt_engine_cache_path"] == options["trt_timing_cache_path"] == str(cache)
    assert options["trt_fp16_enable"] is False
    assert RuntimeSettings().provider_entries([TENSORRT, CPU]) == [TENSORRT, CPU]


def test_unwritable_cache_dir_means_no_cache_not_a_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    settings = RuntimeSettings(cache_dir=str(blocker / "cache"))
    assert settings.provider_entries([TENSORRT, CPU]) == [TENSORRT, CPU]


def test_sessions_are_opened_with_the_tensorrt_options(
    tiny_card: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[Any] = []
    real = runtime_module.ort.InferenceSession

    def session(path: str, options: Any = None, providers: Any = None) -> Any:
        asked.append(providers)
        return real(path, options, providers=[CPU])  # no TensorRT here: runs on CPU

    monkeypatch.setattr(runtime_module, "load_cuda_libraries", lambda: ())
    monkeypatch.setattr(runtime_module.ort, "get_available_providers", lambda: [TENSORRT, CPU])
    monkeypatch.setattr(runtime_module.ort, "InferenceSession", session)
    open_runtime(tiny_card, RuntimeSettings(cache_dir=str(tmp_path / "trt")))
    assert asked[0][0][0] == TENSORRT
    assert asked[0][0][1]["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert asked[0][1:] == [CPU]


def test_the_node_hands_its_tensorrt_cache_dir_to_the_engines(tmp_path: Path) -> None:
    node = make_node(write_config(tmp_path))
    try:
        params = node._pool_settings(None).params
    finally:
        node.db.dispose()
    assert params["segmentation_cache_dir"] == str(tmp_path / "var" / "tensorrt-cache")


# --------------------------------------------------------------------------- sessions


def test_one_session_per_model_and_settings(tiny_card: Path) -> None:
    cache = SessionCache()
    first, opened = cache.get(tiny_card, RuntimeSettings())
    again, reopened = cache.get(tiny_card, RuntimeSettings())
    assert opened and not reopened
    assert again is first and len(cache) == 1
    cache.get(tiny_card, RuntimeSettings(intra_op_threads=1))
    assert len(cache) == 2


def test_predictor_returns_softmax_probabilities(tiny_card: Path) -> None:
    runtime = open_runtime(tiny_card)
    probs = runtime.predictor()(torch.randn(2, 1, 32, 32, 16))
    assert probs.shape == (2, 3, 32, 32, 16)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 32, 32, 16), atol=1e-5)


def test_card_and_model_must_agree(tiny_card: Path, tmp_path: Path) -> None:
    model = tiny_card.with_suffix(".onnx")
    card = ModelCard.model_validate(
        tiny_template(
            model_file=str(model),
            sha256=file_sha256(model),
            input={**tiny_template()["input"], "name": "ct"},
        )
    )
    wrong = tmp_path / "wrong.yaml"
    write_card(card, wrong)
    with pytest.raises(ModelCardError, match="model has no input 'ct'"):
        open_runtime(wrong)


def test_engine_reports_a_bad_card_as_engine_error(tmp_path: Path) -> None:
    engine = SegmentationEngine(card=tmp_path / "missing.yaml")
    ctx = EngineContext(job_id=1, input_files=[], output_dir=tmp_path)
    with pytest.raises(EngineError, match="cannot read model card"):
        engine.run(ctx)


# --------------------------------------------------------------------------- extra inputs


def test_optional_extra_input_is_fed_zeros_when_absent(tmp_path: Path) -> None:
    runtime = open_runtime(make_context_model(tmp_path, required=False))
    probs = runtime.predictor()(torch.ones(1, 1, 8, 8, 4))
    given = runtime.predictor({"context": [1, 2, 3, 4]})(torch.ones(1, 1, 8, 8, 4))
    assert torch.allclose(probs, given)
    with pytest.raises(ValueError, match="needs 4 values"):
        runtime.predictor({"context": [1, 2]})


def test_required_extra_input_missing_is_an_error(tmp_path: Path) -> None:
    runtime = open_runtime(make_context_model(tmp_path, required=True))
    with pytest.raises(ValueError, match="needs extra input 'context'"):
        runtime.predictor()
    assert runtime.predictor({"context": np.zeros(4)}) is not None


# --------------------------------------------------------------------------- test-time mirroring


def make_sided_model(directory: Path, *, mirror: dict[str, Any] | None) -> Path:
    """A model that is not mirror-symmetric: channel k's logit is the image shifted one
    voxel along x times a weight, plus context[0] on channel 1 and context[1] on channel 2
    (a 'left' and a 'right' flag)."""
    weights = np.zeros((3, 1, 3, 1, 1), dtype=np.float32)
    weights[:, 0, 0, 0, 0] = [0.2, 1.0, -1.0]  # reads the voxel at x - 1 only
    to_channels = np.zeros((4, 3), dtype=np.float32)
    to_channels[0, 1] = to_channels[1, 2] = 3.0
    nodes = [
        helper.make_node("Conv", ["image", "w"], ["c"], pads=[1, 0, 0, 1, 0, 0]),
        helper.make_node("MatMul", ["context", "m"], ["s"]),
        helper.make_node("Reshape", ["s", "shape"], ["s5"]),
        helper.make_node("Add", ["c", "s5"], ["logits"]),
    ]
    inits = [
        helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel().tolist()),
        helper.make_tensor("m", TensorProto.FLOAT, to_channels.shape, to_channels.ravel().tolist()),
        helper.make_tensor("shape", TensorProto.INT64, [5], [-1, 3, 1, 1, 1]),
    ]
    return save_context_model(
        directory, "sided", nodes, inits, required=True, test_time_mirror=mirror
    )


_MIRROR = {"axis": 0, "swap_channels": [[1, 2]], "swap_inputs": {"context": [[0, 1]]}}


def test_mirrored_prediction_is_the_mean_with_the_flipped_back_mirror_image(
    tmp_path: Path,
) -> None:
    plain = open_runtime(make_sided_model(tmp_path / "plain", mirror=None))
    mirrored = open_runtime(make_sided_model(tmp_path / "mirror", mirror=_MIRROR))
    image = torch.randn(1, 1, 8, 6, 4)
    left = [1.0, 0.0, 0.0, 1.0]
    direct = plain.predictor({"context": left})(image)
    other = plain.predictor({"context": [0.0, 1.0, 0.0, 1.0]})(torch.flip(image, dims=[2]))
    back = torch.flip(other, dims=[2])[:, [0, 2, 1]]
    averaged = mirrored.predictor({"context": left})(image)
    assert "mirrored test-time average" in mirrored.summary()
    assert "mirrored" not in plain.summary()
    assert torch.allclose(averaged, (direct + back) / 2, atol=1e-6)
    assert not torch.allclose(averaged, direct, atol=1e-3)  # the model is not symmetric
    assert torch.allclose(averaged.sum(dim=1), torch.ones(1, 8, 6, 4), atol=1e-5)


def test_mirrored_predictor_is_exactly_mirror_equivariant(tmp_path: Path) -> None:
    """Mirroring the image and swapping left/right gives the mirror of the result: a
    left-sided answer cannot drift with the side the patient lies towards."""
    runtime = open_runtime(make_sided_model(tmp_path, mirror=_MIRROR))
    image = torch.randn(2, 1, 8, 6, 4)
    left = runtime.predictor({"context": [1.0, 0.0, 0.5, 1.0]})(image)
    right = runtime.predictor({"context": [0.0, 1.0, 0.5, 1.0]})(torch.flip(image, dims=[2]))
    assert torch.allclose(torch.flip(right, dims=[2])[:, [0, 2, 1]], left, atol=1e-6)


def test_mirror_settings_must_fit_the_card() -> None:
    bad = {"axis": 0, "swap_channels": [[1, 3]], "swap_inputs": {"ctx": [[0, 1]]}}
    with pytest.raises(ValueError) as caught:
        ModelCard.model_validate(
            tiny_template(model_file="m.onnx", sha256="0" * 64, test_time_mirror=bad)
        )
    assert "swap_channels [1, 3] outside 0..2" in str(caught.value)
    assert "'ctx', which is not an extra input" in str(caught.value)
    with pytest.raises(ValueError, match="axis"):
        ModelCard.model_validate(
            tiny_template(model_file="m.onnx", sha256="0" * 64, test_time_mirror={"axis": 3})
        )


def test_segment_ct_applies_each_labels_threshold(tiny_card: Path) -> None:
    runtime = open_runtime(tiny_card)
    geometry = VolumeGeometry(
        origin_mm=(-60.0, -60.0, 0.0),
        spacing_mm=(4.0, 2.0, 2.0),
        row_cosines=(1.0, 0.0, 0.0),
        column_cosines=(0.0, 1.0, 0.0),
        normal=(0.0, 0.0, 1.0),
        shape=(12, 60, 60),
    )
    rng = np.random.default_rng(3)
    hu = rng.normal(0.0, 300.0, geometry.shape).astype(np.float32)
    default = segment_ct(hu, geometry, runtime)
    labels = tuple(
        label.model_copy(update={"threshold": 0.01 if label.name == "Heart" else 0.9})
        for label in runtime.card.outputs.labels
    )
    changed = segment_ct(hu, geometry, runtime, labels)

    def voxels(masks: dict[str, BoxMask], name: str) -> int:
        return int(masks[name].mask.sum()) if name in masks else 0

    assert voxels(changed, "Heart") > voxels(default, "Heart")
    assert voxels(changed, "External") < voxels(default, "External")
