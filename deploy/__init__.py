"""Deploy: fold BatchNorm, export to ONNX (fp32/int8), gate on parity, pack bundles.

``fold`` (BatchNorm folding), ``onnx_export`` (graph + checks), ``quantize`` (static
int8), ``parity`` (the gates), ``manifest`` (embed, hash, sign), ``export`` (checkpoint
to bundle), ``verify``, ``evaluate``, ``bench``, ``cli``. Loading bundles lives in
``leafscout.vision.bundle`` because the robot has no torch.
"""
