"""Synthetic provinces of N OPDs for benchmarks: same shape as policies/minimal.yaml."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def synthetic_policy_text(opd_count: int) -> str:
    """A valid policy with `opd_count` OPDs, each one /24, guarantees that fit the backbone."""
    down_capacity_mbps = 300 * opd_count // 2
    up_capacity_mbps = down_capacity_mbps // 2
    guaranteed_down_kbps = down_capacity_mbps * 1000 * 90 // 100 // opd_count
    guaranteed_up_kbps = up_capacity_mbps * 1000 * 90 // 100 // opd_count
    lines = [
        "version: 1",
        f"name: Synthetic province ({opd_count} OPDs)",
        f"backbone: {{download: {down_capacity_mbps}Mbps, upload: {up_capacity_mbps}Mbps}}",
        "classes:",
        "  - {id: 1, name: realtime, dscp: EF, priority: 0, share_percent: 20,"
        " match: [{protocol: udp, ports: ['3478-3481', '8801-8810']}]}",
        "  - {id: 2, name: public-service, dscp: AF31, priority: 1, share_percent: 30,"
        " match: [{protocol: tcp, ports: [443], prefixes: [203.0.113.0/24]}]}",
        "  - {id: 3, name: default, dscp: BE, priority: 2, share_percent: 40}",
        "  - {id: 4, name: bulk, dscp: CS1, priority: 3, share_percent: 10, match: [{protocol: tcp, ports: [21]}]}",
        "opds:",
    ]
    for opd_id in range(1, opd_count + 1):
        second, third = divmod(opd_id, 256)
        lines += [
            f"  - id: {opd_id}",
            f"    code: OPD{opd_id}",
            f"    name: Organisasi Perangkat Daerah {opd_id}",
            f"    prefixes: [10.{second}.{third}.0/24]",
            f"    download: {{guaranteed: {guaranteed_down_kbps}kbps, ceiling: {min(1000, down_capacity_mbps)}Mbps}}",
            f"    upload: {{guaranteed: {guaranteed_up_kbps}kbps, ceiling: {min(500, up_capacity_mbps)}Mbps}}",
        ]
    lines += [
        "public_wifi:",
        "  - {id: 8000, code: WIFI, name: Wi-Fi publik, prefixes: [100.80.0.0/16],"
        " floor: {download: 10Mbps, upload: 5Mbps}}",
    ]
    return "\n".join(lines) + "\n"
