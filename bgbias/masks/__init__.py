"""Foreground masks for images that have none: mask methods (given, threshold, GrabCut, segmentation model), the mask cache, running a method over a source.

May import: core.
"""
