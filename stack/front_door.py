"""The front door of a local stack: nginx, from deploy/nginx/front-door.conf.template, in front of gunicorn.

``python -m stack.front_door`` checks the template with ``nginx -t`` as `make run` and docker compose
fill it in (part of `make lint`).
"""

import argparse
import shutil
import string
import subprocess
import sys
import tempfile
from pathlib import Path

from common.settings import Settings
from stack.processes import LOOPBACK, REPO, ChildProcess, StartupError, exited_during_startup, http_status, wait_until

TEMPLATE = REPO / "deploy" / "nginx" / "front-door.conf.template"
# The scratch folders nginx writes request bodies and upstream answers to; Debian's build puts them
# under /var/lib/nginx, which only root may create, so a local stack names its own.
TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
# The template as each user fills it in, for `nginx -t`. nginx -t resolves upstream names, so compose's
# web:8000 stands as a loopback address here; its listen value (a bare port) is compose's own.
CHECKED_VARIANTS = {
    "make run": {"listen": f"{LOOPBACK}:8000", "upstream": f"{LOOPBACK}:8001", "max_body_bytes": 1048576},
    "docker compose": {
        "listen": "8000",
        "upstream": f"{LOOPBACK}:8001",
        "max_body_bytes": 1048576,
        "max_job_body_bytes": 33554432,
    },
}


def render_site(listen: str, upstream: str, max_body_bytes: int, max_job_body_bytes: int | None = None) -> str:
    """The template filled in as envsubst would; nginx's own $variables stay as they are."""
    values = {
        "FRONT_DOOR_LISTEN": listen,
        "WEB_UPSTREAM": upstream,
        "MAX_BODY_BYTES": str(max_body_bytes),
        "MAX_JOB_BODY_BYTES": str(max_job_body_bytes or Settings().max_job_body_bytes),
    }
    return string.Template(TEMPLATE.read_text()).safe_substitute(values)


def main_config(folder: Path, site: Path) -> str:
    """nginx.conf for an unprivileged nginx whose pid file, scratch folders and site live in ``folder``."""
    temp_paths = "\n".join(f"    {name}_temp_path {folder / name};" for name in TEMP_PATHS)
    return f"""# Written by stack/front_door.py for one run of the local stack.
# One process is plenty for a front door on a 2-core machine, and leaves the cores to the model.
# No master: a single process dies with the launcher (stack.processes.die_with_parent), where a
# master's worker would outlive it, holding the port.
master_process off;
worker_processes 1;
worker_rlimit_nofile 8192;
pid {folder / "nginx.pid"};
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{temp_paths}
    include {site};
}}
"""


def write_config(folder: Path, listen: str, upstream: str, max_body_bytes: int, max_job_body_bytes: int | None = None) -> Path:
    """Write nginx.conf and the site into ``folder``; the path of nginx.conf."""
    site = folder / "front-door.conf"
    site.write_text(render_site(listen, upstream, max_body_bytes, max_job_body_bytes))
    config = folder / "nginx.conf"
    config.write_text(main_config(folder, site))
    # Run as root, nginx's workers drop to `nobody`, which must reach the scratch folders in here.
    folder.chmod(0o755)
    return config


def nginx_binary() -> str:
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if binary is None:
        raise StartupError("nginx is not installed (apt-get install nginx)")
    return binary


class FrontDoor(ChildProcess):
    """nginx on ``LOOPBACK:port`` forwarding to gunicorn at ``upstream``, its config in a folder of its own."""

    def __init__(self, port: int, upstream: str, max_body_bytes: int, max_job_body_bytes: int | None = None, echo: bool = False):
        self.port = port
        self.folder = Path(tempfile.mkdtemp(prefix="sentiment-front-door-"))
        config = write_config(self.folder, f"{LOOPBACK}:{port}", upstream, max_body_bytes, max_job_body_bytes)
        # -e: nginx opens its compiled-in error log before reading the config; stderr needs no root.
        args = [nginx_binary(), "-p", str(self.folder), "-c", str(config), "-e", "stderr", "-g", "daemon off;"]
        super().__init__("front-door", args, {}, echo=echo)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def wait_until_listening(self, timeout_s: float = 10) -> None:
        """Wait until nginx answers on its port (any status: gunicorn may still be starting)."""

        def answers() -> bool:
            if not self.alive():
                raise exited_during_startup(self)
            return http_status(f"{self.url}/health") is not None

        wait_until(answers, timeout_s, "nginx to answer", interval_s=0.1)

    def stop(self, timeout_s: float = 30) -> None:
        """Stop nginx and delete its config folder; its log stays, like the other processes'."""
        super().stop(timeout_s)
        shutil.rmtree(self.folder, ignore_errors=True)


def check() -> int:
    """``nginx -t`` on the template as `make run` and docker compose fill it in; the exit status."""
    failures = 0
    for variant, values in CHECKED_VARIANTS.items():
        with tempfile.TemporaryDirectory(prefix="sentiment-nginx-check-") as folder:
            config = write_config(Path(folder), **values)
            result = subprocess.run(
                [nginx_binary(), "-t", "-q", "-p", folder, "-c", str(config), "-e", "stderr"],
                capture_output=True,
                text=True,
            )
        status = "ok" if result.returncode == 0 else f"FAILED\n{result.stderr}"
        print(f"{TEMPLATE.relative_to(REPO)} ({variant}): nginx -t {status}")
        failures += result.returncode != 0
    return 1 if failures else 0


if __name__ == "__main__":
    argparse.ArgumentParser(prog="python -m stack.front_door", description=__doc__).parse_args()
    sys.exit(check())
