"""Offline tools around the served model: train, evaluate, benchmark, export to ONNX. In no image."""
