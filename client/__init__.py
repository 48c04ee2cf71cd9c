"""A command-line client for people with a file of texts: ``python -m client score FILE --out OUT``."""
