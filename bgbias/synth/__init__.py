"""Synthesising benchmarks: texture patterns, background families, the variant registry, spurious-correlation sets, and the build that writes them to disk.

May import: core, masks, sources.
"""
