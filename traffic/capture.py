"""`xdpnn capture`: labeled pcaps of real servers and clients.

Two namespaces of the command's own, joined by one veth pair:

    <prefix>-cli [c0 198.18.0.1/24] <-> [s0 198.18.0.2/24] <prefix>-srv

Real servers (dnsmasq, chronyd, nginx, sshd, gtlsserver, iperf3) listen on
198.18.0.2 in the server namespace only; real clients (dig, chronyd -Q,
curl, wget, openssl s_client, ssh, scp, gtlsclient, iperf3, ping) run in
the client namespace with options, sizes and counts drawn from the seed.
A packet socket on c0 records both directions.  A frame's label is the
class of the server port it goes to or comes from (SERVICES); ICMP is
`other`; frames of no service (ARP, stray ports) are left out and counted.

Offloads are off on both veth ends (no TSO/GSO/GRO, software checksums), so
every recorded frame is one the wire would carry: at most MTU-sized, with
valid checksums.  Everything the command starts is ended by its process
group id, and the namespaces are deleted, on every exit, Ctrl-C included.
"""
from __future__ import annotations

import os
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2 import IPRoute

from xdpnn.loader.errors import MissingFeatureError, UsageError, XdpnnError
from xdpnn.loader.netns import netns
from xdpnn.traffic.topology import Topology

CLIENT_IP, SERVER_IP = "198.18.0.1", "198.18.0.2"
CLASSES = ("dns", "ntp", "http", "tls", "ssh", "quic", "other")
IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP = 1, 6, 17
# (IP protocol, server port) -> class: the labels.
SERVICES = {(IPPROTO_UDP, 53): "dns", (IPPROTO_TCP, 53): "dns",
            (IPPROTO_UDP, 123): "ntp",
            (IPPROTO_TCP, 80): "http", (IPPROTO_TCP, 8080): "http",
            (IPPROTO_TCP, 443): "tls", (IPPROTO_TCP, 8443): "tls",
            (IPPROTO_TCP, 22): "ssh", (IPPROTO_TCP, 2222): "ssh",
            (IPPROTO_UDP, 443): "quic", (IPPROTO_UDP, 4433): "quic",
            (IPPROTO_TCP, 5201): "other", (IPPROTO_UDP, 5201): "other"}
SSHD_RUN = Path("/run/sshd")  # sshd refuses to start without it
# Programs each class runs, and the Debian package that has each.
TOOLS = {"dns": {"dnsmasq": "dnsmasq-base", "dig": "dnsutils"},
         "ntp": {"chronyd": "chrony"},
         "http": {"nginx": "nginx-light", "curl": "curl", "wget": "wget"},
         "tls": {"nginx": "nginx-light", "curl": "curl", "openssl": "openssl"},
         "ssh": {"sshd": "openssh-server", "ssh": "openssh-client",
                 "scp": "openssh-client", "ssh-keygen": "openssh-client"},
         "quic": {"gtlsserver": "ngtcp2-server", "gtlsclient": "ngtcp2-client"},
         "other": {"iperf3": "iperf3", "ping": "iputils-ping"}}
BASE_TOOLS = {"ip": "iproute2", "ethtool": "ethtool", "openssl": "openssl"}
JOB_TIMEOUT = 20.0       # seconds any one client command may run
SNAPLEN = 65535
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
PACKET_STATISTICS = 6
SOL_PACKET = 263


def flow_key(frame: bytes):
    """(protocol, (addr, port), (addr, port)) of an IPv4 frame, the two ends
    sorted, so both directions are one flow; None for other frames.  ICMP
    flows are keyed by address pair alone (port 0)."""
    if len(frame) < 34 or frame[12:14] != b"\x08\x00" or frame[14] >> 4 != 4:
        return None
    ihl = (frame[14] & 0xF) * 4
    proto = frame[23]
    src, dst = frame[26:30], frame[30:34]
    sport = dport = 0
    if proto in (IPPROTO_TCP, IPPROTO_UDP) and len(frame) >= 14 + ihl + 4:
        sport, dport = struct.unpack_from("!HH", frame, 14 + ihl)
    a, b = sorted(((src, sport), (dst, dport)))
    return proto, a, b


def label(frame: bytes) -> str | None:
    """The class of a frame by its server end (SERVICES), or None."""
    key = flow_key(frame)
    if key is None:
        return None
    proto, a, b = key
    if proto == IPPROTO_ICMP:
        return "other"
    server = socket.inet_aton(SERVER_IP)
    for addr, port in (a, b):
        if addr == server and (proto, port) in SERVICES:
            return SERVICES[(proto, port)]
    return None


@dataclass
class Job:
    cls: str
    argv: list[str]
    stdin: bytes | None = None


@dataclass
class Result:
    out: str
    seed: int
    classes: dict = field(default_factory=dict)   # class -> {frames, flows, jobs, failed}
    unlabeled: int = 0
    dropped: int = 0          # frames the packet socket lost (its statistics)
    seconds: float = 0.0
    notes: list = field(default_factory=list)


def check_tools(classes) -> None:
    """Every program the chosen classes run, or one error naming the missing ones."""
    need = dict(BASE_TOOLS)
    for c in classes:
        need.update(TOOLS[c])
    missing = sorted(f"{t} ({p})" for t, p in need.items()
                     if not shutil.which(t, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin"))
    if missing:
        raise MissingFeatureError(f"capture: missing programs {', '.join(missing)}: install "
                                  "them (scripts/setup.sh does)")


def which(tool: str) -> str:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") or tool


class Sniffer:
    """A packet socket on ns/iface, read by a thread: (timestamp, frame) pairs."""

    def __init__(self, ns: str, iface: str, max_frames: int):
        with netns(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                      socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        with netns(ns):
            self.sock.bind((iface, 0))
        self.max_frames = max_frames
        self.frames: list[tuple[float, bytes]] = []
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set() or select.select([self.sock], [], [], 0)[0]:
            if not select.select([self.sock], [], [], 0.1)[0]:
                continue
            data, anc, _, _ = self.sock.recvmsg(SNAPLEN, 64)
            ts = time.time()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = struct.unpack("qq", value[:16])
                    ts = sec + nsec / 1e9
            if len(self.frames) < self.max_frames:
                self.frames.append((ts, data))

    def stop(self) -> list[tuple[float, bytes]]:
        time.sleep(0.2)  # the last replies
        self._stop.set()
        self._thread.join(5)
        stats = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        self.dropped = struct.unpack("II", stats)[1]
        self.sock.close()
        return self.frames


class Capture:
    """The namespaces, servers and clients of one capture run."""

    def __init__(self, out: Path, seed: int, seconds: float, classes, prefix: str,
                 flows: int, max_frames: int, progress=None):
        self.out, self.seed, self.seconds = out, seed, seconds
        self.classes, self.flows, self.max_frames = list(classes), flows, max_frames
        self.rng = random.Random(seed)
        self.topo = Topology(prefix)
        self.cli, self.srv = f"{prefix}-cli", f"{prefix}-srv"
        self.procs: list[subprocess.Popen] = []
        self.tmp: Path | None = None
        self.progress = progress or (lambda text: None)

    # --- set-up and tear-down ------------------------------------------------

    def run(self) -> Result:
        check_tools(self.classes)
        # The output folder first: a capture that cannot be written is not run.
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"capture: --out {self.out}: not a directory")
        self.out.mkdir(parents=True, exist_ok=True)
        if not os.access(self.out, os.W_OK):
            raise UsageError(f"capture: --out {self.out}: not writable")
        started = time.monotonic()
        res = Result(str(self.out), self.seed)
        # Ctrl-C and SIGTERM unwind through the finally below (the CLI turns
        # SIGTERM into KeyboardInterrupt).
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix="xdpnn-capture-"))
            self._network()
            self._files()
            sniffer = Sniffer(self.cli, "c0", self.max_frames)
            try:
                self._servers()
                self._clients(res, started)
            finally:
                frames = sniffer.stop()
                res.dropped = sniffer.dropped
        finally:
            self._stop_servers()
            self.topo.destroy()
            if self.tmp:
                shutil.rmtree(self.tmp, ignore_errors=True)
        self._write(frames, res)
        res.seconds = round(time.monotonic() - started, 1)
        return res

    def _network(self) -> None:
        self.topo.add_namespace(self.cli)
        self.topo.add_namespace(self.srv)
        self.topo.add_veth("c0", self.cli, "s0", self.srv)
        for ns, dev, addr in ((self.cli, "c0", CLIENT_IP), (self.srv, "s0", SERVER_IP)):
            with netns(ns), IPRoute() as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
                ipr.addr("add", index=ipr.link_lookup(ifname=dev)[0], address=addr, prefixlen=24)
            # Frames as a wire carries them: segmented, with their checksums.
            self._check(["ethtool", "-K", dev, "tx", "off", "tso", "off", "gso", "off",
                         "gro", "off"], ns, "turn offloads off")

    def _check(self, argv, ns, what) -> None:
        r = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                           timeout=JOB_TIMEOUT)
        if r.returncode:
            raise XdpnnError(f"capture: {what} in {ns}: {argv[0]} exited {r.returncode}: "
                             f"{(r.stderr or r.stdout).strip()[:200]}")

    def _start(self, argv: list[str], what: str) -> subprocess.Popen:
        """A server in the server namespace, in a process group of its own."""
        log = open(self.tmp / f"{what}.log", "wb")
        p = subprocess.Popen(["ip", "netns", "exec", self.srv, *argv], stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        p.what = what
        self.procs.append(p)
        return p

    def _stop_servers(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 3
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # Workers and per-connection children are in the server's group.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()
        if getattr(self, "made_sshd_run", False):
            try:
                SSHD_RUN.rmdir()
            except OSError:
                pass  # something else put files there since
            self.made_sshd_run = False

    # --- files the servers and clients read ---------------------------------

    def _files(self) -> None:
        t, rng = self.tmp, self.rng
        (t / "www").mkdir()
        self.sizes = sorted({rng.choice((0, 1, 2, 5, 20)) * 1000 + rng.randrange(1, 999)
                             for _ in range(6)} | {rng.randrange(100_000, 400_000)})
        for s in self.sizes:
            (t / "www" / f"f{s}.bin").write_bytes(os.urandom(s))
        (t / "www" / "index.html").write_text("<html><body>" + "xdpnn " * 200 + "</body></html>")
        (t / "post.bin").write_bytes(os.urandom(rng.randrange(200, 60_000)))
        run = lambda argv: subprocess.run(argv, check=True, capture_output=True,  # noqa: E731
                                          timeout=JOB_TIMEOUT)
        need = set().union(*(TOOLS[c] for c in self.classes))
        if need & {"nginx", "gtlsserver"}:
            run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", "/CN=xdpnn.test", "-keyout", t / "rsa.key", "-out", t / "rsa.crt"])
            run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                 "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                 "/CN=xdpnn.test", "-keyout", t / "ec.key", "-out", t / "ec.crt"])
        if "sshd" in need:
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", t / "host_ed25519"])
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", t / "client_key"])
            shutil.copy(t / "client_key.pub", t / "authorized_keys")

    # --- servers ----------------------------------------------------------------

    def _servers(self) -> None:
        t = self.tmp
        need = set().union(*(TOOLS[c] for c in self.classes))
        tcp_ports = []
        if "dnsmasq" in need:
            records = [f"--host-record=h{i}.lab.test,198.18.{(i >> 8) + 10}.{i & 255}"
                       for i in range(64)]
            records += [f"--txt-record=t{i}.lab.test,{'x' * (20 * i + 5)}" for i in range(12)]
            self._start([which("dnsmasq"), "--no-daemon", "--conf-file=/dev/null",
                         "--no-resolv", "--no-hosts", "--bind-interfaces",
                         f"--listen-address={SERVER_IP}", "--except-interface=lo", "--port=53",
                         "--user=root", "--group=root", "--pid-file=", "--log-facility=-",
                         "--mx-host=lab.test,h1.lab.test,10", "--domain=lab.test",
                         "--local=/lab.test/", *records], "dnsmasq")
            tcp_ports.append(53)
        if "chronyd" in need:
            (t / "chrony-server.conf").write_text(
                f"local stratum 8\nallow 198.18.0.0/15\nbindaddress {SERVER_IP}\nport 123\n"
                f"cmdport 0\nbindcmdaddress /\npidfile {t}/chrony-server.pid\n")
            self._start([which("chronyd"), "-d", "-x", "-u", "root", "-f",
                         str(t / "chrony-server.conf")], "chronyd")
        if "nginx" in need:
            (t / "nginx").mkdir()
            (t / "nginx.conf").write_text(NGINX_CONF.format(t=t, ip=SERVER_IP))
            self._start([which("nginx"), "-p", str(t / "nginx"), "-c", str(t / "nginx.conf"),
                         "-e", "stderr", "-g", "daemon off;"], "nginx")
            tcp_ports += [80, 8080, 443, 8443]
        if "sshd" in need:
            # sshd's privilege separation folder; removed at the end if made here.
            if not SSHD_RUN.exists():
                SSHD_RUN.mkdir(mode=0o755)
                self.made_sshd_run = True
            for port in (22, 2222):
                self._start([which("sshd"), "-D", "-e", "-f", "/dev/null",
                             "-o", f"ListenAddress={SERVER_IP}:{port}",
                             "-o", f"HostKey={t}/host_ed25519", "-o", "PidFile=none",
                             "-o", f"AuthorizedKeysFile={t}/authorized_keys",
                             "-o", "StrictModes=no", "-o", "UsePAM=no",
                             "-o", "PermitRootLogin=prohibit-password",
                             "-o", "Subsystem=sftp internal-sftp"], f"sshd-{port}")
            tcp_ports += [22, 2222]
        if "gtlsserver" in need:
            for port, key in ((443, "rsa"), (4433, "ec")):
                self._start([which("gtlsserver"), "-q", "-d", str(t / "www"), SERVER_IP,
                             str(port), str(t / f"{key}.key"), str(t / f"{key}.crt")],
                            f"gtlsserver-{port}")
        if "iperf3" in need:
            self._start([which("iperf3"), "-s", "-B", SERVER_IP, "-p", "5201"], "iperf3")
            tcp_ports.append(5201)
        self._wait_listening(tcp_ports)

    def _wait_listening(self, ports) -> None:
        deadline = time.monotonic() + 10
        for port in ports:
            while True:
                for p in self.procs:
                    if p.poll() is not None:
                        log = self.tmp / f"{p.what}.log"
                        text = log.read_text(errors="replace").strip() if log.exists() else ""
                        raise XdpnnError(f"capture: server {p.what} exited {p.returncode}: "
                                         f"{text[-300:]}")
                with netns(self.cli), socket.socket() as s:
                    s.settimeout(0.5)
                    if s.connect_ex((SERVER_IP, port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise XdpnnError(f"capture: no server listening on {SERVER_IP}:{port} "
                                     "after 10 s")
                time.sleep(0.1)
        time.sleep(0.5)  # UDP servers (chronyd, gtlsserver) have had as long

    # --- clients -----------------------------------------------------------------

    def _clients(self, res: Result, started: float) -> None:
        """Round robin over the classes, one job each, until each has run its
        flows or the time is up."""
        queues = {c: [self._job(c) for _ in range(self.flows)] for c in self.classes}
        for c in self.classes:
            res.classes[c] = {"jobs": 0, "failed": 0}
        deadline = started + self.seconds
        while any(queues.values()) and time.monotonic() < deadline:
            for c in self.classes:
                if not queues[c] or time.monotonic() >= deadline:
                    continue
                job = queues[c].pop(0)
                timeout = max(1.0, min(JOB_TIMEOUT, deadline - time.monotonic() + 2))
                t0 = time.monotonic()
                code, output = self._client(job, timeout)
                ok = code == 0
                why = (f"killed after {timeout:.0f} s" if code is None else
                       f"exited {code}: " + output.decode(errors="replace").strip()[-160:])
                if not ok and len(res.notes) < 10:
                    res.notes.append(f"{c}: {Path(job.argv[0]).name} {why}")
                res.classes[c]["jobs"] += 1
                res.classes[c]["failed"] += not ok
                self.progress(f"{c:<6} {'ok ' if ok else 'err'} {time.monotonic() - t0:5.1f} s  "
                              f"{' '.join(job.argv)[:90]}")

    def _client(self, job: Job, timeout: float):
        """(exit code or None if it ran out of time, its output); the client and
        whatever it started (scp's ssh) are ended by their process group on a
        timeout, Ctrl-C or SIGTERM."""
        p = subprocess.Popen(["ip", "netns", "exec", self.cli, *job.argv],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = p.communicate(job.stdin, timeout=timeout)
            return p.returncode, out
        except BaseException as e:
            # Not reaped yet, so its process group id is still its own.
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
            if isinstance(e, subprocess.TimeoutExpired):
                return None, b""
            raise
        finally:
            for f in (p.stdin, p.stdout):
                if f:
                    f.close()

    def _job(self, cls: str) -> Job:
        return getattr(self, f"_job_{cls}")(self.rng)

    def _job_dns(self, rng) -> Job:
        argv = [which("dig"), f"@{SERVER_IP}", "+tries=1", "+time=2"]
        if rng.random() < 0.3:
            argv.append("+tcp")
        argv += rng.sample(["+dnssec", "+nocookie", "+bufsize=512", "+bufsize=4096",
                            "+noedns", "+norecurse", "+qr"], rng.randrange(0, 3))
        for _ in range(rng.randrange(1, 5)):
            kind = rng.random()
            if kind < 0.5:
                argv += [f"h{rng.randrange(80)}.lab.test", rng.choice(["A", "AAAA", "ANY"])]
            elif kind < 0.7:
                argv += [f"t{rng.randrange(12)}.lab.test", "TXT"]
            elif kind < 0.85:
                argv += ["lab.test", rng.choice(["MX", "SOA", "NS"])]
            else:
                argv += ["-x", f"198.18.10.{rng.randrange(64)}"]
        return Job("dns", argv)

    def _job_ntp(self, rng) -> Job:
        n = rng.randrange(1000)
        conf = self.tmp / f"chrony-client-{n}.conf"
        # Sub-second polling: chronyd -Q is done after a few exchanges, not minutes.
        poll = rng.choice((-5, -4, -3, -2))
        opts = " ".join(rng.sample(["xleave", "version 3", "version 4", "presend 0"],
                                   rng.randrange(0, 2)))
        conf.write_text(f"server {SERVER_IP} minpoll {poll} maxpoll {poll} {opts}\n"
                        "cmdport 0\nbindcmdaddress /\n"
                        f"pidfile {self.tmp}/chrony-client-{n}.pid\n"
                        f"maxsamples {rng.randrange(4, 9)}\n")
        return Job("ntp", [which("chronyd"), "-Q", "-t", "6", "-u", "root", "-f", str(conf)])

    def _job_http(self, rng) -> Job:
        port = rng.choice((80, 80, 8080))
        base = f"http://{SERVER_IP}:{port}"
        urls = [f"{base}/{rng.choice(['index.html'] + [f'f{s}.bin' for s in self.sizes])}"
                for _ in range(rng.randrange(1, 5))]
        kind = rng.random()
        if kind < 0.15:
            return Job("http", [which("wget"), "-q", "-O", "/dev/null", *urls])
        argv = [which("curl"), "-sf", "-o", "/dev/null", "--max-time", "10",
                "-A", rng.choice(["curl/7.88", "Mozilla/5.0 (X11; Linux x86_64)", "xdpnn"])]
        if kind < 0.35:
            argv += ["-X", "POST", "--data-binary", f"@{self.tmp}/post.bin",
                     f"{base}/upload"]
        elif kind < 0.45:
            argv += ["-I", *urls]
        elif kind < 0.55:
            argv += ["--http1.0", urls[0]]
        else:
            argv += [*urls]  # one connection, kept alive between them
        return Job("http", argv)

    def _job_tls(self, rng) -> Job:
        port = rng.choice((443, 8443))
        path = rng.choice(["index.html"] + [f"f{s}.bin" for s in self.sizes])
        if rng.random() < 0.3:
            version = rng.choice(["-tls1_2", "-tls1_3"])
            argv = [which("openssl"), "s_client", "-quiet", "-connect", f"{SERVER_IP}:{port}",
                    version, "-servername", "xdpnn.test"]
            if version == "-tls1_2" and port == 443:
                argv += ["-cipher", rng.choice(["ECDHE-RSA-AES128-GCM-SHA256",
                                                "ECDHE-RSA-AES256-GCM-SHA384",
                                                "ECDHE-RSA-CHACHA20-POLY1305"])]
            req = f"GET /{path} HTTP/1.1\r\nHost: xdpnn.test\r\nConnection: close\r\n\r\n"
            return Job("tls", argv, req.encode())
        argv = [which("curl"), "-sfk", "-o", "/dev/null", "--max-time", "10"]
        argv += rng.choice([["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3"], []])
        argv += rng.choice([["--http2"], ["--http1.1"], []])
        if rng.random() < 0.2:
            return Job("tls", [*argv, "-X", "POST", "--data-binary", f"@{self.tmp}/post.bin",
                               f"https://{SERVER_IP}:{port}/upload"])
        argv += [f"https://{SERVER_IP}:{port}/{path}" for _ in range(rng.randrange(1, 4))]
        return Job("tls", argv)

    def _job_ssh(self, rng) -> Job:
        port = rng.choice((22, 22, 2222))
        opts = ["-i", str(self.tmp / "client_key"), "-o", "BatchMode=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR"]
        opts += rng.choice([[], ["-c", "aes128-ctr"], ["-c", "chacha20-poly1305@openssh.com"],
                            ["-c", "aes256-gcm@openssh.com"]])
        if rng.random() < 0.2:
            opts.append("-C")
        f = self.tmp / "www" / f"f{rng.choice(self.sizes)}.bin"
        kind = rng.random()
        if kind < 0.3:
            return Job("ssh", [which("scp"), "-q", "-P", str(port), *opts, str(f),
                               f"root@{SERVER_IP}:/dev/null"])
        if kind < 0.45:
            return Job("ssh", [which("scp"), "-q", "-P", str(port), *opts,
                               f"root@{SERVER_IP}:{f}", "/dev/null"])
        cmd = rng.choice(["uname -a", "ls -l /", "id", "cat /proc/cpuinfo",
                          f"head -c {rng.randrange(100, 50000)} /dev/zero | od | head -100",
                          "echo xdpnn"])
        return Job("ssh", [which("ssh"), "-p", str(port), *opts, f"root@{SERVER_IP}", cmd])

    def _job_quic(self, rng) -> Job:
        port = rng.choice((443, 4433))
        urls = [f"https://{SERVER_IP}:{port}/{rng.choice(['index.html'] + [f'f{s}.bin' for s in self.sizes[:-1]])}"  # noqa: E501
                for _ in range(rng.randrange(1, 4))]
        argv = [which("gtlsclient"), "-q", "--exit-on-all-streams-close", "--timeout=3s",
                "--handshake-timeout=3s"]
        argv += rng.choice([[], ["--max-udp-payload-size=1200"], ["--cc=bbr"],
                            ["--groups=-GROUP-ALL:+GROUP-SECP256R1"]])
        return Job("quic", [*argv, SERVER_IP, str(port), *urls])

    def _job_other(self, rng) -> Job:
        kind = rng.random()
        if kind < 0.35:
            return Job("other", [which("ping"), "-q", "-c", str(rng.randrange(2, 12)), "-i",
                                 "0.05", "-s", str(rng.choice((56, 100, 512, 1400))),
                                 "-W", "1", SERVER_IP])
        # One second each (iperf3 3.12 takes whole seconds: -t 0.5 runs until killed).
        argv = [which("iperf3"), "-c", SERVER_IP, "-p", "5201", "-t", "1"]
        if kind < 0.55:
            argv += ["-b", f"{rng.choice((200, 500, 1000, 2000))}K", "-u",
                     "-l", str(rng.choice((64, 200, 512, 1200, 1400)))]
            return Job("other", argv)
        argv += ["-b", f"{rng.choice((1, 2, 5, 10))}M"]
        if kind < 0.75:
            argv.append("-R")
        elif kind < 0.85:
            argv += ["-P", "2"]
        return Job("other", argv)

    # --- the pcaps ------------------------------------------------------------------

    def _write(self, frames, res: Result) -> None:
        from scapy.data import DLT_EN10MB
        from scapy.utils import RawPcapWriter
        by_class: dict[str, list] = {c: [] for c in self.classes}
        for ts, frame in frames:
            c = label(frame)
            if c in by_class:
                by_class[c].append((ts, frame))
            else:
                res.unlabeled += 1
        self.out.mkdir(parents=True, exist_ok=True)
        for c, rows in by_class.items():
            if not rows:
                res.notes.append(f"{c}: no frames captured ({res.classes[c]['failed']} of "
                                 f"{res.classes[c]['jobs']} client runs failed)")
                continue
            w = RawPcapWriter(str(self.out / f"{c}.pcap"), linktype=DLT_EN10MB, sync=False)
            try:
                w.write_header(None)
                for ts, frame in rows:
                    sec = int(ts)
                    w.write_packet(frame, sec=sec, usec=int((ts - sec) * 1e6))
            finally:
                w.close()
            res.classes[c].update(frames=len(rows),
                                  flows=len({flow_key(f) for _, f in rows}))


NGINX_CONF = """
worker_processes 1;
user root;  # the workers read files in the command's private (0700) folder
pid {t}/nginx.pid;
error_log stderr;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {t}/nginx/body;
    proxy_temp_path {t}/nginx/proxy;
    fastcgi_temp_path {t}/nginx/fastcgi;
    uwsgi_temp_path {t}/nginx/uwsgi;
    scgi_temp_path {t}/nginx/scgi;
    keepalive_requests 100;
    client_max_body_size 1m;
    server {{
        listen {ip}:80;
        listen {ip}:8080;
        listen {ip}:443 ssl http2;
        ssl_certificate {t}/rsa.crt;
        ssl_certificate_key {t}/rsa.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root {t}/www;
        location /upload {{ return 200 "stored\\n"; }}
    }}
    server {{
        listen {ip}:8443 ssl;
        ssl_certificate {t}/ec.crt;
        ssl_certificate_key {t}/ec.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        root {t}/www;
        location /upload {{ return 200 "stored\\n"; }}
    }}
}}
"""


def run(out: str, seed: int = 0, seconds: float = 60.0, classes=None, prefix: str | None = None,
        flows: int = 20, max_frames: int = 200_000, progress=None) -> Result:
    classes = list(classes or CLASSES)
    unknown = [c for c in classes if c not in CLASSES]
    if unknown or len(set(classes)) != len(classes):
        raise UsageError(f"capture: --classes {','.join(classes)}: expected some of "
                         f"{', '.join(CLASSES)}, each once")
    if len(classes) < 1:
        raise UsageError("capture: no classes")
    return Capture(Path(out), seed, seconds, classes, prefix or f"flowcap-{os.getpid()}",
                   flows, max_frames, progress).run()
