"""The report: read result JSON, draw figures, render one self-contained HTML page. Never imports torch.

May import: core.
"""
