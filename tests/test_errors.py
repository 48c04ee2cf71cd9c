"""The error contract: one hierarchy in web/errors.py, and docs/api.md's error table says exactly what it holds."""

import re

import pytest

from stack import REPO
from web.errors import APIError, JobFailed, error_codes, subclasses

README_MAX_BYTES = 12_000


def api_doc_error_table() -> dict[str, int | None]:
    """code -> status from docs/api.md's error table ("other" status -> None; ranges such as 400–505 skipped)."""
    page = (REPO / "docs" / "api.md").read_text()
    section = page.split("## Errors", 1)[1].split("\n## ", 1)[0]
    table = {}
    for row in re.findall(r"^\| (\w+) \| (.+?) \|", section, flags=re.MULTILINE):
        status, codes = row
        if status == "status":
            continue
        for code in re.findall(r"`(\w+)`", codes):
            table[code] = None if status == "other" else int(status)
    return table


def test_api_doc_error_table_matches_the_error_hierarchy():
    assert api_doc_error_table() == error_codes()


def test_readme_stays_a_front_page():
    """README is the front page; the full reference lives in docs/api.md."""
    size = len((REPO / "README.md").read_bytes())
    assert size < README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/ to keep it under {README_MAX_BYTES}"


def test_every_error_class_has_its_own_code():
    classes = [cls for cls in subclasses(APIError) if cls not in (APIError, JobFailed)]
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes)), codes


@pytest.mark.parametrize(
    "path",
    [
        "web/health.py",
        "web/security.py",
        "web/predict.py",
        "web/jobs.py",
        "web/bulk_jobs.py",
        "web/job_body.py",
        "web/responses.py",
        "web/parsing.py",
        "web/__init__.py",
    ],
)
def test_no_view_builds_its_own_error_response(path):
    """Error bodies come only from APIError.response; views raise errors from the hierarchy."""
    source = (REPO / path).read_text()
    assert '"error":' not in source and "error_response(" not in source
