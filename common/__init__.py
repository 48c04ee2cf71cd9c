"""Code shared by the web front end and the workers; nothing here imports torch."""
