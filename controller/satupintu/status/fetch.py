"""One scrape of the daemon's /metrics over HTTP (the status view needs no privileges)."""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request

from satupintu.status.exposition import ExpositionError, Snapshot, parse_snapshot

DEFAULT_METRICS_URL = "http://127.0.0.1:9733/metrics"


class ScrapeError(RuntimeError):
    """The endpoint could not be read or is not a Satu Pintu exporter; the message says which."""


def scrape(url: str, timeout_s: float = 5.0) -> Snapshot:
    started_s = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            body = response.read().decode("utf-8", errors="replace")
    except urllib.error.HTTPError as error:
        raise ScrapeError(f"{url}: HTTP {error.code} {error.reason}") from error
    except urllib.error.URLError as error:
        raise ScrapeError(f"cannot reach {url}: {error.reason} (is `satupintu run` running, with "
                          f"--metrics-listen on that address?)") from error
    except (OSError, http.client.HTTPException) as error:  # timeouts, resets, garbage replies
        raise ScrapeError(f"cannot read {url}: {error or type(error).__name__}") from error
    except ValueError as error:  # malformed URL
        raise ScrapeError(f"bad --metrics-url {url!r}: {error}") from error
    taken_s = (started_s + time.monotonic()) / 2  # the exporter reads the kernel while it answers
    try:
        snapshot = parse_snapshot(body, taken_s)
    except ExpositionError as error:
        raise ScrapeError(f"{url}: {error}") from error
    if snapshot.policy.generation is None and not snapshot.owners:
        raise ScrapeError(f"{url} answers, but with no satupintu_* metrics: is it the Satu Pintu exporter?")
    return snapshot
