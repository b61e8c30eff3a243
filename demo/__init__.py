"""`make demo` / `python -m demo`: the whole zhllama workflow end to end at toy scale on CPU.

Fetches pinned public inputs (demo/fetch.py), splits them (demo/split.py), runs every phase's CLI
as a content-keyed stage (demo/stages.py, demo/pipeline.py) and writes a Markdown report
(demo/report.py). See demo/__main__.py for the command line.
"""
