"""bgbias: how much does a model rely on image backgrounds, and how to make it stop.

Pipeline (one module per stage): sources -> masks -> backgrounds -> compose ->
variants -> build / augment / evaluate / challenge -> report. See README.md.
"""
__version__ = "0.1.0"
