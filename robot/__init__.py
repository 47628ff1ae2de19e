"""Onboard runtime: camera, classification, plant tracking, position, statistics, telemetry."""
