"""An annotation page for people: pairs of answers sampled from a checkpoint, judged left / right / tie, stored in
SQLite and exported as the JSONL preference pairs lm/data/preferences.py reads.

  python -m lm.annotate serve --checkpoint=RUN --prompts=FILE --db=FILE    # http://127.0.0.1:8000/
  python -m lm.annotate export --db=FILE OUT.jsonl

store.py (the database), sampler.py (pairs from the checkpoint), server.py (the Flask app), page/ (HTML, CSS and
JavaScript, no build step), __main__.py (the command line).
"""
