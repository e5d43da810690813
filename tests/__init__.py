"""
caretproto's tests, for pytest and trial alike.

Hypothesis runs without per-example deadlines: CI machines are shared and
noisy, and a slow example is not a wrong one.
"""

from hypothesis import settings

settings.register_profile("caret", deadline=None)
settings.load_profile("caret")
