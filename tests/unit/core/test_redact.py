"""sidecar.core.redact: no password survives, whatever characters it holds."""

from __future__ import annotations

import pytest

from sidecar.core.redact import REDACTED, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:hunter2@h:6379/0", f"redis://user:{REDACTED}@h:6379/0"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://h:6379/0?password=hunter2", f"redis://h:6379/0?password={REDACTED}"),
        ("redis+sentinel://u:S3cr3t/Pa55@h:26379/m", f"redis+sentinel://u:{REDACTED}@h:26379/m"),
        ("redis://:p#ss/w?rd@h:6379/0", f"redis://:{REDACTED}@h:6379/0"),
        ("rediss://u:a@b@h1:1,h2:2/0", f"rediss://u:{REDACTED}@h1:1,h2:2/0"),
        ("redis://u:x?y#z@h", f"redis://u:{REDACTED}@h"),
    ],
)
def test_redact_url_hides_the_password_whatever_it_holds(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "secret", ["S3cr3t/Pa55", "p#ss/w?rd", "a@b", "x?y#z", "pa:ss", "/leading", "trailing/", "?", "#"]
)
def test_no_part_of_a_password_with_url_delimiters_is_shown(secret: str) -> None:
    shown = redact_url(f"redis://user:{secret}@cache.internal:6379/2")
    assert secret not in shown and REDACTED in shown
    assert shown.endswith("@cache.internal:6379/2")


def test_an_at_sign_only_in_the_query_hides_more_never_less() -> None:
    shown = redact_url("redis://h:6379/0?client_name=a@b&password=pw")
    assert "pw" not in shown
