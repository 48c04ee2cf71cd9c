"""gunicorn for the naive design: one synchronous process, as a plain Flask deployment would run."""

import os

bind = f"127.0.0.1:{os.environ.get('PORT', '8100')}"
workers = 1
worker_class = "sync"
timeout = 120
