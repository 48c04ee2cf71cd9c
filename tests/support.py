"""The launcher's pieces the tests use, re-exported from ``stack`` so test modules keep one import line."""

from stack import REPO, RedisServer, child_pids, free_port, start_web, start_worker, wait_until, web_allocator_env

__all__ = ["REPO", "RedisServer", "child_pids", "free_port", "start_web", "start_worker", "wait_until", "web_allocator_env"]
