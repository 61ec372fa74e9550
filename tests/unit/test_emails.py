"""app.core.emails: the one normal form of an email address (issue 11, finding 4)."""

from __future__ import annotations

import pytest

from app.core.emails import EmailNotValidError, canonical_email, normalise_email


@pytest.mark.parametrize(
    ("typed", "stored"),
    [
        ("alice@example.com", "alice@example.com"),
        ("  Alice@Example.COM ", "alice@example.com"),
        (
            "\uff41\uff4c\uff49\uff43\uff45@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.com",
            "alice@example.com",
        ),  # full-width
        ("ﬀ@example.com", "ff@example.com"),
        ("alice@xn--bcher-kva.example", "alice@bücher.example"),
        ("alice@BÜCHER.example", "alice@bücher.example"),
        ("ßtraße@example.com", "ßtraße@example.com"),  # lower-cased, not case-folded to "ss"
    ],
)
def test_normal_form(typed: str, stored: str) -> None:
    assert normalise_email(typed) == stored
    assert normalise_email(stored) == stored  # idempotent
    assert canonical_email(typed) == stored


@pytest.mark.parametrize("bad", ["nope", "a@b", "x@xn--zz.com", "a@@example.com", ""])
def test_not_an_address(bad: str) -> None:
    with pytest.raises(EmailNotValidError):
        normalise_email(bad)
    # The lenient form never raises (log-in usernames, rate-limit keys).
    assert canonical_email(bad) == bad.strip().lower()


def test_canonical_email_folds_what_is_not_an_address() -> None:
    assert canonical_email(" \uff21\uff24\uff2d\uff29\uff2e ") == "admin"
