"""A small client for Prometheus's HTTP API (instant and range queries), with errors that say
which server and which query failed."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

MAX_POINTS = 10_000  # Prometheus refuses more than 11,000 points per series in one range query


class PrometheusError(RuntimeError):
    """The server is unreachable or refused a query."""


@dataclass(frozen=True, slots=True)
class Series:
    labels: dict[str, str]
    points: list[tuple[float, float]]  # (unix time, value)


class PrometheusClient:
    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _get(self, path: str, params: dict[str, str]) -> dict:
        address = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(address, timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as error:
            try:
                body = json.loads(error.read())
            except ValueError:
                raise PrometheusError(f"{self.url}: HTTP {error.code} for {params.get('query', path)!r}") from None
        except (OSError, ValueError) as error:
            raise PrometheusError(f"cannot query Prometheus at {self.url}: {error}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"{self.url} refused {params.get('query', path)!r}: "
                                  f"{body.get('errorType', '')}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Series]:
        """Instant query: one point per series (a range selector gives its raw samples)."""
        params = {"query": expr} | ({} if at is None else {"time": f"{at:.3f}"})
        data = self._get("/api/v1/query", params)
        if data["resultType"] == "matrix":
            return [Series(item["metric"], [(float(t), float(v)) for t, v in item["values"]])
                    for item in data["result"]]
        if data["resultType"] == "vector":
            return [Series(item["metric"], [(float(item["value"][0]), float(item["value"][1]))])
                    for item in data["result"]]
        t, value = data["result"]
        return [Series({}, [(float(t), float(value))])]

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[Series]:
        """Range query, split into chunks of at most MAX_POINTS steps; series merged by labels."""
        merged: dict[tuple, Series] = {}
        chunk_start = start
        while chunk_start <= end:
            chunk_end = min(end, chunk_start + step_s * (MAX_POINTS - 1))
            data = self._get("/api/v1/query_range", {"query": expr, "start": f"{chunk_start:.3f}",
                                                     "end": f"{chunk_end:.3f}", "step": f"{step_s:g}"})
            for item in data["result"]:
                key = tuple(sorted(item["metric"].items()))
                series = merged.setdefault(key, Series(item["metric"], []))
                series.points.extend((float(t), float(v)) for t, v in item["values"])
            chunk_start = chunk_end + step_s
        return list(merged.values())

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self._get(f"/api/v1/label/{label}/values", {"match[]": match}))
