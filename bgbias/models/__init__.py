"""Models to audit or train: architectures, checkpoints, label maps, and loading any model spec with its preprocessing.

May import: core.
"""
