"""A real Prometheus server (the Debian package's /usr/bin/prometheus) for tests and benchmarks:
temporary storage, loopback only, a short scrape interval, stopped by its pid.

Queries go through the HTTP API (satupintu.report.prometheus), exactly as Grafana and
`satupintu report` use it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import yaml

from satupintu.emulation.processes import stop_process

PROMETHEUS = "/usr/bin/prometheus"


def missing_tools() -> list[str]:
    """What a test needs from the Debian package prometheus and this machine lacks."""
    return [f"{tool} not on PATH (Debian package prometheus)" for tool in ("prometheus", "promtool")
            if shutil.which(tool) is None]


class PrometheusServer:
    """`with PrometheusServer(["127.0.0.1:9733"], port=9190) as prom: prom.url ...`"""

    def __init__(self, targets: list[str], port: int, *, scrape_interval_s: float = 1.0,
                 rule_files: Sequence[str | Path] = (), workdir: str | Path | None = None,
                 binary: str = PROMETHEUS, retention: str = "30d") -> None:
        """`workdir/data` is the TSDB: blocks put there before start() (promtool tsdb
        create-blocks-from) are served, within `retention`."""
        self.targets = targets
        self.port = port
        self.scrape_interval_s = scrape_interval_s
        self.rule_files = [str(Path(path).resolve()) for path in rule_files]
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="satupintu-prom-"))
        self.binary = binary
        self.retention = retention
        self.data_dir = self.workdir / "data"
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.log_file = self.workdir / "prometheus.log"

    def config(self) -> dict:
        interval = f"{int(self.scrape_interval_s * 1000)}ms"
        return {
            "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
            "rule_files": self.rule_files,
            "scrape_configs": [{"job_name": "satupintu", "static_configs": [{"targets": self.targets}]}],
        }

    def start(self, timeout_s: float = 30.0) -> None:
        if shutil.which(self.binary) is None:
            raise RuntimeError(f"{self.binary} not found: install the Debian package prometheus (scripts/setup.sh)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        argv = [self.binary, f"--config.file={config_file}", f"--storage.tsdb.path={self.data_dir}",
                f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
                f"--storage.tsdb.retention.time={self.retention}", "--log.level=warn"]
        with open(self.log_file, "ab") as log_handle:
            self.process = subprocess.Popen(argv, stdout=log_handle, stderr=log_handle, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self._ready():
            if self.process.poll() is not None:
                tail = self.log_file.read_text()[-2000:]
                raise RuntimeError(f"prometheus exited ({self.process.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"prometheus not ready within {timeout_s}s on {self.url}")
            time.sleep(0.2)

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        stop_process(self.process, timeout_s=20)

    def __enter__(self) -> PrometheusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
