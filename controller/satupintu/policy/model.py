"""The policy schema (pydantic v2). Field descriptions feed the JSON Schema and docs."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    field_validator,
)

from satupintu.policy.units import RATE_HELP, format_rate, parse_rate

DSCP_NAMES: dict[str, int] = {
    "BE": 0, "CS0": 0, "CS1": 8, "LE": 1, "CS2": 16, "CS3": 24, "CS4": 32, "CS5": 40, "CS6": 48, "CS7": 56,
    "AF11": 10, "AF12": 12, "AF13": 14, "AF21": 18, "AF22": 20, "AF23": 22,
    "AF31": 26, "AF32": 28, "AF33": 30, "AF41": 34, "AF42": 36, "AF43": 38,
    "EF": 46, "VA": 44,
}
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_OWNER_ID = 8000  # HTB minors are 16 bits: id * 8 + class id must fit
CODE_PATTERN = r"^[A-Z][A-Z0-9_-]{0,23}$"
NAME_PATTERN = r"^[a-z][a-z0-9-]{0,31}$"
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _rate(value: object) -> int:
    return parse_rate(value)


def _dscp(value: object) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a DSCP name (EF, AF41, CS1, BE, ...) or a number 0-63")
    if isinstance(value, int):
        if 0 <= value <= 63:
            return value
        raise ValueError(f"DSCP {value} is outside 0-63")
    if isinstance(value, str) and value.strip().upper() in DSCP_NAMES:
        return DSCP_NAMES[value.strip().upper()]
    raise ValueError(f"unknown DSCP {value!r}: use a name ({', '.join(sorted(DSCP_NAMES))}) or a number 0-63")


def _prefix(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected an address prefix like 10.1.7.0/24, got {value!r}")
    try:
        network = ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            fixed = ipaddress.ip_network(value.strip(), strict=False)
            raise ValueError(f"'{value}' has host bits set: did you mean {fixed}?") from None
        raise ValueError(f"'{value}' is not an IPv4/IPv6 prefix like 10.1.7.0/24") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(IPV4_MAPPED):
        raise ValueError(f"'{value}' is an IPv4-mapped IPv6 prefix: write the IPv4 prefix itself")
    return str(network)


def _display_name(value: str) -> str:
    """Free-text names reach dashboards and reports: no control, bidi or invisible characters
    (a right-to-left override can make one OPD's name read as another's)."""

    for character in value:
        if unicodedata.category(character) in ("Cc", "Cf", "Co", "Cs", "Zl", "Zp"):
            raise ValueError(f"contains the invisible or control character U+{ord(character):04X} "
                             f"{unicodedata.name(character, '(unnamed)')}; names are plain text")
    return value


def _ports(value: object) -> tuple[int, int]:
    text = str(value).strip() if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    match = re.fullmatch(r"(\d{1,5})(?:\s*-\s*(\d{1,5}))?", text or "")
    if not match:
        raise ValueError(f"expected a port (443) or a range ('3478-3481'), got {value!r}")
    low, high = int(match.group(1)), int(match.group(2) or match.group(1))
    if not (1 <= low <= high <= 65535):
        raise ValueError(f"port range {value!r} must satisfy 1 <= low <= high <= 65535")
    return (low, high)


def _clock(value: object) -> int:
    if not isinstance(value, str) or not re.fullmatch(r"\d{2}:\d{2}", value.strip()):
        raise ValueError(f"expected a time 'HH:MM' (quoted, 24-hour), got {value!r}")
    hours, minutes = (int(part) for part in value.split(":"))
    if hours == 24 and minutes == 0:
        return 24 * 60
    if hours > 23 or minutes > 59:
        raise ValueError(f"'{value}' is not a time of day (00:00-24:00)")
    return hours * 60 + minutes


Rate = Annotated[
    int,
    BeforeValidator(_rate),
    PlainSerializer(format_rate, return_type=str),
    WithJsonSchema({"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*[kKmMgGtT]?\s*(bps|bit/s|bits/s|bit|b/s)?\s*$",
                    "description": RATE_HELP, "examples": ["300Mbps", "1.5Gbit/s", "512kbps"]}),
]
Dscp = Annotated[
    int, BeforeValidator(_dscp),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0, "maximum": 63},
                              {"type": "string", "enum": sorted(DSCP_NAMES)}]}),
]
Prefix = Annotated[str, BeforeValidator(_prefix), WithJsonSchema({"type": "string", "examples": ["10.1.7.0/24"]})]
DisplayName = Annotated[str, AfterValidator(_display_name)]
PortRange = Annotated[
    tuple[int, int], BeforeValidator(_ports),
    PlainSerializer(lambda r: str(r[0]) if r[0] == r[1] else f"{r[0]}-{r[1]}"),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535},
                              {"type": "string", "pattern": r"^\d{1,5}(\s*-\s*\d{1,5})?$"}]}),
]
ClockMinutes = Annotated[
    int, BeforeValidator(_clock),
    PlainSerializer(lambda m: f"{m // 60:02d}:{m % 60:02d}"),
    WithJsonSchema({"type": "string", "pattern": r"^\d{2}:\d{2}$", "examples": ["07:00"]}),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class Capacity(Strict):
    """Shaped capacity of the shared uplink, per direction."""

    download: Rate = Field(description="Toward the OPDs (internet -> OPD).")
    upload: Rate = Field(description="Toward the internet (OPD -> internet).")


class Allocation(Strict):
    guaranteed: Rate = Field(description="Always available to this OPD when it has demand (HTB rate).")
    ceiling: Rate = Field(description="Most it may use by borrowing unused capacity (HTB ceil).")


class PartialAllocation(Strict):
    guaranteed: Rate | None = None
    ceiling: Rate | None = None


class HardCap(Strict):
    """Optional policing with OpenFlow meters at the OPD's port (drops above the rate)."""

    download: Rate | None = None
    upload: Rate | None = None
    burst_ms: int = Field(200, ge=10, le=5000, description="Meter burst as milliseconds of the rate.")


class MatchRule(Strict):
    """Traffic that belongs to a class. Ports and prefixes are those of the far (internet) side:
    destination when uploading, source when downloading."""

    protocol: Literal["tcp", "udp", "icmp", "any"] = "any"
    ports: list[PortRange] = Field(default_factory=list, max_length=64)
    prefixes: list[Prefix] = Field(default_factory=list, max_length=256)


class TrafficClass(Strict):
    id: int = Field(ge=1, le=7, strict=True, description="Stable class id (1-7); part of every HTB leaf id.")
    name: str = Field(pattern=NAME_PATTERN)
    dscp: Dscp = Field(description="DSCP written on this class's packets at the edge (trust boundary).")
    priority: int = Field(ge=0, le=6, description="HTB prio: 0 is served first; 7 is reserved for Wi-Fi.")
    share_percent: int = Field(25, ge=1, le=100,
                               description="Part of the OPD's guarantee reserved for this class (leaf rate).")
    match: list[MatchRule] = Field(default_factory=list, max_length=64)


class Opd(Strict):
    id: int = Field(ge=1, le=MAX_OWNER_ID, strict=True, description="Stable numeric id; never reuse one.")
    code: str = Field(pattern=CODE_PATTERN, description="Short ASCII code, e.g. DINKES.")
    name: DisplayName = Field(min_length=1, max_length=120)
    prefixes: list[Prefix] = Field(min_length=1, max_length=64)
    download: Allocation
    upload: Allocation
    hard_cap: HardCap | None = None


class DirectionRates(Strict):
    download: Rate
    upload: Rate


class WifiPool(Strict):
    """Free public Wi-Fi: only what the OPDs leave unused, above a small floor."""

    id: int = Field(ge=1, le=MAX_OWNER_ID, strict=True)
    code: str = Field(pattern=CODE_PATTERN)
    name: DisplayName = Field(min_length=1, max_length=120)
    prefixes: list[Prefix] = Field(min_length=1, max_length=64)
    floor: DirectionRates
    ceiling: DirectionRates | None = Field(None, description="Defaults to the backbone capacity.")


class OpdOverride(Strict):
    download: PartialAllocation | None = None
    upload: PartialAllocation | None = None


class Schedule(Strict):
    """A weekly window (local time of `timezone`) in which some OPDs get other allocations."""

    name: str = Field(pattern=NAME_PATTERN)
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)
    start: ClockMinutes
    end: ClockMinutes = Field(description="May be before start: the window then runs past midnight.")
    opds: dict[str, OpdOverride] = Field(description="OPD code -> allocations during the window.")

    @field_validator("days")
    @classmethod
    def _unique_days(cls, days: list[str]) -> list[str]:
        if len(set(days)) != len(days):
            raise ValueError("a day is listed twice")
        return days


class Policy(Strict):
    """A province's sharing policy: the file network engineers edit."""

    version: Literal[1] = Field(description="Policy format version.")
    name: DisplayName = Field(min_length=1, max_length=120)
    timezone: str = Field("Asia/Jakarta", description="IANA zone for schedules (WIB = Asia/Jakarta).")
    backbone: Capacity
    allow_oversubscription: bool = Field(False, description="Sum of guarantees may exceed capacity (warning).")
    inter_opd: Literal["allow", "deny"] = Field("deny", description="May OPDs reach each other directly?")
    unclassified: DirectionRates | None = Field(
        None, description="Guarantee for sources in no OPD or pool (default: 1% of capacity).")
    default_class: str = Field("default", description="Class of traffic that matches no rule.")
    classes: list[TrafficClass] = Field(min_length=1, max_length=7)
    opds: list[Opd] = Field(min_length=1, max_length=MAX_OWNER_ID)
    public_wifi: list[WifiPool] = Field(default_factory=list, max_length=64)
    schedules: list[Schedule] = Field(default_factory=list, max_length=64)
