"""Score a file of texts with one bulk job, writing results as they are ready; list your bulk jobs.

    python -m client score reviews.csv --column text --out scored.csv
    python -m client jobs [--status running] [--limit 20] [--all]

Reads CSV (the --column to score; every column is kept), NDJSON (strings, or objects holding
--column) or plain text (one text per line). Submits one bulk job (POST /jobs), shows a progress
bar, and appends to --out, in input order, the input's columns plus `label` and `score` (the top
prediction; empty for a text whose batch failed) as soon as each stretch of results is ready.

Ctrl-C leaves the job running and <out>.job.json behind: the same command again resumes, writing
from where it stopped. A rerun on the same file within the service's JOB_TTL_S also reuses the job
(an Idempotency-Key derived from the file), so nothing is scored twice.

--url (default: $SENTIMENT_URL, else http://127.0.0.1:8000) and --api-key select the service. The
key is sent to that origin only: a redirect to another host is refused, not followed. A written cell
that a spreadsheet would run as a formula (it starts with =, +, -, @, a tab or a carriage return,
and is not a number) gets a leading apostrophe.
"""

import argparse
import csv
import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

PAGE = 1000
POLL_S = 1.0
BAR_WIDTH = 30
# Most bytes read from one answer: a page of PAGE results is about 100 KB; an error is a few hundred bytes.
MAX_ANSWER_BYTES = 16 * 2**20
MAX_ERROR_BYTES = 64 * 1024
# What a spreadsheet runs as a formula when a cell starts with it (OWASP's CSV injection advice).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class ServiceError(RuntimeError):
    pass


def origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


class SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only within the origin the CLI was given (or to https on the same host):
    the X-API-Key must never reach another host."""

    def redirect_request(self, request, fp, code, message, headers, new_url):
        given, target = origin(request.full_url), origin(new_url)
        if target != given and not (target[0] == "https" and target[1] == given[1]):
            raise ServiceError(f"refusing a redirect from {given[1]} to another host, {target[1]}: the API key goes nowhere else")
        return super().redirect_request(request, fp, code, message, headers, new_url)


class Service:
    def __init__(self, url: str, api_key: str | None):
        self.url = url.rstrip("/")
        self.headers = {"X-API-Key": api_key} if api_key else {}
        self.opener = urllib.request.build_opener(SameOriginRedirects)

    def call(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> dict:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers={**self.headers, **(headers or {})})
        try:
            with self.opener.open(request, timeout=120) as response:
                answer = response.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as error:
            detail = error.read(MAX_ERROR_BYTES).decode(errors="replace")
            raise ServiceError(f"{method} {path}: HTTP {error.code} {detail}") from None
        except urllib.error.URLError as error:
            raise ServiceError(f"cannot reach {self.url}: {error.reason}") from None
        if len(answer) > MAX_ANSWER_BYTES:
            raise ServiceError(f"{method} {path}: the answer is over {MAX_ANSWER_BYTES} bytes")
        return json.loads(answer)


def spreadsheet_safe(value):
    """``value``, with a leading apostrophe if a spreadsheet would run it as a formula."""
    if not isinstance(value, str) or not value.startswith(FORMULA_PREFIXES):
        return value
    try:
        float(value)
        return value  # a negative number, not a formula
    except ValueError:
        return "'" + value


def read_rows(path: Path, column: str) -> tuple[list[str], list[dict]]:
    """(column names, rows) of the input; each row holds its text under ``column``."""
    suffix = path.suffix.lower()
    with path.open(newline="", encoding="utf-8") as file:
        if suffix == ".csv":
            reader = csv.DictReader(file)
            if column not in (reader.fieldnames or []):
                raise SystemExit(f"{path}: no column {column!r} (columns: {', '.join(reader.fieldnames or [])})")
            return list(reader.fieldnames), list(reader)
        if suffix in (".ndjson", ".jsonl"):
            rows = []
            for number, line in enumerate(file, start=1):
                if not line.strip():
                    continue
                value = json.loads(line)
                if isinstance(value, str):
                    value = {column: value}
                if not isinstance(value, dict) or not isinstance(value.get(column), str):
                    raise SystemExit(f"{path}:{number}: expected a string, or an object with a string {column!r}")
                rows.append(value)
            names = list(dict.fromkeys(name for row in rows for name in row))
            return names, rows
        rows = [{column: line.rstrip("\r\n")} for line in file if line.strip()]
        return [column], rows


def fingerprint(path: Path, column: str) -> str:
    digest = hashlib.sha256(column.encode() + b"\0")
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def progress_bar(done: int, total: int, status: str) -> None:
    filled = BAR_WIDTH * done // max(total, 1)
    print(f"\r[{'#' * filled}{' ' * (BAR_WIDTH - filled)}] {done:,}/{total:,} {status:<9}", end="", file=sys.stderr, flush=True)


def score(args) -> int:
    names, rows = read_rows(args.input, args.column)
    if not rows:
        raise SystemExit(f"{args.input}: no texts")
    service = Service(args.url, args.api_key)
    state_path = Path(f"{args.out}.job.json")
    key = fingerprint(args.input, args.column)
    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state and state.get("fingerprint") != key:
        raise SystemExit(f"{state_path} belongs to another input; delete it to start over")
    if state is None:
        body = "".join(json.dumps(row[args.column]) + "\n" for row in rows).encode()
        accepted = service.call("POST", "/jobs", body, {"Content-Type": "application/x-ndjson", "Idempotency-Key": key})
        state = {"job_id": accepted["job_id"], "fingerprint": key, "written": 0, "bytes": 0}
        state_path.write_text(json.dumps(state))
        print(f"job {state['job_id']}: {len(rows):,} texts", file=sys.stderr)
    else:
        print(f"resuming job {state['job_id']} at row {state['written']:,}", file=sys.stderr)

    job_id = state["job_id"]
    columns = [*names, "label", "score"]
    with open(args.out, "r+" if state["written"] else "w", newline="", encoding="utf-8") as out:
        # Rows written after the last saved state (Ctrl-C between the two) are cut, then written again.
        out.truncate(state["bytes"])
        out.seek(state["bytes"])
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        if not state["written"]:
            writer.writeheader()
        try:
            while True:
                view = service.call("GET", f"/jobs/{job_id}")
                ended = view["status"] not in ("queued", "running")
                while state["written"] < len(rows):
                    page = service.call("GET", f"/jobs/{job_id}/results?offset={state['written']}&limit={PAGE}")
                    ready = 0
                    for prediction in page["predictions"]:
                        if prediction is None and not ended:
                            break
                        row = rows[state["written"] + ready]
                        top = prediction[0] if prediction else {"label": "", "score": ""}
                        cells = {**row, "label": top["label"], "score": top["score"]}
                        writer.writerow({name: spreadsheet_safe(value) for name, value in cells.items()})
                        ready += 1
                    if not ready:
                        break
                    out.flush()
                    state["written"] += ready
                    state["bytes"] = out.tell()
                    state_path.write_text(json.dumps(state))
                progress_bar(view["progress"]["done"] + view["progress"]["failed"], len(rows), view["status"])
                if ended and state["written"] >= len(rows):
                    break
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            print(f"\ninterrupted: job {job_id} goes on; run the same command again to resume", file=sys.stderr)
            return 130
    print(f"\n{view['status']}: {state['written']:,} rows in {args.out}", file=sys.stderr)
    state_path.unlink()
    return 0 if view["status"] == "done" else 1


def list_jobs(args) -> int:
    """Print your bulk jobs, newest first: a page of them, or every page with --all."""
    service = Service(args.url, args.api_key)
    query = {"limit": args.limit, **({"status": args.status} if args.status else {})}
    print(f"{'job_id':36}  {'status':9}  {'done':>15}  created_at")
    while True:
        page = service.call("GET", "/jobs?" + urllib.parse.urlencode(query))
        for view in page["data"]:
            progress = view["progress"]
            done = f"{progress['done']:,}/{progress['total']:,}"
            print(f"{view['job_id']:36}  {view['status']:9}  {done:>15}  {view['created_at']}")
        if not (args.all and page["has_more"]):
            return 0
        query["after"] = page["last_id"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    score_parser = commands.add_parser("score", help="score a CSV, NDJSON or text file with one bulk job")
    score_parser.add_argument("input", type=Path, help="reviews.csv, reviews.ndjson or reviews.txt")
    score_parser.add_argument("--column", default="text", help="the column (CSV) or key (NDJSON) holding the text")
    score_parser.add_argument("--out", type=Path, required=True, help="CSV to write: the input's columns plus label and score")
    jobs_parser = commands.add_parser("jobs", help="list your bulk jobs, newest first")
    jobs_parser.add_argument("--status", choices=["queued", "running", "done", "failed", "cancelled"], help="only these")
    jobs_parser.add_argument("--limit", type=int, default=20, help="jobs per page (1 to 100)")
    jobs_parser.add_argument("--all", action="store_true", help="every page, not only the first")
    for command in (score_parser, jobs_parser):
        command.add_argument("--url", default=os.environ.get("SENTIMENT_URL", "http://127.0.0.1:8000"))
        command.add_argument("--api-key", default=os.environ.get("SENTIMENT_API_KEY"), help="sent as X-API-Key")
    args = parser.parse_args(argv)
    try:
        return score(args) if args.command == "score" else list_jobs(args)
    except ServiceError as error:
        print(f"\nerror: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
