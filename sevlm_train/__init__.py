"""Orchestration: Ray Train runs of the sevlm library (the library itself needs no Ray)."""
