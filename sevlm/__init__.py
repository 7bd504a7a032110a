"""sevlm: a small emotional vision-language model (SEVLM) for art, trained and searched with Ray."""

__version__ = "0.1.0"
