"""Baseline defences the papers compare with, one module per family."""
