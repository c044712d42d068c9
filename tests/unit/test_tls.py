"""TLS beyond loopback: the settings' rules, the certificate made per sandbox (read back by the real
``openssl``), the user's own certificate checked in one line each, what reaches the sandbox, and
the client side verifying chain and host name against a real TLS server on 127.0.0.1."""

from __future__ import annotations

import datetime as dt
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from openwork_sandbox.config import load_settings
from openwork_sandbox.core.errors import SettingsError
from tests.support.paths import ROOT
from tests.support.tls_certs import HttpsServer, openssl, user_ca

REMOTE = "10.237.0.1"  # a connect host beyond loopback; no traffic goes there


def load(tmp_path: Path, **env: str):
    return load_settings({}, environ={"OPENWORK_STATE_DIR": str(tmp_path / "state"), **env}, root=tmp_path)


def problems(tmp_path: Path, **env: str) -> list[str]:
    with pytest.raises(SettingsError) as info:
        load(tmp_path, **env)
    return info.value.problems


# --- the settings --------------------------------------------------------------------------------


def test_tls_is_on_by_default_only_beyond_loopback(tmp_path):
    assert load(tmp_path).url == "http://127.0.0.1:8787"
    assert load(tmp_path, OPENWORK_CONNECT_HOST=REMOTE).url == "https://10.237.0.1:8787"
    assert load(tmp_path, OPENWORK_CONNECT_HOST="box.example.test").url == "https://box.example.test:8787"
    assert load(tmp_path, OPENWORK_CONNECT_HOST="localhost").url == "http://localhost:8787"
    assert load(tmp_path, OPENWORK_TLS="true").url == "https://127.0.0.1:8787"
    assert load(tmp_path, OPENWORK_TLS="off", OPENWORK_CONNECT_HOST=REMOTE).url == "http://10.237.0.1:8787"
    assert load(tmp_path, OPENWORK_TLS="").tls == "auto"


def test_a_bad_tls_mode_is_one_line(tmp_path):
    assert problems(tmp_path, OPENWORK_TLS="maybe") == [
        'OPENWORK_TLS="maybe" (from environment): expected auto, true or false'
    ]


def test_cert_and_key_come_together(tmp_path):
    assert problems(tmp_path, OPENWORK_TLS_CERT="/x/server.crt") == [
        "OPENWORK_TLS_CERT (from environment) is set without OPENWORK_TLS_KEY: give both (your certificate "
        "and its private key, PEM), or neither to have a certificate made for the sandbox"
    ]
    assert problems(tmp_path, OPENWORK_TLS_KEY="/x/server.key") == [
        "OPENWORK_TLS_KEY (from environment) is set without OPENWORK_TLS_CERT: give both (your certificate "
        "and its private key, PEM), or neither to have a certificate made for the sandbox"
    ]
    assert problems(tmp_path, OPENWORK_TLS="false", OPENWORK_TLS_CERT="/x/s.crt", OPENWORK_TLS_KEY="/x/s.key") == [
        "OPENWORK_TLS=false (from environment) but OPENWORK_TLS_CERT and OPENWORK_TLS_KEY are set (from "
        "environment): unset them, or set OPENWORK_TLS to auto or true to use them"
    ]
    s = load(tmp_path, OPENWORK_TLS_CERT="own/s.crt", OPENWORK_TLS_KEY="own/s.key")
    assert s.tls_cert == tmp_path / "own" / "s.crt" and s.tls_key == tmp_path / "own" / "s.key"


# --- the certificate made per sandbox --------------------------------------------------------------


def _text(cert: Path) -> str:
    return openssl("x509", "-in", str(cert), "-noout", "-text", cwd=cert.parent)


def _dates(cert: Path) -> tuple[dt.datetime, dt.datetime]:
    out = openssl("x509", "-in", str(cert), "-noout", "-startdate", "-enddate", cwd=cert.parent)
    found = dict(line.split("=", 1) for line in out.strip().splitlines())
    parse = lambda v: dt.datetime.strptime(v, "%b %d %H:%M:%S %Y GMT").replace(tzinfo=dt.timezone.utc)  # noqa: E731
    return parse(found["notBefore"]), parse(found["notAfter"])


def test_up_makes_a_certificate_for_the_connect_host_kept_private(tmp_path):
    from openwork_sandbox.state import tls

    settings = load(tmp_path, OPENWORK_CONNECT_HOST=REMOTE, OPENWORK_MICROSANDBOX_NAME="tls-a")
    before = dt.datetime.now(dt.timezone.utc)
    cert, said = tls.ensure(settings)
    folder = tmp_path / "state" / "tls-a" / "tls"
    assert said is not None and said.startswith("made a TLS certificate for tls-a (none made yet; valid until ")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "tls.key").stat().st_mode) == 0o600
    text = _text(folder / "tls.crt")
    assert "IP Address:10.237.0.1, IP Address:127.0.0.1, DNS:localhost" in text
    assert "CA:FALSE" in text and "TLS Web Server Authentication" in text
    assert "ASN1 OID: prime256v1" in text  # ECDSA P-256
    start, end = _dates(folder / "tls.crt")
    assert before - dt.timedelta(minutes=6) <= start <= before
    assert dt.timedelta(days=365) <= end - start <= dt.timedelta(days=365, minutes=6)
    ca_text = _text(folder / "ca.crt")
    assert "CA:TRUE, pathlen:0" in ca_text and "Certificate Sign" in ca_text
    verified = openssl("verify", "-x509_strict", "-CAfile", str(folder / "ca.crt"), str(folder / "tls.crt"), cwd=folder)
    assert verified.strip().endswith(": OK")
    shown = openssl("x509", "-in", str(folder / "tls.crt"), "-noout", "-fingerprint", "-sha256", cwd=folder)
    assert cert.fingerprint == shown.strip().split("=", 1)[1]
    assert cert.made and list((folder).iterdir()) and not any("ca.key" in p.name for p in folder.iterdir())

    again, said_again = tls.ensure(settings)  # kept while it fits
    assert said_again is None and again.fingerprint == cert.fingerprint


def test_a_dns_connect_host_is_a_dns_name_in_the_certificate(tmp_path):
    from openwork_sandbox.state import tls

    settings = load(tmp_path, OPENWORK_CONNECT_HOST="box.example.test")
    tls.ensure(settings)
    text = _text(settings.sandbox_state_dir / "tls" / "tls.crt")
    assert "DNS:box.example.test, IP Address:127.0.0.1, DNS:localhost" in text


def test_the_made_certificate_is_made_again_for_a_new_host_or_near_its_end(tmp_path):
    from openwork_sandbox.core.files import write_atomic
    from openwork_sandbox.state import tls

    first, _ = tls.ensure(load(tmp_path, OPENWORK_CONNECT_HOST=REMOTE))
    moved, said = tls.ensure(load(tmp_path, OPENWORK_CONNECT_HOST="10.237.0.9"))
    assert said.startswith("made a TLS certificate for openwork-microsandbox (OPENWORK_CONNECT_HOST is now 10.237.0.9;")
    assert moved.fingerprint != first.fingerprint
    # one made 340 days ago has 25 days left: made again
    settings = load(tmp_path, OPENWORK_CONNECT_HOST="10.237.0.9")
    old_cert, old_key, old_ca = tls.make_cert(
        "10.237.0.9", "old", dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=340)
    )
    folder = settings.sandbox_state_dir / "tls"
    for name, data in (("tls.crt", old_cert), ("tls.key", old_key), ("ca.crt", old_ca)):
        write_atomic(folder / name, data)
    renewed, said = tls.ensure(settings)
    assert re.match(r"made a TLS certificate for openwork-microsandbox \(the one made earlier expires on \d{4}-", said)
    _, end = _dates(folder / "tls.crt")
    assert end - dt.datetime.now(dt.timezone.utc) > dt.timedelta(days=364)


def test_tls_off_makes_nothing(tmp_path):
    from openwork_sandbox.state import tls

    assert tls.ensure(load(tmp_path)) == (None, None)
    assert not (tmp_path / "state").exists()


# --- the user's own certificate --------------------------------------------------------------------


def test_the_users_own_certificate_is_used_as_it_is(tmp_path):
    from openwork_sandbox.state import tls

    mine = user_ca(tmp_path / "mine", f"IP:{REMOTE}")
    settings = load(
        tmp_path, OPENWORK_CONNECT_HOST=REMOTE, OPENWORK_TLS_CERT=str(mine.cert), OPENWORK_TLS_KEY=str(mine.key)
    )
    tls.check(settings)
    cert, said = tls.ensure(settings)
    assert said is None and not cert.made and cert.cert_pem == mine.cert.read_bytes()
    shown = openssl("x509", "-in", str(mine.cert), "-noout", "-fingerprint", "-sha256", cwd=tmp_path)
    assert cert.fingerprint == shown.strip().split("=", 1)[1]
    assert not (settings.sandbox_state_dir / "tls").exists()  # nothing made


def test_a_certificate_or_key_that_cannot_be_used_is_one_line_each(tmp_path):
    from openwork_sandbox.state import tls

    mine = user_ca(tmp_path / "mine", "DNS:other.example.test")
    theirs = user_ca(tmp_path / "theirs", f"IP:{REMOTE}", label="theirs")
    encrypted = tmp_path / "enc.key"
    openssl("pkey", "-in", str(theirs.key), "-out", str(encrypted), "-aes256", "-passout", "pass:secret", cwd=tmp_path)
    (tmp_path / "notes.txt").write_text("not a certificate\n")

    def refused(**env: str) -> list[str]:
        settings = load(tmp_path, OPENWORK_CONNECT_HOST=REMOTE, **env)
        with pytest.raises(SettingsError) as info:
            tls.check(settings)
        assert info.value.exit_code == 2
        return info.value.problems

    assert refused(OPENWORK_TLS_CERT=str(theirs.cert), OPENWORK_TLS_KEY=str(mine.key)) == [
        f"OPENWORK_TLS_KEY={mine.key} (from environment) is not the private key of the certificate in "
        "OPENWORK_TLS_CERT: give the key that belongs to it"
    ]
    assert refused(OPENWORK_TLS_CERT=str(mine.cert), OPENWORK_TLS_KEY=str(mine.key)) == [
        f"OPENWORK_TLS_CERT={mine.cert} (from environment) does not name OPENWORK_CONNECT_HOST=10.237.0.1 (its "
        "subjectAltName: other.example.test): clients would refuse it; use a certificate for 10.237.0.1, or set "
        "OPENWORK_CONNECT_HOST to a name it holds"
    ]
    missing = tmp_path / "nope.crt"
    assert refused(OPENWORK_TLS_CERT=str(missing), OPENWORK_TLS_KEY=str(encrypted)) == [
        f"OPENWORK_TLS_CERT={missing} (from environment): cannot read it (No such file or directory); point "
        "OPENWORK_TLS_CERT at a PEM file",
        f"OPENWORK_TLS_KEY={encrypted} (from environment) is encrypted: give the key without a passphrase "
        "(`openssl pkey -in KEY -out NEW`)",
    ]
    assert refused(OPENWORK_TLS_CERT=str(tmp_path / "notes.txt"), OPENWORK_TLS_KEY=str(tmp_path / "notes.txt")) == [
        f"OPENWORK_TLS_CERT={tmp_path / 'notes.txt'} (from environment) holds no PEM certificate "
        "(-----BEGIN CERTIFICATE-----)",
        f"OPENWORK_TLS_KEY={tmp_path / 'notes.txt'} (from environment) holds no PEM private key "
        "(-----BEGIN PRIVATE KEY-----)",
    ]
    assert refused(OPENWORK_TLS_CA=str(tmp_path / "notes.txt")) == [
        f"OPENWORK_TLS_CA={tmp_path / 'notes.txt'} (from environment) holds no PEM certificate "
        "(-----BEGIN CERTIFICATE-----)"
    ]


def test_up_refuses_a_mismatched_key_in_one_line_before_anything_is_made(tmp_path):
    mine = user_ca(tmp_path / "mine", f"IP:{REMOTE}")
    theirs = user_ca(tmp_path / "theirs", f"IP:{REMOTE}", label="theirs")
    (tmp_path / "empty.env").write_text("")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": str(ROOT),
        "OPENWORK_ENV_FILE": str(tmp_path / "empty.env"),
        "OPENWORK_STATE_DIR": str(tmp_path / "state"),
        "OPENWORK_CONNECT_HOST": REMOTE,
        "OPENWORK_TLS_CERT": str(mine.cert),
        "OPENWORK_TLS_KEY": str(theirs.key),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "invoke", "up"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"OPENWORK_TLS_KEY={theirs.key} (from environment) is not the private key of the certificate in "
        "OPENWORK_TLS_CERT: give the key that belongs to it"
    ]
    assert not (tmp_path / "state").exists()


# --- what reaches the sandbox ----------------------------------------------------------------------


def test_the_sandbox_gets_the_files_through_a_mount_and_never_the_key_in_its_environment(tmp_path, monkeypatch):
    from openwork_sandbox.sandbox.launch import launch_spec
    from openwork_sandbox.state import tls

    monkeypatch.setattr("openwork_sandbox.state.pin.pinned_image", lambda settings: settings.image)
    settings = load(tmp_path, OPENWORK_CONNECT_HOST=REMOTE)
    cert, _ = tls.ensure(settings)
    folder = tls.deliver(settings, cert)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert sorted(p.name for p in folder.iterdir()) == ["tls.crt", "tls.key"]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in folder.iterdir())

    spec = launch_spec(settings, "docker", "t" * 30, "h" * 30, server_cert=cert)
    assert spec.env["OPENWORK_TLS"] == "1"
    assert spec.env["OPENWORK_TLS_CERT_FILE"] == "/srv/openwork/secrets/tls.crt"
    assert spec.env["OPENWORK_TLS_KEY_FILE"] == "/srv/openwork/secrets/tls.key"
    assert spec.readonly_mounts["/srv/openwork/secrets"] == folder.resolve()  # beside the token files
    assert not any("PRIVATE KEY" in v or "CERTIFICATE" in v for v in spec.env.values())
    # a new certificate is a new sandbox; the one there now is what `status` compares with
    other, _ = tls.ensure(load(tmp_path, OPENWORK_CONNECT_HOST="10.237.0.9"))
    assert launch_spec(settings, "docker", "t" * 30, "h" * 30, server_cert=other).fingerprint != spec.fingerprint

    plain = load(tmp_path)
    assert tls.deliver(plain, None) == folder and list(folder.iterdir()) == []
    spec = launch_spec(plain, "docker", "t" * 30, "h" * 30)
    assert not any(k.startswith("OPENWORK_TLS") for k in spec.env)


# --- the client side -------------------------------------------------------------------------------


def test_a_client_verifies_the_made_certificate_and_refuses_another_ca_in_one_line(tmp_path):
    from openwork_sandbox.net.health import health_once, wait_for_health
    from openwork_sandbox.net.http import CertificateRejected, sandbox_get
    from openwork_sandbox.state import tls

    settings = load(tmp_path, OPENWORK_CONNECT_HOST=REMOTE)
    tls.ensure(settings)
    folder = settings.sandbox_state_dir / "tls"
    stranger = user_ca(tmp_path / "stranger", "IP:127.0.0.1")
    with HttpsServer(folder / "tls.crt", folder / "tls.key") as server:
        url = f"https://127.0.0.1:{server.port}"  # 127.0.0.1 is in every made certificate
        assert tls.client_verify(settings) == str(folder / "ca.crt")
        assert sandbox_get(url + "/health", timeout_s=5, verify=tls.client_verify(settings))[0] == 200
        with pytest.raises(CertificateRejected) as info:
            sandbox_get(url + "/health", timeout_s=5, verify=str(stranger.ca))
        assert "\n" not in info.value.message
        assert info.value.message == (
            f"the TLS certificate of {url} was rejected (self-signed certificate in certificate chain; checked against "
            f"the CA bundle {stranger.ca}): set OPENWORK_TLS_CA to the CA bundle that signed it, or connect by a "
            "name the certificate holds"
        )
        with pytest.raises(CertificateRejected):  # a wait ends at once, not at its deadline
            wait_for_health(url, 60, verify=True)
        assert health_once(url, verify=str(stranger.ca)) is None


def test_a_certificate_for_another_name_is_refused_in_one_line(tmp_path):
    from openwork_sandbox.net.http import CertificateRejected, sandbox_get
    from openwork_sandbox.net.openwork_api import OpenWorkClient, TransportError

    other = user_ca(tmp_path / "other", "DNS:other.example.test")
    with HttpsServer(other.cert, other.key) as server:
        url = f"https://127.0.0.1:{server.port}"
        with pytest.raises(CertificateRejected) as info:
            sandbox_get(url + "/health", timeout_s=5, verify=str(other.ca))
        assert info.value.message.startswith(
            f"the TLS certificate of {url} was rejected (IP address mismatch, certificate is not valid for "
            "'127.0.0.1'; checked against the CA bundle"
        )
        with OpenWorkClient(url, verify=str(other.ca)) as client, pytest.raises(TransportError) as sent:
            client.health()
        assert sent.value.detail.startswith(f"the TLS certificate of {url} was rejected (IP address mismatch")
