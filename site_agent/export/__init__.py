"""Exporting specialists to ONNX."""

from site_agent.export._onnx import OPSET, PARITY_ATOL, ExportReport, export_onnx

__all__ = ["OPSET", "PARITY_ATOL", "ExportReport", "export_onnx"]
