"""The floor every stage stands on: registry, seeding, Sample, the compose kernel, image/mask I/O, the on-disk layout, boxes, executors.

Imports nothing else of bgbias.
"""
