"""Reproduction: paper reference numbers, result tables, experiment presets and the papermill batch runner."""
