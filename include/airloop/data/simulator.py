"""Deterministic simulator of the demo use case: insurance-claim fraud.

Each day is generated independently from ``(seed, day)``, so any range of days is reproducible
bit for bit and a backfill sees exactly the data a scheduled run saw. One row is one claim:
twelve numeric and categorical features, the claim timestamp, the fraud label and the time the
label became known (investigations take days to weeks: labels arrive late).

Scripted events (dates in :data:`DEFAULT_EVENTS`, also written to ``events.json``):

* ``bad_data``: one day whose export is broken — a burst of nulls in ``claim_amount`` and
  ``police_report``, and negative ``days_to_report`` values.
* ``covariate_shift``: from that day on, claim amounts are larger, customers younger and more
  claims arrive through online/app channels (the inputs move; the fraud mechanism does not).
* ``concept_drift``: from that day on, fraud behaves differently (police reports stop being
  protective; fraud shifts from large, late-reported and theft claims to small glass claims
  reported at once) — the inputs barely move, but a model's accuracy drops (ROC AUC ~0.76 to
  ~0.35) once the delayed labels arrive; the new pattern is as learnable (~0.8 for a model trained
  on two weeks of it).

A second dataset, support-ticket triage (:func:`generate_ticket_day`, multi-class: which of five
queues a ticket belongs to), drives the ``ticket_triage`` pipeline. :data:`DATASETS` maps each
demo pipeline to its generator, calendar, events and file layout (``airloop simulate --pipeline``).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

INCIDENT_TYPES = ["collision", "theft", "vandalism", "fire", "weather", "glass"]


REGIONS = ["north", "south", "east", "west", "central"]


CHANNELS = ["agent", "online", "phone", "app"]


POLICE_REPORT = ["yes", "no", "unknown"]


DEFAULT_START = date(2026, 1, 1)


DEFAULT_DAYS = 150


DEFAULT_EVENTS: dict[str, date] = {
    "bad_data": date(2026, 3, 10),
    "covariate_shift": date(2026, 4, 20),
    "concept_drift": date(2026, 4, 30),
}


def _day_rng(seed: int, day: date) -> np.random.Generator:
    """A generator that depends only on ``seed`` and ``day``."""
    return np.random.default_rng([seed, day.toordinal(), zlib.crc32(b"airloop-claims")])


def generate_day(day: date, seed: int = 7, events: dict[str, date] | None = None) -> pd.DataFrame:
    """Return the claims filed on ``day`` (deterministic for a given ``seed`` and ``events``)."""
    events = DEFAULT_EVENTS if events is None else events
    rng = _day_rng(seed, day)
    shifted = "covariate_shift" in events and day >= events["covariate_shift"]
    drifted = "concept_drift" in events and day >= events["concept_drift"]

    weekly = 1.0 + 0.15 * np.sin(2 * np.pi * day.weekday() / 7)
    n = int(rng.poisson(400 * weekly))

    channel_p = [0.15, 0.45, 0.1, 0.3] if shifted else [0.35, 0.3, 0.25, 0.1]
    incident = rng.choice(INCIDENT_TYPES, n, p=[0.38, 0.12, 0.1, 0.05, 0.15, 0.2])
    region = rng.choice(REGIONS, n, p=[0.22, 0.24, 0.18, 0.2, 0.16])
    channel = rng.choice(CHANNELS, n, p=channel_p)
    police = rng.choice(POLICE_REPORT, n, p=[0.45, 0.4, 0.15])
    amount_scale = 1.8 if shifted else 1.0
    claim_amount = np.round(rng.lognormal(8.2, 0.9, n) * amount_scale, 2)
    customer_age = np.clip(rng.normal(38 if shifted else 46, 13, n), 18, 95).astype(int)
    policy_tenure_days = np.clip(rng.gamma(2.0, 500, n), 0, 7300).astype(int)
    vehicle_age_years = np.clip(rng.poisson(6, n), 0, 30)
    prior_claims = rng.poisson(0.6, n)
    days_to_report = np.clip(rng.exponential(6, n), 0, 365).astype(int)
    witness_count = rng.poisson(0.8, n)
    deductible = rng.choice([250.0, 500.0, 1000.0, 2000.0], n, p=[0.2, 0.4, 0.3, 0.1])
    premium_monthly = np.round(np.clip(rng.normal(95, 30, n) + vehicle_age_years * -1.5, 20, 2000), 2)

    # Fraud mechanism. Scaled by the *unshifted* amount distribution so the covariate shift
    # changes inputs, not the relation between inputs and label.
    z_amount = (np.log(claim_amount / amount_scale) - 8.2) / 0.9
    logit = (
        -3.1
        + 1.1 * z_amount
        + 0.9 * (days_to_report > 14)
        + 0.45 * prior_claims
        + 0.8 * (incident == "theft")
        + 0.4 * (channel == "online")
        - 0.35 * witness_count
        - 0.0004 * policy_tenure_days
    )
    if drifted:  # a new fraud pattern, as learnable as the old one: small glass claims reported at once
        logit += (0.3 * (police == "yes") + 3.2 * ((incident == "glass") & (days_to_report <= 2))
                  - 2.0 * z_amount - 1.2 * (days_to_report > 14) - 1.0 * (incident == "theft") - 0.9)
    else:
        logit += -1.0 * (police == "yes")
    is_fraud = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)

    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    seconds = np.sort(rng.integers(0, 86_400, n))
    claim_ts = pd.to_datetime(start) + pd.to_timedelta(seconds, unit="s")
    label_delay = pd.to_timedelta(np.clip(3 + rng.exponential(7, n), 3, 30) * 86_400, unit="s")
    label_ts = (claim_ts + label_delay).floor("s")

    frame = pd.DataFrame(
        {
            "claim_id": [f"C{day:%Y%m%d}-{i:05d}" for i in range(n)],
            "claim_ts": claim_ts,
            "claim_amount": claim_amount,
            "customer_age": customer_age,
            "policy_tenure_days": policy_tenure_days,
            "vehicle_age_years": vehicle_age_years,
            "prior_claims": prior_claims,
            "days_to_report": days_to_report,
            "witness_count": witness_count,
            "deductible": deductible,
            "premium_monthly": premium_monthly,
            "incident_type": incident,
            "region": region,
            "channel": channel,
            "police_report": police,
            "is_fraud": is_fraud,
            "label_ts": label_ts,
        }
    )
    if "bad_data" in events and day == events["bad_data"]:
        broken = rng.random(n) < 0.4
        frame["claim_amount"] = frame["claim_amount"].mask(broken)
        frame["police_report"] = frame["police_report"].mask(rng.random(n) < 0.3)
        frame.loc[rng.random(n) < 0.1, "days_to_report"] = -1
    return frame


def partition_path(root: Path, pattern: str, day: date) -> Path:
    """File of ``day`` under ``root`` following a ``{date}`` partition pattern."""
    return root / pattern.format(date=day.isoformat())


TICKET_QUEUES = ["billing", "technical", "account", "sales", "feedback"]


TICKET_CHANNELS = ["email", "chat", "web_form", "phone"]


TICKET_TIERS = ["free", "pro", "enterprise"]


TICKET_PRODUCTS = ["web_app", "mobile_app", "api", "payments"]


TICKET_LANGUAGES = ["en", "de", "fr", "es"]


TICKET_START = date(2026, 1, 1)


TICKET_DAYS = 120


TICKET_EVENTS: dict[str, date] = {"covariate_shift": date(2026, 3, 18)}


def generate_ticket_day(day: date, seed: int = 7, events: dict[str, date] | None = None) -> pd.DataFrame:
    """Return the support tickets opened on ``day`` (deterministic for ``seed`` and ``events``).

    One row is one ticket: thirteen numeric and categorical features, the creation timestamp,
    the queue it was triaged to (``billing``, ``technical``, ``account``, ``sales``,
    ``feedback``: a multinomial logit of the features) and when the triage became known (an hour
    to five days later). Weekends are quieter. ``covariate_shift`` (an API product launch in a
    new market): from that day on more tickets are about the API, in German, through chat,
    longer and with more error codes; the queue a given ticket belongs to does not change.
    """
    events = TICKET_EVENTS if events is None else events
    rng = np.random.default_rng([seed, day.toordinal(), zlib.crc32(b"airloop-tickets")])
    shifted = "covariate_shift" in events and day >= events["covariate_shift"]
    n = int(rng.poisson(320 * (0.6 if day.weekday() >= 5 else 1.0)))

    channel = rng.choice(TICKET_CHANNELS, n, p=[0.25, 0.5, 0.15, 0.1] if shifted else [0.45, 0.25, 0.2, 0.1])
    tier = rng.choice(TICKET_TIERS, n, p=[0.5, 0.35, 0.15])
    product = rng.choice(TICKET_PRODUCTS, n, p=[0.3, 0.15, 0.4, 0.15] if shifted else [0.45, 0.25, 0.1, 0.2])
    language = rng.choice(TICKET_LANGUAGES, n, p=[0.4, 0.35, 0.15, 0.1] if shifted else [0.6, 0.15, 0.15, 0.1])
    account_age_days = np.clip(rng.gamma(1.5, 400, n), 0, 10_000).astype(int)
    seats = np.where(tier == "enterprise", rng.poisson(120, n) + 10, np.where(tier == "pro", rng.poisson(8, n) + 1, 1))
    tickets_last_30d = rng.poisson(1.2, n)
    attachments = rng.poisson(0.5, n)
    error_codes = rng.poisson((0.3 + 0.9 * (product == "api")) * (1.5 if shifted else 1.0))
    invoice_mentions = rng.poisson(0.35, n)
    body_words = np.clip(rng.lognormal(4.3, 0.6, n) * (1.5 if shifted else 1.0), 3, 5000).astype(int)
    subject_words = np.clip(rng.poisson(7, n) + 1, 1, 40)
    sentiment = np.round(np.clip(rng.normal(-0.1, 0.4, n), -1, 1), 3)

    logits = 2.0 * np.column_stack([
        -0.6 + 1.6 * invoice_mentions + 1.0 * (product == "payments") + 0.4 * (tier == "free"),
        -0.3 + 0.9 * error_codes + 0.9 * (product == "api") + 0.5 * attachments + 0.5 * np.log(body_words / 80),
        -0.1 + 1.5 * (account_age_days < 30) + 0.6 * (channel == "phone") + 0.3 * tickets_last_30d,
        -0.7 + 1.4 * (tier == "enterprise") + 0.008 * np.minimum(seats, 200) + 0.8 * (sentiment > 0.3),
        -0.5 + 1.8 * np.abs(sentiment) + 0.8 * (channel == "web_form") - 0.5 * attachments,
    ])
    proba = np.exp(logits - logits.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    queue = np.array(TICKET_QUEUES)[(rng.random((n, 1)) > proba.cumsum(axis=1)).sum(axis=1).clip(0, len(TICKET_QUEUES) - 1)]

    start = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
    created_ts = pd.to_datetime(start) + pd.to_timedelta(np.sort(rng.integers(0, 86_400, n)), unit="s")
    triage_delay = pd.to_timedelta(np.clip(0.04 + rng.exponential(0.8, n), 0.04, 5) * 86_400, unit="s")
    return pd.DataFrame(
        {
            "ticket_id": [f"T{day:%Y%m%d}-{i:05d}" for i in range(n)],
            "created_ts": created_ts,
            "channel": channel,
            "customer_tier": tier,
            "product": product,
            "language": language,
            "account_age_days": account_age_days,
            "seats": seats,
            "tickets_last_30d": tickets_last_30d,
            "attachments": attachments,
            "error_codes": error_codes,
            "invoice_mentions": invoice_mentions,
            "body_words": body_words,
            "subject_words": subject_words,
            "sentiment": sentiment,
            "queue": queue,
            "triaged_ts": (created_ts + triage_delay).floor("s"),
        }
    )


@dataclass(frozen=True)
class DemoDataset:
    """A simulated dataset: its day generator, calendar, scripted events and file layout."""

    generate: Callable[..., pd.DataFrame]
    start: date
    days: int
    events: dict[str, date]
    fmt: str
    pattern: str


#: Demo pipeline name -> its simulated dataset.
DATASETS: dict[str, DemoDataset] = {
    "claims_fraud": DemoDataset(generate_day, DEFAULT_START, DEFAULT_DAYS, DEFAULT_EVENTS, "csv", "dt={date}/claims.csv"),
    "ticket_triage": DemoDataset(generate_ticket_day, TICKET_START, TICKET_DAYS, TICKET_EVENTS, "parquet",
                                 "dt={date}/part-0.parquet"),
}


def write_history(
    root: Path,
    start: date | None = None,
    days: int | None = None,
    seed: int = 7,
    fmt: str | None = None,
    pattern: str | None = None,
    events: dict[str, date] | None = None,
    dataset: str = "claims_fraud",
) -> list[Path]:
    """Write ``days`` daily partitions of ``dataset`` (see :data:`DATASETS`) from ``start`` under
    ``root``; return the files written. Arguments left ``None`` take the dataset's own values
    (the claims defaults: 150 days from 2026-01-01, CSV, ``dt={date}/claims.csv``).

    Files are written atomically (temp file + rename) and rewritten identically on a re-run.
    ``events.json`` next to the partitions records the scripted event dates.
    """
    demo = DATASETS[dataset]
    start = demo.start if start is None else start
    days = demo.days if days is None else days
    fmt = fmt or demo.fmt
    pattern = pattern or demo.pattern
    events = demo.events if events is None else events
    root.mkdir(parents=True, exist_ok=True)
    written = []
    for offset in range(days):
        day = start + timedelta(days=offset)
        frame = demo.generate(day, seed=seed, events=events)
        path = partition_path(root, pattern, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if fmt == "csv":
            frame.to_csv(tmp, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
        else:
            frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        written.append(path)
    manifest = {
        "start": start.isoformat(),
        "days": days,
        "seed": seed,
        "events": {k: v.isoformat() for k, v in events.items()},
    }
    (root / "events.json").write_text(json.dumps(manifest, indent=2))
    return written
