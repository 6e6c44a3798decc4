"""Helpers shared by the tests (on the path through `pythonpath = tests`)."""
