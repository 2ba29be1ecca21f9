"""dgbatch: run batches of audio through Deepgram's pre-recorded API, resumably."""

__version__ = "0.1.0"
__all__ = ["__version__"]
