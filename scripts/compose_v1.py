"""docker-compose.yml for Debian's docker-compose 1.29, which predates a few Compose v2 options.

    python3 scripts/compose_v1.py docker-compose.yml > for-v1.yml

Reads a compose file, drops each option that Compose v1 refuses and prints every change on
stderr, so nothing is translated silently. Run docker-compose on the result with
``--project-directory`` set to the original's folder, so its relative paths still hold. What it
drops, and what the stack loses on v1:

- ``depends_on.<service>.restart`` (Compose v2.17+): restart this service when that one restarts.
  On v1, restart the front door by hand after recreating ``web`` (it resolves ``web`` once at start).
- ``depends_on.<service>.required`` (Compose v2.20+): on v1 every dependency is required.

``--check`` only lists the changes and exits 0: ``make lint`` runs it, then ``docker-compose config``
on the result where docker-compose 1.x is installed, so an option neither engine accepts fails lint.
Needs PyYAML (in the dev requirements, and in Debian's docker-compose package).
"""

import sys

import yaml

# (path under a service, why v1 refuses it). Each is a key of a depends_on entry.
V2_ONLY_DEPENDS_ON = {
    "restart": "Compose v2.17+: restart this service when that one restarts",
    "required": "Compose v2.20+: an optional dependency",
}


def for_v1(config: dict) -> tuple[dict, list[str]]:
    """The config with v2-only options dropped, and one line per change."""
    changes = []
    for name, service in config.get("services", {}).items():
        depends_on = service.get("depends_on")
        if not isinstance(depends_on, dict):
            continue
        for dependency, options in depends_on.items():
            for option, why in V2_ONLY_DEPENDS_ON.items():
                if isinstance(options, dict) and option in options:
                    del options[option]
                    changes.append(f"services.{name}.depends_on.{dependency}.{option} dropped ({why})")
    return config, changes


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [arg for arg in argv if arg != "--check"]
    if len(paths) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(paths[0]) as file:
        config, changes = for_v1(yaml.safe_load(file))
    for change in changes:
        print(f"compose for v1: {change}", file=sys.stderr)
    if not check:
        yaml.safe_dump(config, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
