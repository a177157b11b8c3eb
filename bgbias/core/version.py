"""The package version, kept apart so any module can read it without importing bgbias itself."""
__version__ = "0.1.0"
