"""`gateway simulate` against a real `gateway serve`: the README's first minutes."""

from __future__ import annotations

import subprocess
import sys
import wave

import numpy as np
import yaml

from support import Receiver, base_config


def test_simulated_twilio_and_vonage_calls(gateway_process, tmp_path):
    with Receiver() as receiver:
        config = base_config(tmp_path, webhooks=[{"name": "crm", "events": ["call.*"], "url": receiver.url + "/x",
                                                 "allow_networks": ["127.0.0.0/8"]}])
        proc = gateway_process(config)
        for provider in ("twilio", "vonage"):
            result = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--provider", provider, "--seconds", "1",
                                     "--config", str(proc.config_path), "--url", proc.url],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, result.stderr
            out = result.stdout
            assert "state=completed" in out
            assert "sent 50 frames" in out and "the agent sent back" in out
            assert "media.started" in out and "media.ended" in out
            assert "crm" in out and "call.ended" in out
            back = int(out.split("the agent sent back ")[1].split(" frames")[0])
            assert back >= 45  # the echo agent played the caller back


def test_simulate_with_a_wav_file(gateway_process, tmp_path):
    proc = gateway_process(base_config(tmp_path))
    path = tmp_path / "hello.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        t = np.arange(16000) / 16000
        wav.writeframes((np.sin(2 * np.pi * 300 * t) * 8000).astype(np.int16).tobytes())
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--audio", str(path),
                             "--config", str(proc.config_path), "--url", proc.url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "sent 50 frames" in result.stdout


def test_simulate_reports_a_gateway_that_refuses(gateway_process, tmp_path):
    proc = gateway_process(base_config(tmp_path))
    wrong = base_config(tmp_path, providers={"twilio": {"account_sid": "AC1", "auth_token": "not-the-token"}})
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(wrong))
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--config", str(path), "--url", proc.url],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "403" in result.stderr


def test_simulate_signs_over_the_origin_the_gateway_checks(gateway_process, tmp_path):
    """The gateway behind a public_url the simulator's own config does not name: it asks the
    gateway (GET /api/v1/tunnel) which origin signatures are checked over."""
    proc = gateway_process(base_config(tmp_path, public_url="https://gw.example.com"))
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump(base_config(tmp_path)))  # the same secrets, no public_url
    for provider in ("twilio", "vonage"):
        result = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", "--provider", provider, "--seconds", "0.3",
                                 "--config", str(local), "--url", proc.url], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "state=completed" in result.stdout
