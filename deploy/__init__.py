"""Deploy: fold BatchNorm, export to ONNX (fp32/int8), gate on parity, pack bundles."""
