"""The one normalisation of email addresses, used wherever an address enters or is looked up:
registration, log-in, `/users/me`, admin updates, the `create-admin` command, the per-account
rate-limit key (app.http.ratelimit) and the repository's lookup.

NFKC folds compatibility forms (full-width letters to ASCII ones, ligatures), then lower-case, then
email-validator's own normalisation: NFC for the local part, IDNA (UTS #46) for the domain. The
domain is kept as its U-label (`bücher.example`, never `xn--bcher-kva.example`): that is what
email-validator returns as the normalised form and what the service has always stored (pydantic's
`EmailStr` gave the same form), so stored rows with international domains stay as they are, and
either form typed at log-in maps to it (the two are one-to-one under UTS #46).
"""

from __future__ import annotations

import unicodedata

from email_validator import EmailNotValidError, validate_email

__all__ = ["EmailNotValidError", "canonical_email", "normalise_email"]


def _folded(value: str) -> str:
    # NFKC again after lower(): lower-casing can leave a string that is not in normal form
    # ("İ" -> "i" + combining dot above).
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value.strip()).lower())


def normalise_email(value: str) -> str:
    """The stored form of an address; EmailNotValidError (a ValueError) if it is not one."""
    normalised = validate_email(_folded(value), check_deliverability=False).normalized
    return _folded(normalised)


def canonical_email(value: str) -> str:
    """The lookup form of anything typed as an email (a log-in's username, a rate-limit key):
    `normalise_email` when it is an address, otherwise the same folding without the address
    checks. Never raises, so a malformed username is an ordinary failed log-in."""
    try:
        return normalise_email(value)
    except (EmailNotValidError, UnicodeError):
        return _folded(value)
