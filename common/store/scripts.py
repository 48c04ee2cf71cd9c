"""Run the stores' Lua scripts in one round trip, whether on a client or queued on a pipeline."""

from collections.abc import Sequence

import redis
from redis.commands.core import Script

# First line of a script that must run even when Redis is at maxmemory: one that only gives back
# budgets, deletes, or records the outcome of work already admitted. Without it Redis refuses a
# script's first write that could add memory (DECRBY included) once used_memory passes maxmemory.
ALLOW_OOM = "#!lua flags=allow-oom\n"


def run_script(script: Script, keys: Sequence, args: Sequence, client: redis.Redis | redis.client.Pipeline):
    """Run ``script`` on ``client``, or queue it when ``client`` is a pipeline.

    redis-py makes a pipeline that holds a registered script ask Redis whether the script is
    loaded (SCRIPT EXISTS) before it sends anything: a second round trip on every execute, on the
    paths that complete and start jobs. Queued on a pipeline, the script is sent whole with EVAL
    instead; Redis keeps its compiled copy by hash, so it only reads a few hundred more bytes, and
    a Redis that restarted (its script cache empty) needs no reload.
    """
    if isinstance(client, redis.client.Pipeline):
        return client.eval(script.script, len(keys), *keys, *args)
    return script(keys=keys, args=args, client=client)
