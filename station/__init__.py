"""Base station: receive robot telemetry, store it, serve field reports."""
