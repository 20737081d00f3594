"""The README's quick start, as a newcomer runs it: a real `gateway serve` with no config file in an
empty directory, then `gateway simulate` with no config either (only `--url`, because this shared
machine cannot promise port 8000). Plus the simulator's inputs: the inbound path, outcomes,
initial context, any WAV, saving the agent's audio, and one-line errors for every bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from support import free_port, wait_until


def gateway(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    """`gateway serve` with no config file, in an empty directory (as `make run` in a fresh clone)."""
    root = tmp_path_factory.mktemp("fresh-clone")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    log = open(root / "serve.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, timeout=30, what="gateway serve with no config")
        yield root, url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def test_the_quick_start_plays_a_twilio_call_and_a_vonage_call(fresh):
    root, url = fresh
    for provider in ("twilio", "vonage"):
        args = ["simulate", "--url", url, "--seconds", "1"] + (["--provider", provider] if provider == "vonage" else [])
        result = gateway(*args, cwd=root)
        assert result.returncode == 0, result.stderr
        out = result.stdout
        assert "state=completed" in out and "sent 50 frames" in out
        assert "media.started" in out and "media.ended" in out and "completed" in out.split("timeline:")[1]
        assert int(out.split("the agent sent back ")[1].split(" frames")[0]) >= 45  # the echo agent answered
        assert "DEVELOPMENT" not in result.stderr  # the warning is the gateway's, not every command's
    secrets = json.loads((root / "data" / "dev-secrets.json").read_text())
    assert {"twilio_auth_token", "vonage_signature_secret", "api_key"} <= secrets.keys()
    log = (root / "serve.log").read_text()
    assert "DEVELOPMENT PROVIDERS" in log
    assert secrets["twilio_auth_token"] not in log and secrets["vonage_signature_secret"] not in log


def test_admin_key_and_calls_after_the_quick_start(fresh):
    root, url = fresh
    run = json.loads(gateway("simulate", "--url", url, "--seconds", "0.5", "--json", cwd=root).stdout)["workflow_run_id"]
    key = gateway("admin-key", cwd=root)
    assert key.returncode == 0
    assert key.stdout.strip() == json.loads((root / "data" / "dev-secrets.json").read_text())["api_key"]
    assert httpx.get(f"{url}/api/v1/calls/{run}", headers={"Authorization": f"Bearer {key.stdout.strip()}"}).status_code == 200
    listed = gateway("calls", "list", cwd=root)
    assert listed.returncode == 0 and run in listed.stdout and "completed" in listed.stdout
    shown = gateway("calls", "show", run, cwd=root)
    assert shown.returncode == 0 and "timeline:" in shown.stdout and "media.started" in shown.stdout
    as_json = json.loads(gateway("calls", "show", run, "--json", cwd=root).stdout)
    assert as_json["state"] == "completed" and [e["kind"] for e in as_json["timeline"]][0] == "status"
    missing = gateway("calls", "show", "no-such-run", cwd=root)
    assert missing.returncode == 2 and "no call with workflow_run_id 'no-such-run'" in missing.stderr


@pytest.mark.parametrize("provider", ["twilio", "vonage"])
def test_the_inbound_number_path(fresh, provider):
    root, url = fresh
    result = gateway("simulate", "--url", url, "--inbound", "--provider", provider, "--seconds", "0.5", "--json", cwd=root)
    assert result.returncode == 0, result.stderr
    call = json.loads(result.stdout)["call"]
    assert call["state"] == "completed" and call["direction"] == "inbound"
    assert not call["workflow_run_id"].startswith("sim-")  # the gateway minted it


@pytest.mark.parametrize("provider", ["twilio", "vonage"])
@pytest.mark.parametrize("outcome,state", [("busy", "busy"), ("no-answer", "no-answer"), ("failed", "failed"),
                                           ("voicemail", "completed")])
def test_outcomes(fresh, provider, outcome, state):
    root, url = fresh
    result = gateway("simulate", "--url", url, "--provider", provider, "--outcome", outcome, "--seconds", "0.5", "--json", cwd=root)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["call"]["state"] == state
    assert report["call"]["voicemail"] is (outcome == "voicemail")
    assert (report["frames_sent"] > 0) is (outcome == "voicemail")  # an unanswered call has no media


def test_initial_context(fresh):
    root, url = fresh
    result = gateway("simulate", "--url", url, "--seconds", "0.5", "--initial-context", '{"tenant": "acme"}', cwd=root)
    assert result.returncode == 0, result.stderr
    assert 'initial_context: {"tenant": "acme"}' in result.stdout


def write_wav(path: Path, rate: int, channels: int, width: int, seconds: float = 1.0, hz: float = 440.0) -> None:
    t = np.arange(int(rate * seconds)) / rate
    tone = np.sin(2 * np.pi * hz * t) * 0.3
    samples = np.repeat(tone[:, None], channels, axis=1)
    if width == 1:
        data = (samples * 127 + 128).astype(np.uint8).tobytes()
    elif width == 2:
        data = (samples * 32767).astype("<i2").tobytes()
    else:
        data = b"".join(int(v).to_bytes(4, "little", signed=True) for v in (samples.ravel() * 2**31 * 0.99).astype(np.int64))
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(width)
        wav.setframerate(rate)
        wav.writeframes(data)


def dominant_hz(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        rate = wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(float)
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("rate,channels,width,provider", [(44100, 2, 2, "twilio"), (22050, 1, 1, "vonage"),
                                                          (96000, 3, 4, "twilio"), (16000, 1, 2, "vonage")])
def test_any_wav_in_and_the_agents_audio_out(fresh, tmp_path, rate, channels, width, provider):
    root, url = fresh
    source, saved = tmp_path / "hello.wav", tmp_path / "out" / "agent.wav"
    write_wav(source, rate, channels, width)
    result = gateway("simulate", "--url", url, "--provider", provider, "--audio", str(source),
                     "--save-agent-audio", str(saved), cwd=root)
    assert result.returncode == 0, result.stderr
    assert "sent 50 frames" in result.stdout and str(saved) in result.stdout
    with wave.open(str(saved), "rb") as wav:
        assert wav.getframerate() == (8000 if provider == "twilio" else 16000) and wav.getnchannels() == 1
    assert abs(dominant_hz(saved) - 440) < 5  # the echo agent gave back the tone that was sent


def test_every_bad_input_is_one_line(fresh, tmp_path):
    root, url = fresh
    (tmp_path / "notes.txt").write_text("not audio")
    (tmp_path / "float.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x03\x00\x01\x00\x40\x1f\x00\x00"
                                         b"\x00\x7d\x00\x00\x04\x00\x20\x00data\x00\x00\x00\x00")
    cases = [
        (["--audio", str(tmp_path / "absent.wav")], "absent.wav: no such file"),
        (["--audio", str(tmp_path / "notes.txt")], "not a PCM WAV file"),
        (["--audio", str(tmp_path / "float.wav")], "not a PCM WAV file"),
        (["--audio", str(tmp_path)], "is a directory"),
        (["--initial-context", "{nope"], "--initial-context is not JSON"),
        (["--initial-context", "[1]"], "must be a JSON object"),
        (["--inbound", "--outcome", "busy"], "for outbound calls"),
        (["--seconds", "0"], "--seconds"),
        (["--save-agent-audio", "/proc/no/such/dir/a.wav", "--seconds", "0.2"], "cannot write it"),
    ]
    for args, message in cases:
        result = gateway("simulate", "--url", url, *args, cwd=root)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_no_gateway_and_no_secrets_are_one_line(tmp_path, fresh):
    root, _ = fresh
    down = gateway("simulate", "--url", f"http://127.0.0.1:{free_port()}", "--wait", "0.5", cwd=root)
    assert down.returncode == 1 and "cannot reach the gateway" in down.stderr and "make run" in down.stderr
    assert "Traceback" not in down.stderr and len(down.stderr.strip().splitlines()) == 1
    empty = gateway("simulate", "--wait", "0.5", cwd=tmp_path)  # a directory where the gateway never ran
    assert empty.returncode == 2 and "no development secrets" in empty.stderr and "Traceback" not in empty.stderr
    assert not (tmp_path / "data").exists()  # the simulator never generates secrets the gateway does not have


def test_the_readmes_quick_start_commands_run_as_written(fresh):
    """Every `gateway` command in the README's quick start, as written (plus `--url`, for the port)."""
    import shlex

    from support import ROOT

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Try it with no phone and no account"):readme.index("## Provider setup")]
    commands = [line.split("#", 1)[0].strip() for line in section.splitlines() if line.startswith(".venv/bin/gateway ")]
    assert any(c.endswith("simulate") for c in commands) and any("--provider vonage" in c for c in commands)
    root, url = fresh
    ran = 0
    for command in commands:
        args = shlex.split(command)[1:]
        if "--audio" in args:  # the reader's own WAV: here the most common kind, 44.1 kHz stereo
            write_wav(root / args[args.index("--audio") + 1], 44100, 2, 2)
        if args[:2] == ["events", "tail"]:
            continue  # follows forever: tests/test_cli_tools.py runs it
        if args[0] == "simulate":
            args += ["--url", url]
        result = gateway(*args, cwd=root)
        assert result.returncode == 0, (command, result.stderr)
        assert "Traceback" not in result.stderr
        ran += 1
    assert ran >= 7


def test_simulate_right_after_starting_the_gateway(tmp_path):
    """`make run &` then `gateway simulate` at once: the simulator waits for the gateway's
    development secrets and readiness instead of failing on a gateway still starting."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        result = gateway("simulate", "--url", f"http://127.0.0.1:{port}", "--seconds", "0.3", "--wait", "60", cwd=tmp_path,
                         timeout=120)
        assert result.returncode == 0, result.stderr
        assert "state=completed" in result.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
