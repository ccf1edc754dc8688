"""The nginx upstream include shipfab owns: pure rendering, and publishing against a real nginx
(the publish command run by bash here, as the runner runs it on a host)."""

from __future__ import annotations

import subprocess
import urllib.request

import pytest

from fabfile.inventory import NginxSettings
from fabfile.steps import nginx_upstream

from .services import Nginx, http_backend


def test_render_weights_and_drained_servers():
    text = nginx_upstream.render("app", [("127.0.0.1:8501", 1), ("127.0.0.1:8504", 0), ("127.0.0.1:8505", 95)])
    assert "upstream app {" in text
    assert "server 127.0.0.1:8501 weight=1 max_fails=0;" in text
    assert "server 127.0.0.1:8504 down;" in text
    assert "server 127.0.0.1:8505 weight=95 max_fails=0;" in text


@pytest.mark.parametrize("servers", [[], [("127.0.0.1:1", 0)], [("a;b", 1)], [("127.0.0.1:1 backup", 1)],
                                     [("127.0.0.1:1", -1)]])
def test_render_refuses_what_nginx_would_misread(servers):
    with pytest.raises(ValueError):
        nginx_upstream.render("app", servers)


def test_previous_text_is_exactly_the_old_file():
    out = f"{nginx_upstream.PREVIOUS_MARK}\nupstream app {{\n}}\n\n{nginx_upstream.END_MARK}\nreloaded\n"
    assert nginx_upstream.previous_text(out) == "upstream app {\n}\n"
    assert nginx_upstream.previous_text(f"{nginx_upstream.PREVIOUS_MARK}\n\n{nginx_upstream.END_MARK}\n") == ""


def _publish(settings: NginxSettings, text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", nginx_upstream.publish_cmd(settings)], input=text, capture_output=True,
                          text=True)


def test_publish_switches_a_real_nginx_and_a_refused_file_is_put_back(tmp_path):
    (blue, blue_addr), (green, green_addr) = http_backend("blue"), http_backend("green")
    nginx = Nginx.start(tmp_path / "nginx", blue_addr, upstream_file=tmp_path / "upstream.conf")
    try:
        settings = NginxSettings(**nginx.settings())
        assert urllib.request.urlopen(nginx.url).read() == b"blue"
        before = (tmp_path / "upstream.conf").read_text()

        done = _publish(settings, nginx_upstream.render("app", [(green_addr, 1)]))
        assert done.returncode == 0, done.stderr
        assert nginx_upstream.previous_text(done.stdout) == before
        # publish returns once no old worker takes new connections: the very next requests see green
        assert [urllib.request.urlopen(nginx.url, timeout=5).read() for _ in range(20)] == [b"green"] * 20

        good = (tmp_path / "upstream.conf").read_text()
        refused = _publish(settings, "upstream app { server nowhere.invalid:1 bogus_option; }\n")
        assert refused.returncode == 1
        assert "nginx -t refused" in refused.stderr
        assert (tmp_path / "upstream.conf").read_text() == good  # the old file is back, nothing reloaded
        assert not list(tmp_path.glob("upstream.conf.shipfab-*"))
        assert urllib.request.urlopen(nginx.url).read() == b"green"
    finally:
        nginx.stop()
        blue.shutdown()
        green.shutdown()
