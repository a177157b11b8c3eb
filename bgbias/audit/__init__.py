"""Auditing a classifier on a build: the shared audit core, accuracy per variant (eval), the backgrounds challenge, saliency.

May import: core, models.
"""
