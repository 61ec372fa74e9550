"""The `onnx` runtime kind: one ONNX Runtime InferenceSession per model, run in the shared thread pool."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from app.ml.errors import ModelLoadError, PredictionTimeout
from app.ml.runtimes.base import Found, ThreadContext, ThreadRuntime

if TYPE_CHECKING:
    import onnxruntime as ort

    from app.ml.manifest import ModelSpec


class OnnxRuntime(ThreadRuntime):
    """An ONNX model: one InferenceSession, shared by the threads of the pool.

    The session is created once; ONNX Runtime's `run` is thread-safe and releases the GIL, so
    several batches of one model may run at the same time in the pool's threads.
    """

    def __init__(
        self, spec: ModelSpec, data: bytes, file: str, executor: ThreadPoolExecutor, intra_op_threads: int
    ) -> None:
        # Imported here, not at the top: a web process whose models are all remote never loads it.
        import onnxruntime as ort  # noqa: PLC0415

        super().__init__(spec, executor)
        self._run_options = ort.RunOptions
        options = ort.SessionOptions()
        # Parallelism comes from running batches side by side in the pool; letting each run also
        # start its own intra-op threads would oversubscribe the cores.
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Idle intra-op threads would otherwise spin and burn CPU the event loop needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises several pybind types; all mean "bad file"
            raise ModelLoadError(file, f"not a loadable ONNX model: {exc}") from None
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(file, f"expected one input tensor, found {len(inputs)}")
        self._input = inputs[0].name
        self._dtype = np.float64 if inputs[0].type == "tensor(double)" else np.float32
        width = inputs[0].shape[1] if len(inputs[0].shape) == 2 else None
        if isinstance(width, int) and width != len(spec.features):
            raise ModelLoadError(
                file, f"the model takes {width} features, the manifest lists {len(spec.features)}"
            )
        self._output = self._pick_output(spec, file)
        self._check_shape(file)

    def _pick_output(self, spec: ModelSpec, file: str) -> str:
        names: list[str] = [o.name for o in self._session.get_outputs()]
        if spec.task == "regression":
            return names[0]
        # skl2onnx names the plain probability matrix "probabilities" (with zipmap disabled).
        if "probabilities" in names:
            return "probabilities"
        if len(names) >= 2:
            return names[-1]
        raise ModelLoadError(file, f"no probability output among {names}")

    def _check_shape(self, file: str) -> None:
        """Run one zero row now, so a model/manifest mismatch fails start-up rather than a request."""
        try:
            out = self._run_sync(np.zeros((1, len(self.spec.features)), dtype=np.float32), None)
        except Exception as exc:  # noqa: BLE001 - any failure here means the file cannot serve
            raise ModelLoadError(file, f"a test prediction failed: {exc}") from None
        expected = len(self.spec.labels) if self.spec.task == "classification" else 1
        if out.shape != (1, expected):
            raise ModelLoadError(
                file, f"output {self._output!r} has shape {out.shape[1:]}, the manifest implies ({expected},)"
            )

    def _run_sync(self, x: np.ndarray, run_options: ort.RunOptions | None) -> np.ndarray:
        (out,) = self._session.run(
            [self._output], {self._input: x.astype(self._dtype, copy=False)}, run_options
        )
        matrix = np.asarray(out, dtype=np.float64)
        return matrix.reshape(len(x), -1)

    def compute(self, x: np.ndarray) -> np.ndarray:
        return self._run_sync(x, None)

    async def run(self, x: np.ndarray, hard_timeout_s: float) -> np.ndarray:
        run_options = self._run_options()
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, self._run_sync, x, run_options)
        try:
            async with asyncio.timeout(hard_timeout_s):
                return await future
        except TimeoutError:
            # ONNX Runtime checks this flag between kernels and aborts the run, freeing the thread.
            run_options.terminate = True
            raise PredictionTimeout(self.spec.name, self.spec.timeout_ms) from None


def build(spec: ModelSpec, data: bytes, where: str, threads: ThreadContext) -> OnnxRuntime:
    return OnnxRuntime(spec, data, where, threads.executor, threads.intra_op_threads)


def inspect(data: bytes, where: str, trusted_types: Sequence[str]) -> Found:  # noqa: ARG001 - protocol
    import onnxruntime as ort  # noqa: PLC0415 - loading or adding an ONNX model alone loads it

    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises several pybind types; all mean "bad file"
        raise ModelLoadError(where, f"not a loadable ONNX model: {exc}") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 2:
        raise ModelLoadError(where, "the model must take one input tensor of shape [rows, features]")
    width = inputs[0].shape[1] if isinstance(inputs[0].shape[1], int) else None
    outputs = [o.name for o in session.get_outputs()]
    classifier = "probabilities" in outputs or len(outputs) >= 2
    return Found(width, _class_labels(data) if classifier else None, classifier, None)


def _class_labels(data: bytes) -> tuple[str, ...] | None:
    """The class labels skl2onnx and other converters store on the classifier node, if any."""
    import onnx  # noqa: PLC0415 - `models add` alone loads it (a main dependency: the image has it)

    model = onnx.load_from_string(data)
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.name == "classlabels_strings" and attribute.strings:
                return tuple(label.decode() for label in attribute.strings)
            if attribute.name in {"classlabels_int64s", "classlabels_ints"} and attribute.ints:
                return tuple(str(label) for label in attribute.ints)
    return None
