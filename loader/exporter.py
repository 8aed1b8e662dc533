"""`xdpnn exporter`: the counters of attached datapaths as Prometheus metrics.

A custom collector reads the pinned maps when Prometheus scrapes, so the
figures are as fresh as the scrape and nothing polls in between.  The HTTP
server runs in the calling thread and stops on SIGINT or SIGTERM.
"""
from __future__ import annotations

import signal
import socket
import sys
from datetime import datetime
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from xdpnn.loader import datapath
from xdpnn.loader.errors import MissingFeatureError, UsageError, XdpnnError

DEFAULT_LISTEN = "127.0.0.1:9797"
LABELS = ["iface", "netns", "ingress"]  # the datapath, and where the packets arrived


def import_prometheus():
    try:
        import prometheus_client
        from prometheus_client import core
    except ImportError:
        raise MissingFeatureError(
            "the prometheus_client module is missing: install Debian's "
            "python3-prometheus-client, or pip install 'xdpnn[exporter]'") from None
    return prometheus_client, core


class Collector:
    """Every scrape: the datapaths in `wanted` ((iface, netns) pairs), or all."""

    def __init__(self, wanted: list[tuple[str, str | None]] | None):
        self.wanted = wanted

    def collect(self):
        _, core = import_prometheus()
        classes = core.CounterMetricFamily(
            "xdpnn_class_packets", "Classified packets per class", labels=LABELS + ["class"])
        inputs = core.CounterMetricFamily(
            "xdpnn_input_packets", "Packets per input result (why a packet was or was not "
            "classified)", labels=LABELS + ["result"])
        verdicts = core.CounterMetricFamily(
            "xdpnn_verdict_packets", "Packets per XDP action returned",
            labels=LABELS + ["verdict"])
        model = core.InfoMetricFamily(
            "xdpnn_model", "The model a datapath runs",
            labels=["iface", "netns", "shape", "sha256", "model_map_id", "input", "path",
                    "attached_at"])
        flow_events = core.CounterMetricFamily(
            "xdpnn_flow_events", "Flow mode: flow-table events (new, expired, final, cached)",
            labels=["iface", "netns", "event"])
        flows = core.GaugeMetricFamily(
            "xdpnn_flows", "Flow mode: flows by their latest class", labels=["iface", "netns",
                                                                           "class"])
        table = core.GaugeMetricFamily(
            "xdpnn_flow_table_entries", "Flow mode: entries in the flow table, by state",
            labels=["iface", "netns", "state"])
        evicted = core.CounterMetricFamily(
            "xdpnn_flows_evicted", "Flow mode: flows the full table evicted (new - entries)",
            labels=["iface", "netns"])
        attached = core.GaugeMetricFamily(
            "xdpnn_attach_time_seconds", "When the datapath was attached (Unix time)",
            labels=["iface", "netns"])
        serve = {name: core.CounterMetricFamily(f"xdpnn_serve_{name}", text,
                                                labels=["iface", "netns", "model"] + more)
                 for name, text, more in (
                     ("requests", "Serving: datagrams to the port read as requests, per "
                                  "model id (attach --serve)", []),
                     ("replies", "Serving: replies sent (ok and error replies)", []),
                     ("status_requests", "Serving: requests per status, dropped ones "
                                         "included", ["status"]))}
        for rec in datapath.status():
            key = (rec["iface"], rec.get("netns"))
            if "model" not in rec or (self.wanted is not None and key not in self.wanted):
                continue  # broken pins have no counters to read
            try:
                s = datapath.stats(*key)
            except (OSError, XdpnnError):
                continue  # detached between the listing and the read
            ns = key[1] or ""
            for ingress, c in s["ingress"].items():
                at = [key[0], ns, ingress]
                for name, v in c["classes"].items():
                    classes.add_metric(at + [name], v)
                for name, v in c["input"].items():
                    inputs.add_metric(at + [name], v)
                for name, v in c["verdict"].items():
                    verdicts.add_metric(at + [name], v)
            # nn_serve entries: "model N", and "other" for higher ids and for
            # requests whose model id was not read.
            for entry, c in s.get("serve", {}).items():
                at = [key[0], ns, entry.removeprefix("model ")]
                serve["requests"].add_metric(at, c["requests"])
                serve["replies"].add_metric(at, c["replies"])
                for name, v in c["status"].items():
                    serve["status_requests"].add_metric(at + [name], v)
            for name, v in s.get("flows", {}).get("events", {}).items():
                flow_events.add_metric([key[0], ns, name], v)
            for name, v in s.get("flows", {}).get("classes", {}).items():
                flows.add_metric([key[0], ns, name], v)
            if "table" in s.get("flows", {}):
                t = s["flows"]["table"]
                for name, v in t["states"].items():
                    table.add_metric([key[0], ns, name], v)
                evicted.add_metric([key[0], ns], t["evicted"])
            m = rec["model"]
            model.add_metric([key[0], ns], {
                "shape": m["shape"], "sha256": m["sha256"],
                "model_map_id": str(rec["model_map_id"]), "input": rec["input"],
                "path": m["path"], "attached_at": rec["attached_at"]})
            attached.add_metric([key[0], ns], datetime.strptime(
                rec["attached_at"], "%Y-%m-%dT%H:%M:%S%z").timestamp())
        yield from (classes, inputs, verdicts, flow_events, flows, table, evicted, model, attached,
                    *serve.values())


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass  # a line per scrape would drown the log


class _Stop(BaseException):
    """Raised by the signal handler; BaseException, so no request handler swallows it."""


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text}: expected ADDR:PORT, like {DEFAULT_LISTEN}")
    return host, int(port)


def serve(registry, host: str, port: int, on_ready=None) -> str:
    """Serves /metrics until SIGINT or SIGTERM; returns the signal's name."""
    prometheus_client, _ = import_prometheus()
    server_class = WSGIServer
    if ":" in host:
        server_class = type("WSGIServer6", (WSGIServer,), {"address_family": socket.AF_INET6})
    try:
        server = make_server(host, port, prometheus_client.make_wsgi_app(registry),
                             server_class=server_class, handler_class=_QuietHandler)
    except OSError as e:
        raise XdpnnError(f"listen on {host}:{port}: {e.strerror or e}") from None

    def stop(signum, frame):
        raise _Stop(signal.Signals(signum).name)
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if on_ready:
            on_ready()
        server.serve_forever()
    except _Stop as s:
        return str(s)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        server.server_close()


def command(args) -> int:
    prometheus_client, _ = import_prometheus()
    host, port = parse_listen(args.listen or DEFAULT_LISTEN)
    wanted = [(i, args.netns) for i in args.iface] or None
    for iface, ns in wanted or []:
        datapath.stats(iface, ns)  # not attached: say so now, not at the first scrape
    registry = prometheus_client.CollectorRegistry()
    registry.register(Collector(wanted))
    what = ", ".join(i for i, _ in wanted) if wanted else "every attached datapath"
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"

    def ready():
        print(f"exporting {what} at {url}", flush=True)
    sig = serve(registry, host, port, on_ready=ready)
    print(f"stopped by {sig}", file=sys.stderr)
    return 0
