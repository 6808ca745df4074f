"""PII detection: each kind caught in several formats, no hit on ordinary text, property tests."""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from guardrails.detection import matches_disjoint, pii_find, Match

CAUGHT = {
    "pii_email": [
        ("write to jane.doe@example.com today", "jane.doe@example.com"),
        ("Mail: J.Smith+news@mail.co.uk.", "J.Smith+news@mail.co.uk"),
        ("<bob_99@sub.example-corp.io>", "bob_99@sub.example-corp.io"),
        ("contact: ÉLISE@EXAMPLE.FR, thanks", "ÉLISE@EXAMPLE.FR"),
        ("@team: ping ana@example.org", "ana@example.org"),
    ],
    "pii_phone": [
        ("Call me at +44 20 7946 0958", "+44 20 7946 0958"),
        ("phone: (415) 555-0132", "(415) 555-0132"),
        ("ring 020 7946 0958 tomorrow", "020 7946 0958"),
        ("+1-415-555-0132 is the desk", "+1-415-555-0132"),
        ("Mon portable : 06 12 34 56 78", "06 12 34 56 78"),
        ("+33 6 12 34 56 78", "+33 6 12 34 56 78"),
        ("toll free 1-800-555-0199.", "1-800-555-0199"),
        ("415.555.0132", "415.555.0132"),
        ("0044 20 7946 0958", "0044 20 7946 0958"),
        ("Berlin +49 30 12345678", "+49 30 12345678"),
        ("+91 98765 43210", "+91 98765 43210"),
        ("mobile 4155550132", "4155550132"),
        ("E.164: +14155550132", "+14155550132"),
        ("+44 (0) 20 7946 0958", "+44 (0) 20 7946 0958"),
    ],
    "pii_card": [
        ("card 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111"),
        ("5555-5555-5555-4444", "5555-5555-5555-4444"),
        ("amex 378282246310005.", "378282246310005"),
        ("6011111111111117", "6011111111111117"),
        ("4012888888881881", "4012888888881881"),
        ("JCB 3530111333300000", "3530111333300000"),
        ("5105 1051 0510 5100", "5105 1051 0510 5100"),
        ("Amex grouped 3782 822463 10005", "3782 822463 10005"),
    ],
    "pii_iban": [
        ("IBAN: GB82 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 32"),
        ("DE89 3704 0044 0532 0130 00 EUR", "DE89 3704 0044 0532 0130 00"),
        ("FR1420041010050500013M02606", "FR1420041010050500013M02606"),
        ("NL91ABNA0417164300", "NL91ABNA0417164300"),
        ("pay to ES9121000418450200051332.", "ES9121000418450200051332"),
        ("BE71 0961 2345 6769", "BE71 0961 2345 6769"),
    ],
    "pii_national_id": [
        ("SSN 123-45-6789", "123-45-6789"),
        ("ssn: 123456789", "123456789"),
        ("social security number 123 45 6789", "123 45 6789"),
        ("NI number AB 12 34 56 C", "AB 12 34 56 C"),
        ("NINO AB123456C", "AB123456C"),
        ("DNI 12345678Z", "12345678Z"),
        ("NIE X1234567L", "X1234567L"),
        ("codice fiscale RSSMRA85T10A562S", "RSSMRA85T10A562S"),
    ],
}

ORDINARY = [
    "The meeting is on 2024-05-17 at 10:30.",
    "Prices went from $1,299.99 to $1,450.00.",
    "We shipped 12,345 orders in 2023.",
    "Upgrade to version 3.11.4 or 4.2.0-rc1.",
    "Bug #40213 was fixed in commit 9f3c2ab.",
    "The office is at 221B Baker Street, London NW1 6XE.",
    "Call the support team during business hours.",
    "for i in range(1000000): total += i * 2",
    "x = 3.14159265358979",
    "Population: 8 336 817 people",
    "Order 1234567890123 shipped.",
    "ISBN 978-3-16-148410-0",
    "Between 1999 and 2005 sales rose 15%.",
    "Flight LH 400 departs 09:45 from gate B22.",
    "The temperature was -12.5 degrees on 01.02.2024.",
    "Use port 8080 and 127.0.0.1:5432 for postgres.",
    "user@localhost is not an address anyone can write to",
    "@property\ndef total(self): return self.a + self.b",
    "The answer is 42 and 1234 5678 9012 3456 fails the Luhn check.",
    "Coordinates 48.8566, 2.3522",
    "Timestamp 1700000000123",
    "UUID 123e4567-e89b-12d3-a456-426614174000",
    "Pay €20 per month for 12 months.",
    "Room 0101 on floor 3.",
    "The range is 100-200-300.",
    "Invoice INV-2024-000123 is due.",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "He scored 98 out of 100 in 2019 and 2020.",
    "The ratio is 1:1000000.",
    "Meet at 7 pm on 12/25/2024.",
    "Version 20.04.6 LTS",
    "The IBAN field is empty; fill it in later.",
    "US patent 1234567",
    "ABC 12 34 56 D is a shelf label",
    "Call me maybe, around 2024.",
    "SELECT id, total FROM orders WHERE total > 1000 LIMIT 50;",
    "npm install @scope/pkg@1.2.3",
    "The budget is 1 250 000 EUR for 2025-2027.",
    "Between 10:00 and 18:00, Monday to Friday.",
    "GDP grew 2.5% to 27,360 billion dollars.",
    "Train 9012 leaves platform 3 at 14:05.",
    "The model has 175000000000 parameters.",
    "Apply the 20% discount code SAVE20 at checkout.",
    "See RFC 9110 section 15.5.20.",
    "@here the build is green",
]


@pytest.mark.parametrize(("kind", "text", "expected"), [
    (kind, text, expected) for kind, cases in CAUGHT.items() for text, expected in cases
])
def test_each_kind_is_caught(kind, text, expected):
    found = [(m.kind, text[m.start:m.end]) for m in pii_find(text)]
    assert (kind, expected) in found, found


def test_only_the_asked_kinds_are_looked_for():
    text = "jane@example.com, 4111 1111 1111 1111"
    assert [m.kind for m in pii_find(text, ["pii_card"])] == ["pii_card"]


@pytest.mark.parametrize("text", ORDINARY)
def test_no_false_hit_on_ordinary_sentences(text):
    assert pii_find(text) == []


def test_ordinary_sentences_are_many():
    assert len(ORDINARY) >= 30


@pytest.mark.parametrize(("text", "expected"), [
    ("call 020 7946 0958 2024", "020 7946 0958"),  # a greedy candidate runs on into the next number
    ("2024 020 7946 0958", "020 7946 0958"),  # ... or starts one number early
    ("4111 1111 1111 1111 202", "4111 1111 1111 1111"),
    ("DE89 3704 0044 0532 0130 00 DE89 3704 0044 0532 0130 00", "DE89 3704 0044 0532 0130 00"),
])
def test_grouped_numbers_are_trimmed_to_the_valid_part(text, expected):
    found = [text[m.start:m.end] for m in pii_find(text)]
    assert found[0] == expected and all(f == expected for f in found)


def test_overlapping_matches_keep_the_longest():
    kept = matches_disjoint([Match("a", 0, 4), Match("b", 0, 10), Match("c", 5, 12), Match("d", 10, 14)])
    assert kept == [Match("b", 0, 10), Match("d", 10, 14)]


# --- properties -----------------------------------------------------------------------------------
def _luhn_complete(body: str) -> str:
    total = 0
    for i, digit in enumerate(reversed(body)):
        d = int(digit)
        if i % 2 == 0:
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


@settings(max_examples=200, deadline=None)
@given(prefix=st.sampled_from(["4", "51", "55", "2221", "34", "37", "6011", "3530"]),
       digits=st.text("0123456789", min_size=14, max_size=14), grouped=st.booleans())
def test_any_luhn_valid_card_is_caught(prefix, digits, grouped):
    length = 15 if prefix in ("34", "37") else 16
    number = _luhn_complete((prefix + digits)[: length - 1])
    shown = " ".join(number[i:i + 4] for i in range(0, len(number), 4)) if grouped else number
    assert [m.kind for m in pii_find(f"my card is {shown} thanks")] == ["pii_card"]


@settings(max_examples=200, deadline=None)
@given(prefix=st.sampled_from(["4", "51", "37", "6011"]), digits=st.text("0123456789", min_size=14, max_size=14))
def test_a_wrong_check_digit_is_not_a_card(prefix, digits):
    length = 15 if prefix == "37" else 16
    number = _luhn_complete((prefix + digits)[: length - 1])
    wrong = number[:-1] + str((int(number[-1]) + 1) % 10)
    assert pii_find(wrong) == []


def _iban(country: str, bban: str) -> str:
    numeric = "".join(str(int(ch, 36)) for ch in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


# (country, letters, digits): the BBAN shapes of countries whose IBAN has no national check digit.
IBAN_SHAPES = [("DE", 0, 18), ("AT", 0, 16), ("NL", 4, 10), ("GB", 4, 14), ("IE", 4, 14)]


@settings(max_examples=200, deadline=None)
@given(shape=st.sampled_from(IBAN_SHAPES), data=st.data(), grouped=st.booleans())
def test_any_mod97_iban_with_the_country_length_is_caught(shape, data, grouped):
    country, letters, digits = shape
    bban = data.draw(st.text(string.ascii_uppercase, min_size=letters, max_size=letters)) + data.draw(
        st.text("0123456789", min_size=digits, max_size=digits))
    iban = _iban(country, bban)
    shown = " ".join(iban[i:i + 4] for i in range(0, len(iban), 4)) if grouped else iban
    found = pii_find(f"IBAN {shown}.")
    assert [m.kind for m in found] == ["pii_iban"] and found[0].end == 5 + len(shown)


@settings(max_examples=300, deadline=None)
@given(year=st.integers(1900, 2100), price=st.integers(0, 10**7), cents=st.integers(0, 99),
       count=st.integers(0, 10**9), major=st.integers(0, 99), minor=st.integers(0, 99))
def test_years_prices_counts_and_versions_are_never_pii(year, price, cents, count, major, minor):
    text = (f"In {year} we sold {count:,} units at ${price:,}.{cents:02d} each; "
            f"version {major}.{minor}.{cents} shipped on {year}-{minor % 12 + 1:02d}-{cents % 28 + 1:02d}.")
    assert pii_find(text) == []


def test_a_2kb_prompt_is_scanned_in_a_few_milliseconds_at_most():
    text = " ".join(ORDINARY)[:2048]
    pii_find(text)
    started = time.process_time()  # CPU time: other processes on a busy machine do not count
    for _ in range(50):
        pii_find(text)
    per_call = (time.process_time() - started) / 50
    assert per_call < 0.005, f"{per_call * 1e6:.0f} µs for 2 KB"
