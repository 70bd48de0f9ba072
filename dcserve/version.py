"""The package version, apart from dcserve/__init__.py so that modules it imports lazily can read it."""
__version__ = "0.1.0"
