"""Training models that ignore backgrounds: config, data, recipes, the loop, BackgroundSwap augmentation, adversarial backgrounds (paper 002).

May import: core, sources, synth, models.
"""
