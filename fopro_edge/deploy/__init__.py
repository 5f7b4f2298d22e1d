"""Export layer: ONNX, ONNX Runtime INT8, OpenVINO and TensorRT, with a rare-class accuracy gate
after every step (see docs/export.md). Runtime packages are imported lazily, inside functions."""
