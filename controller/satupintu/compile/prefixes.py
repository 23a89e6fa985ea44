"""Cached prefix parsing: the compiler looks at each prefix several times per switch."""

from __future__ import annotations

import ipaddress
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=65536)
def network(prefix: str) -> Network:
    return ipaddress.ip_network(prefix)


@lru_cache(maxsize=65536)
def match_value(prefix: str) -> object:
    """os-ken match value: plain address for host routes, (address, netmask) otherwise."""
    net = network(prefix)
    if net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return (str(net.network_address), str(net.netmask))
