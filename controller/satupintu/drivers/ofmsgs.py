"""Plan objects <-> os-ken OpenFlow 1.3 messages, and nothing else.

Kept apart from the os-ken app so that the conversion, which decides whether a
second reconcile sends nothing, is testable without a switch. Read-back goes through
`satupintu.reconcile.flows.canonical_*`, the same normalisation the diff applies to
the desired side, so a flow OVS stored from our flow-mod reads back equal to it.

`datapath` is anything with `.ofproto` and `.ofproto_parser` (an os-ken Datapath, or
a stand-in in tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp

from satupintu.compile.plan import Direction, FlowSpec, MeterSpec
from satupintu.reconcile.flows import DROP, canonical_actions, canonical_match

FLOW_COMMANDS = {"add": ofp.OFPFC_ADD, "modify": ofp.OFPFC_MODIFY_STRICT, "delete": ofp.OFPFC_DELETE_STRICT}
METER_COMMANDS = {"add": ofp.OFPMC_ADD, "modify": ofp.OFPMC_MODIFY, "delete": ofp.OFPMC_DELETE}
METER_FLAGS = ofp.OFPMF_KBPS | ofp.OFPMF_BURST | ofp.OFPMF_STATS
# A meter the switch reports in a form we never install (pktps, several bands, ...)
# reads back with this rate, so the diff sees it as different and rewrites it.
FOREIGN_RATE = -1


class UnsupportedAction(ValueError):
    """A plan action this driver cannot express (a compiler bug, caught before sending)."""


def ofp_match(datapath: Any, match: tuple[tuple[str, object], ...]) -> Any:
    return datapath.ofproto_parser.OFPMatch(**{name: (tuple(value) if isinstance(value, list) else value)
                                               for name, value in match})


def instructions(datapath: Any, actions: tuple[tuple, ...]) -> list[Any]:
    """Plan actions -> OF1.3 instructions: meter, one apply-actions (in the plan's order),
    write-metadata, goto. ("drop",) is no instruction at all."""
    parser, proto = datapath.ofproto_parser, datapath.ofproto
    meter: list[Any] = []
    apply: list[Any] = []
    tail: list[Any] = []
    goto: list[Any] = []
    for action in actions:
        kind = action[0]
        if kind == "output":
            port = int(action[1])
            max_len = proto.OFPCML_NO_BUFFER if port == proto.OFPP_CONTROLLER else 0
            apply.append(parser.OFPActionOutput(port, max_len))
        elif kind == "set_dscp":
            apply.append(parser.OFPActionSetField(ip_dscp=int(action[1])))
        elif kind == "meter":
            meter.append(parser.OFPInstructionMeter(int(action[1]), proto.OFPIT_METER))
        elif kind == "write_metadata":
            tail.append(parser.OFPInstructionWriteMetadata(int(action[1]), int(action[2])))
        elif kind == "goto":
            goto.append(parser.OFPInstructionGotoTable(int(action[1])))
        elif tuple(action) != DROP:
            raise UnsupportedAction(f"unsupported plan action {action!r}")
    if apply:
        meter.append(parser.OFPInstructionActions(proto.OFPIT_APPLY_ACTIONS, apply))
    return meter + tail + goto


def flow_mod(datapath: Any, flow: FlowSpec, command: str) -> Any:
    """command: "add" (also an atomic replace that keeps counters, used when only the
    cookie changes: OF1.3 modify cannot change a cookie), "modify" (strict) or
    "delete" (strict)."""
    parser, proto = datapath.ofproto_parser, datapath.ofproto
    return parser.OFPFlowMod(
        datapath, cookie=flow.cookie, cookie_mask=0, table_id=flow.table, command=FLOW_COMMANDS[command],
        idle_timeout=0, hard_timeout=0, priority=flow.priority, buffer_id=proto.OFP_NO_BUFFER,
        out_port=proto.OFPP_ANY, out_group=proto.OFPG_ANY, flags=0, match=ofp_match(datapath, flow.match),
        instructions=[] if command == "delete" else instructions(datapath, flow.actions))


def meter_mod(datapath: Any, meter: MeterSpec, command: str) -> Any:
    """One drop band at rate_kbps with an explicit burst (kbits): policing hurts TCP
    unless the burst is large, so it is never left to the switch's default."""
    parser = datapath.ofproto_parser
    bands = [] if command == "delete" else [parser.OFPMeterBandDrop(rate=meter.rate_kbps,
                                                                    burst_size=meter.burst_kbits)]
    return parser.OFPMeterMod(datapath, command=METER_COMMANDS[command],
                              flags=0 if command == "delete" else METER_FLAGS, meter_id=meter.meter_id, bands=bands)


def barrier(datapath: Any) -> Any:
    return datapath.ofproto_parser.OFPBarrierRequest(datapath)


def flow_stats_request(datapath: Any, cookie: int = 0, cookie_mask: int = 0) -> Any:
    """Every table, any out port/group; cookie_mask 0 = every flow, ours or not."""
    parser, proto = datapath.ofproto_parser, datapath.ofproto
    return parser.OFPFlowStatsRequest(datapath, 0, proto.OFPTT_ALL, proto.OFPP_ANY, proto.OFPG_ANY,
                                      cookie, cookie_mask, parser.OFPMatch())


def meter_config_request(datapath: Any) -> Any:
    return datapath.ofproto_parser.OFPMeterConfigStatsRequest(datapath, 0, datapath.ofproto.OFPM_ALL)


def meter_stats_request(datapath: Any) -> Any:
    return datapath.ofproto_parser.OFPMeterStatsRequest(datapath, 0, datapath.ofproto.OFPM_ALL)


# ---------------------------------------------------------------- switch -> plan


def match_from_ofp(match: Any) -> tuple[tuple[str, object], ...]:
    return canonical_match((name, tuple(value) if isinstance(value, list) else value) for name, value in match.items())


def _apply_actions(actions: list[Any]) -> list[tuple]:
    out: list[tuple] = []
    for action in actions:
        if action.cls_action_type == ofp.OFPAT_OUTPUT:
            out.append(("output", action.port))
        elif action.cls_action_type == ofp.OFPAT_SET_FIELD and getattr(action, "key", None) == "ip_dscp":
            out.append(("set_dscp", action.value))
        else:  # anything we never install: reads back different, so it gets rewritten
            out.append(("unknown", str(action)))
    return out


def actions_from_instructions(items: list[Any]) -> tuple[tuple, ...]:
    out: list[tuple] = []
    for item in items:
        kind = item.type
        if kind == ofp.OFPIT_METER:
            out.append(("meter", item.meter_id))
        elif kind == ofp.OFPIT_APPLY_ACTIONS:
            out.extend(_apply_actions(item.actions))
        elif kind == ofp.OFPIT_WRITE_METADATA:
            out.append(("write_metadata", item.metadata, item.metadata_mask))
        elif kind == ofp.OFPIT_GOTO_TABLE:
            out.append(("goto", item.table_id))
        else:
            out.append(("unknown", str(item)))
    return canonical_actions(out)


def flow_from_stats(stats: Any) -> FlowSpec:
    return FlowSpec(stats.table_id, stats.priority, match_from_ofp(stats.match),
                    actions_from_instructions(stats.instructions), stats.cookie)


def meter_from_config(config: Any) -> MeterSpec:
    """Owner and direction come from the id (meter_id = 2 * owner + download)."""
    meter_id = config.meter_id
    direction = Direction.DOWNLOAD if meter_id % 2 else Direction.UPLOAD
    bands = list(config.bands)
    if (len(bands) != 1 or bands[0].type != ofp.OFPMBT_DROP or not config.flags & ofp.OFPMF_KBPS
            or not config.flags & ofp.OFPMF_BURST):
        return MeterSpec(meter_id, FOREIGN_RATE, FOREIGN_RATE, meter_id // 2, direction)
    return MeterSpec(meter_id, bands[0].rate, bands[0].burst_size, meter_id // 2, direction)


@dataclass(frozen=True, slots=True)
class FlowCounter:
    flow: FlowSpec
    packets: int
    bytes: int
    duration_s: float


@dataclass(frozen=True, slots=True)
class MeterCounter:
    meter_id: int
    flow_count: int
    packets_in: int
    bytes_in: int
    packets_dropped: int  # over the drop band
    bytes_dropped: int
    duration_s: float


def flow_counter(stats: Any) -> FlowCounter:
    return FlowCounter(flow_from_stats(stats), stats.packet_count, stats.byte_count,
                       stats.duration_sec + stats.duration_nsec / 1e9)


def meter_counter(stats: Any) -> MeterCounter:
    bands = list(stats.band_stats)
    return MeterCounter(stats.meter_id, stats.flow_count, stats.packet_in_count, stats.byte_in_count,
                        sum(band.packet_band_count for band in bands), sum(band.byte_band_count for band in bands),
                        stats.duration_sec + stats.duration_nsec / 1e9)
