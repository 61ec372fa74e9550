"""The model runtimes' implementations, one module per runtime kind (`onnx`, `skops`), the protocols
they follow (`base`) and the process pool the process kinds share (`processes`). Which kind serves
which format, and where it runs, is the table in app.ml.formats.
"""
