"""Where labelled images come from: the Source contract and registry, the built-in readers, annotated formats (VOC, ImageNet boxes, COCO), and the mask wrapper.

May import: core, masks.
"""
