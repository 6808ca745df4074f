"""PII detection: where in a text an email, phone number, card, IBAN or national id is.

Each detector finds candidates with one compiled regular expression and keeps only those that pass
the kind's own check, so that ordinary numbers (years, prices, versions, order counts, dates) are
not flagged:

- emails: local part, `@`, a dotted domain with a letter TLD;
- phone numbers: E.164 (`+44 20 7946 0958`, `0044…`) and national formats (`(415) 555-0132`,
  `020 7946 0958`, `06 12 34 56 78`), each valid for its country in Google's libphonenumber
  metadata (`phonenumbers`). A national number must start with a trunk `0`, an `(area)` or have
  the North American 3-3-4 shape; a bare run of digits counts only right after a word such as
  "phone", "call" or "mobile";
- card numbers: 13 to 19 digits, optionally in groups, with a known issuer prefix and length
  (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay, Maestro) and a valid Luhn check digit;
- IBANs: country code, check digits and BBAN with the country's length, the ISO 7064 mod-97 check
  and the country's own BBAN check where there is one (`python-stdnum`);
- national ids: US SSN (`123-45-6789`, or nine digits right after "SSN"), UK National Insurance
  number (`QQ 12 34 56 C`), Spanish DNI/NIE (check letter) and Italian codice fiscale (check
  character).

Detectors take a string and return `Match`es (kind, start, end); they never keep the text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import phonenumbers
from stdnum import iban as stdnum_iban
from stdnum import luhn
from stdnum.es import dni as es_dni
from stdnum.es import nie as es_nie
from stdnum.it import codicefiscale
from stdnum.us import ssn as us_ssn

# Regions whose national formats (no "+country") are recognised, most likely first.
PHONE_REGIONS = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "AU", "IN", "IE", "BE", "CH", "AT", "SE")


@dataclass(frozen=True)
class Match:
    kind: str
    start: int
    end: int


Detector = Callable[[str], list[Match]]

# Each pattern starts with a character class and checks the character before it with a lookbehind
# placed after that class: Python's `re` then skips quickly to positions where a match can start
# (a leading lookbehind would be tried at every position, about 3x slower).

# --- emails ---------------------------------------------------------------------------------------
# The address is found from each "@": the local part backwards, the domain forwards (Unicode letters
# allowed, RFC 6531), so text without "@" costs one `str.find`.
EMAIL_LOCAL = re.compile(r"[^\W_][\w.%+-]{0,63}$")
EMAIL_DOMAIN = re.compile(r"(?:[^\W_](?:[\w-]{0,61}[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])")
EMAIL_BEFORE = re.compile(r"[\w.%+-]")


def emails_find(text: str) -> list[Match]:
    found, at = [], text.find("@")
    while at != -1:
        local = EMAIL_LOCAL.search(text, max(0, at - 64), at) if at else None
        domain = EMAIL_DOMAIN.match(text, at + 1) if local else None
        start = local.start() if local else 0
        if domain and not (start and EMAIL_BEFORE.match(text, start - 1)):
            found.append(Match("pii_email", start, domain.end()))
        at = text.find("@", at + 1)
    return found


# --- phone numbers --------------------------------------------------------------------------------
PHONE = re.compile(
    r"(?<![\w+@/#$€£%.,:-])"
    r"(?:(?:\+|00)\d{1,3}[ .-]?)?"  # country code
    r"(?:\(\d{1,5}\)[ .-]?)?"  # (area) or (0)
    r"\d{1,14}(?:[ .-]\d{1,10}){0,6}"
    r"(?![\w@%]|[.,:/-]\d)"
)
NANP_SHAPE = re.compile(r"(?:1[ .-]?)?(?:\([2-9]\d{2}\) ?|[2-9]\d{2}[ .-])[2-9]\d{2}[ .-]\d{4}")
PHONE_CONTEXT = re.compile(
    r"\b(?:phone|tel|telephone|call|called|calling|mobile|cell|fax|whatsapp|sms|text me|ring)\b"
    r"\W{0,4}(?:\w+\W{1,3}){0,2}$",
    re.IGNORECASE,
)


def phones_find(text: str) -> list[Match]:
    def valid_end(candidate: str, start: int) -> int | None:
        if len(candidate) < 8:  # most numbers in prose: years, prices, counts
            return None
        for end in _group_ends(candidate, " .-"):
            digits = sum(ch.isdigit() for ch in candidate[:end])
            if digits < 8:
                return None
            if digits <= 15 and _phone_valid(candidate[:end], digits, context=lambda: text[max(0, start - 40):start]):
                return end
        return None

    return _groups_scan(PHONE, text, "pii_phone", valid_end, " .-")


def _phone_valid(candidate: str, digits: int, *, context: Callable[[], str]) -> bool:
    if candidate.startswith(("+", "00")):
        number = _phone_parse("+" + candidate[2:] if candidate.startswith("00") else candidate, None)
        if number is None:
            return False
        # An explicit "+country" is strong evidence: a possible length is enough from 10 digits on
        # (libphonenumber's ranges lag behind new allocations), below that the number must be valid.
        if phonenumbers.is_valid_number(number):
            return True
        return phonenumbers.is_possible_number(number) and (digits >= 10 or bool(PHONE_CONTEXT.search(context())))
    if digits < 9:
        return False
    shaped = candidate.startswith(("0", "(")) or NANP_SHAPE.fullmatch(candidate) is not None
    if not shaped and not PHONE_CONTEXT.search(context()):
        return False
    for region in PHONE_REGIONS:
        number = _phone_parse(candidate, region)
        if number is not None and phonenumbers.is_valid_number(number):
            return True
    return False


def _phone_parse(text: str, region: str | None):
    try:
        return phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None


# --- card numbers ---------------------------------------------------------------------------------
CARD = re.compile(r"\d(?<![\w.,/+-]\d)(?:[ -]?\d){12,18}(?![\w]|[.,/-]\d)")
# (prefixes, lengths): issuer ranges as published by the schemes (ISO/IEC 7812 IINs).
CARD_BRANDS: tuple[tuple[tuple[range, ...], frozenset[int]], ...] = (
    ((range(4, 5),), frozenset({13, 16, 19})),  # Visa
    ((range(51, 56), range(2221, 2721)), frozenset({16})),  # Mastercard
    ((range(34, 35), range(37, 38)), frozenset({15})),  # American Express
    ((range(6011, 6012), range(65, 66), range(644, 650), range(622126, 622926)), frozenset(range(16, 20))),  # Discover
    ((range(300, 306), range(36, 37), range(38, 40)), frozenset(range(14, 20))),  # Diners Club
    ((range(3528, 3590),), frozenset(range(16, 20))),  # JCB
    ((range(62, 63),), frozenset(range(16, 20))),  # UnionPay
    ((range(50, 51), range(56, 60), range(6304, 6305), range(6759, 6760), range(676770, 676775)),
     frozenset(range(12, 20))),  # Maestro
)


def cards_find(text: str) -> list[Match]:
    def valid_end(candidate: str, start: int) -> int | None:
        for end in _group_ends(candidate, " -"):
            number = candidate[:end].replace(" ", "").replace("-", "")
            if len(number) < 12:
                return None
            if _card_grouping_ok(candidate[:end]) and _card_brand_ok(number) and luhn.is_valid(number):
                return end
        return None

    return _groups_scan(CARD, text, "pii_card", valid_end, " -")


def _card_grouping_ok(candidate: str) -> bool:
    """Grouped numbers use one separator, in groups of 4 to 6 digits (the last may be shorter)."""
    separators = {ch for ch in candidate if not ch.isdigit()}
    if not separators:
        return True
    if len(separators) > 1:
        return False
    groups = candidate.split(separators.pop())
    return all(4 <= len(g) <= 6 for g in groups[:-1]) and 1 <= len(groups[-1]) <= 6


def _card_brand_ok(number: str) -> bool:
    for prefixes, lengths in CARD_BRANDS:
        if len(number) not in lengths:
            continue
        for prefix in prefixes:
            width = len(str(prefix.start))
            if int(number[:width]) in prefix:
                return True
    return False


# --- IBANs ----------------------------------------------------------------------------------------
IBAN = re.compile(r"[A-Z](?<![\w][A-Z])[A-Z]\d{2}(?: ?[A-Z0-9]{1,4}){3,8}(?![\w])")


def ibans_find(text: str) -> list[Match]:
    def valid_end(candidate: str, start: int) -> int | None:
        for end in _group_ends(candidate, " "):
            compact = candidate[:end].replace(" ", "")
            if 15 <= len(compact) <= 34 and stdnum_iban.is_valid(compact):
                return end
        return None

    return _groups_scan(IBAN, text, "pii_iban", valid_end, " ")


# --- national ids ---------------------------------------------------------------------------------
SSN = re.compile(r"\d(?<![\w-]\d)\d\d([- ])\d{2}\1\d{4}(?![\w]|-\d)")
SSN_SPOKEN = re.compile(r"\b(?:SSN|social security(?: number| no\.?)?)\W{0,4}(\d{9})(?!\w)", re.IGNORECASE)
# HMRC's rules: no D, F, I, Q, U, V in either letter, no O second, some pairs never issued.
NINO = re.compile(
    r"[A-CEGHJ-PR-TW-Z](?<![\w][A-Z])[A-CEGHJ-NPR-TW-Z]"
    r"( ?)\d{2}\1\d{2}\1\d{2}\1[A-D](?![\w])"
)
NINO_NEVER = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})
DNI_NIE = re.compile(r"[\dXYZ](?<![\w-][\dXYZ])(?:(?<=\d)\d{7}|(?<=[XYZ])-?\d{7})-?[A-Z](?![\w])")
CODICE_FISCALE = re.compile(r"[A-Z](?<![\w][A-Z])[A-Z]{5}[0-9LMNPQRSTUV]{2}[A-EHLMPR-T][0-9LMNPQRSTUV]{2}[A-Z][0-9LMNPQRSTUV]{3}[A-Z](?![\w])")


def national_ids_find(text: str) -> list[Match]:
    found = [
        Match("pii_national_id", m.start(), m.end())
        for m in SSN.finditer(text)
        if us_ssn.is_valid(m.group().replace(m.group(1), ""))
    ]
    lowered = text.lower()
    if "ssn" in lowered or "social security" in lowered:
        found += [
            Match("pii_national_id", m.start(1), m.end(1))
            for m in SSN_SPOKEN.finditer(text)
            if us_ssn.is_valid(m.group(1))
        ]
    found += [Match("pii_national_id", m.start(), m.end()) for m in NINO.finditer(text) if m.group()[:2] not in NINO_NEVER]
    found += [
        Match("pii_national_id", m.start(), m.end())
        for m in DNI_NIE.finditer(text)
        if es_dni.is_valid(m.group()) or es_nie.is_valid(m.group())
    ]
    found += [
        Match("pii_national_id", m.start(), m.end())
        for m in CODICE_FISCALE.finditer(text)
        if codicefiscale.is_valid(m.group())
    ]
    return found


# --- grouped numbers ------------------------------------------------------------------------------
def _group_ends(candidate: str, separators: str) -> list[int]:
    """Where a candidate may end: its end, then before each separator, longest first."""
    return [len(candidate)] + [i for i in range(len(candidate) - 1, 0, -1) if candidate[i] in separators]


def _groups_scan(pattern: re.Pattern, text: str, kind: str, valid_end, separators: str) -> list[Match]:
    """Matches of a grouped-number pattern, each trimmed to its longest valid prefix.

    The patterns are greedy, so a candidate may run on into the next number ("020 7946 0958 2024",
    "DE89 … 00 IBAN DE89 …"): the valid part ends at a group boundary, the scan resumes right after
    it, and after an invalid candidate it resumes at the candidate's next group, where a real
    number may start ("2024 020 7946 0958")."""
    found, position = [], 0
    while (m := pattern.search(text, position)) is not None:
        end = valid_end(m.group(), m.start())
        if end is not None:
            found.append(Match(kind, m.start(), m.start() + end))
            position = m.start() + end
            continue
        nxt = next((i for i, ch in enumerate(m.group()) if ch in separators), None)
        position = m.start() + nxt + 1 if nxt is not None else m.end()
    return found


DETECTORS: dict[str, Detector] = {
    "pii_email": emails_find,
    "pii_phone": phones_find,
    "pii_card": cards_find,
    "pii_iban": ibans_find,
    "pii_national_id": national_ids_find,
}


def pii_find(text: str, kinds=None) -> list[Match]:
    """Every PII match of the given kinds (all by default), overlaps resolved: at one place the
    longest match wins, so an IBAN's digits are not also reported as a phone number."""
    matches = [m for kind in (kinds or DETECTORS) for m in DETECTORS[kind](text)]
    return matches_disjoint(matches)


def matches_disjoint(matches: list[Match]) -> list[Match]:
    kept: list[Match] = []
    for match in sorted(matches, key=lambda m: (m.start, -(m.end - m.start))):
        if kept and match.start < kept[-1].end:
            continue
        kept.append(match)
    return kept
