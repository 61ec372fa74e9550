"""HTTP-free model serving: manifest, runtimes (ONNX in threads, skops in processes), micro-batching.

Import from the submodules (`app.ml.registry`, `app.ml.errors`, ...). This file stays empty on
purpose: the process-pool workers import `app.ml.worker`, which runs this file first, and they must
not pay for onnxruntime or pydantic.
"""
