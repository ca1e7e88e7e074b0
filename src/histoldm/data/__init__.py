"""Data stages: slides -> patch store -> scores -> captions -> split, plus imports and synthetic tiles.

Each module holds one job; see docs/data.md for the methods and docs/formats.md for the files.
"""
