"""The `satupintu status --once --json` document: stable keys for scripts (pure)."""

from __future__ import annotations

from satupintu.status.rates import StatusReport, sort_owners

JSON_DOC = """JSON document of --once --json (keys are stable; rates in bit/s, utilisation as a fraction):
  {"version": 1, "metrics_url": str, "interval_s": float, "sort": str,
   "policy": {"generation", "sha256", "file", "window", "scale", "reloads_ok", "reloads_failed",
              "last_good_reload_unix"},
   "switches": [{"name", "connected", "flows", "meters", "openflow_errors"}],
   "uplinks": [{"direction", "port", "rate_bps", "capacity_bps", "utilisation", "drops"}],
   "opds": [{"code", "kind" (opd|wifi|unclassified), "direction" (download|upload), "rate_bps",
             "guaranteed_bps", "ceiling_bps", "guarantee_utilisation", "ceiling_utilisation",
             "drops" (packets in the interval), "drops_total"}]}
  A value that is unknown (e.g. a series present in one scrape only) is null."""


def report_json(report: StatusReport, metrics_url: str, sort: str) -> dict:
    policy = report.latest.policy
    return {
        "version": 1,
        "metrics_url": metrics_url,
        "interval_s": round(report.interval_s, 6),
        "sort": sort,
        "policy": {"generation": policy.generation, "sha256": policy.sha256, "file": policy.file,
                   "window": policy.window, "scale": policy.scale, "reloads_ok": policy.reloads_ok,
                   "reloads_failed": policy.reloads_failed, "last_good_reload_unix": policy.last_good_reload_unix},
        "switches": [{"name": switch.name, "connected": switch.connected, "flows": switch.flows,
                      "meters": switch.meters, "openflow_errors": switch.openflow_errors}
                     for _, switch in sorted(report.latest.switches.items())],
        "uplinks": [{"direction": row.direction, "port": row.port, "rate_bps": row.rate_bps,
                     "capacity_bps": row.capacity_bps, "utilisation": row.utilisation, "drops": row.drops}
                    for row in report.uplinks],
        "opds": [{"code": row.code, "kind": row.kind, "direction": row.direction, "rate_bps": row.rate_bps,
                  "guaranteed_bps": row.guaranteed_bps, "ceiling_bps": row.ceiling_bps,
                  "guarantee_utilisation": row.guarantee_utilisation,
                  "ceiling_utilisation": row.ceiling_utilisation, "drops": row.drops,
                  "drops_total": row.drops_total}
                 for row in sort_owners(report.owners, sort)],
    }
