"""Per-20 ms-frame cost and quality of call-audio transcoding: the gateway vs audioop vs soxr.

Run by hand:  .venv/bin/python bench/codec.py [--rounds N] [--frames N]

For each direction (μ-law 8 kHz -> PCM16 16 kHz, PCM16 16 kHz -> μ-law 8 kHz) three pipelines
process the same speech-like audio one 20 ms frame at a time, interleaved round by round so
machine noise hits them alike; the table shows the median per-frame cost and its ratio to
each reference. Quality is measured on each pipeline's resampling stage (PCM16 in and out):

* rejection: worst level, relative to the input tone, of anything the resampler puts in its
  stopband: images above 4.1 kHz of 0.3-3.9 kHz tones when upsampling, aliases of 4.1-7.9 kHz
  tones when downsampling;
* chunked error: largest difference (LSB) between resampling 10 s whole and in 20 ms frames.

Then a server-like run (``--streams``): N calls' transcoders, both directions, fed frame by frame
in turn (call 1's inbound and outbound frame, call 2's, ...), which is how the media server
calls them. Every stream keeps its own buffers, so caches hold less of each, and per-call numpy
overhead is paid N times per 20 ms; the tight loop above hides both. It reports the cost per
frame pair and its ratio to the same pipeline's tight-loop cost, for the gateway, audioop and soxr.

The gateway's numpy calls per steady 20 ms frame are listed from the code (NUMPY_CALLS below);
numpy has no hook to count them at run time.

``--batch N,...``: N calls, both directions, one frame per stream per loop iteration, three ways
in the same run: ``direct`` (each stream's ``Transcoder.process``, as today), ``batched`` (one
``BatchTranscoder.run`` over all of them, batching even two frames of a kind) and ``scheduled`` (``StreamTranscoder.submit`` per frame
and the scheduler's run with its callbacks, with the shipped thresholds: the whole edge the server
uses, minus the event loop).
N=1 is the one-call case, where ``submit`` transcodes inline. ``--batch`` runs only that table.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

import soxr

from gateway.audio import TWILIO_FORMAT, VONAGE_FORMAT, AudioFormat, StreamingResampler, Transcoder, g711
from gateway.audio.batch import BatchTranscoder
from gateway.audio.filters import polyphase_bank
from gateway.audio.scheduler import BatchScheduler, StreamTranscoder

SOXR_QUALITY = "HQ"  # python-soxr's default: 20-bit precision, passband to 91.3 % of Nyquist
FRAME_MS = 20

Frame = Callable[[bytes], bytes]
Resample = Callable[[np.ndarray], np.ndarray]


# --- signals ---------------------------------------------------------------------------------


def speech_like(rate: int, seconds: float, seed: int = 7) -> np.ndarray:
    """Voiced-speech stand-in: gliding 90-220 Hz harmonics, formant-ish tilt, syllable envelope."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    f0 = 150 + 60 * np.sin(2 * np.pi * 0.7 * t) + 10 * np.sin(2 * np.pi * 5.3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    x = np.zeros_like(t)
    for k in range(1, 40):
        formant = sum(np.exp(-(((k * 150) - fc) ** 2) / (2 * 250.0**2)) for fc in (500, 1500, 2500))
        x += (0.2 / k + formant) * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) * (k * 220 < 0.45 * rate)
    x *= 0.55 + 0.45 * np.sin(2 * np.pi * 3.7 * t) ** 2
    x += 0.01 * rng.standard_normal(t.size)
    return np.round(x / np.abs(x).max() * 0.5 * 32767).astype(np.int16)


def tone(freq: float, rate: int, seconds: float, amplitude: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.round(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def amplitude_spectrum(y: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """Blackman-Harris windowed spectrum scaled so a sine of amplitude A reads A."""
    n = y.size
    k = np.arange(n) / n
    w = 0.35875 - 0.48829 * np.cos(2 * np.pi * k) + 0.14128 * np.cos(4 * np.pi * k) - 0.01168 * np.cos(6 * np.pi * k)
    spectrum = np.abs(np.fft.rfft(y.astype(np.float64) * w)) * 2 / w.sum()
    return np.fft.rfftfreq(n, 1 / rate), spectrum


# --- the three pipelines ---------------------------------------------------------------------


def gateway_frames(src: AudioFormat, dst: AudioFormat) -> Frame:
    return Transcoder(src, dst).process


def audioop_frames(src: AudioFormat, dst: AudioFormat) -> Frame:
    state = None
    sr, dr = src.sample_rate, dst.sample_rate
    if src.encoding == "mulaw":

        def up(frame: bytes) -> bytes:
            nonlocal state
            out, state = audioop.ratecv(audioop.ulaw2lin(frame, 2), 2, 1, sr, dr, state)
            return out

        return up

    def down(frame: bytes) -> bytes:
        nonlocal state
        out, state = audioop.ratecv(frame, 2, 1, sr, dr, state)
        return audioop.lin2ulaw(out, 2)

    return down


def soxr_frames(src: AudioFormat, dst: AudioFormat) -> Frame:
    stream = soxr.ResampleStream(src.sample_rate, dst.sample_rate, 1, dtype="int16", quality=SOXR_QUALITY)
    chunk = stream.resample_chunk
    if src.encoding == "mulaw":
        decode = g711.MULAW_TO_PCM16.take
        return lambda frame: chunk(decode(np.frombuffer(frame, np.uint8))).tobytes()
    encode = g711.PCM16_TO_MULAW.take
    return lambda frame: encode(chunk(np.frombuffer(frame, np.int16)).view(np.uint16)).tobytes()


def soxr_frames_any(src: AudioFormat, dst: AudioFormat) -> Frame:
    """soxr between any μ-law / PCM16 formats, G.711 through the gateway's tables."""
    stream = soxr.ResampleStream(src.sample_rate, dst.sample_rate, 1, dtype="int16", quality=SOXR_QUALITY)
    chunk = stream.resample_chunk
    decode = g711.MULAW_TO_PCM16.take if src.encoding == "mulaw" else None
    encode = g711.PCM16_TO_MULAW.take if dst.encoding == "mulaw" else None
    if decode is not None:
        return lambda frame: chunk(decode(np.frombuffer(frame, np.uint8))).tobytes()
    if encode is not None:
        return lambda frame: encode(chunk(np.frombuffer(frame, np.int16)).view(np.uint16)).tobytes()
    return lambda frame: chunk(np.frombuffer(frame, np.int16)).tobytes()


def gateway_resampler(src: int, dst: int) -> tuple[Resample, Callable[[], np.ndarray]]:
    r = StreamingResampler(src, dst)
    return r.process, r.flush


def audioop_resampler(src: int, dst: int) -> tuple[Resample, Callable[[], np.ndarray]]:
    state = None

    def process(x: np.ndarray) -> np.ndarray:
        nonlocal state
        out, state = audioop.ratecv(x.tobytes(), 2, 1, src, dst, state)
        return np.frombuffer(out, np.int16)

    return process, lambda: np.empty(0, np.int16)


def soxr_resampler(src: int, dst: int) -> tuple[Resample, Callable[[], np.ndarray]]:
    stream = soxr.ResampleStream(src, dst, 1, dtype="int16", quality=SOXR_QUALITY)
    return stream.resample_chunk, lambda: stream.resample_chunk(np.empty(0, np.int16), last=True)


PIPELINES = {
    "gateway Transcoder": (gateway_frames, gateway_resampler),
    "audioop ulaw+ratecv": (audioop_frames, audioop_resampler),
    f"soxr {SOXR_QUALITY} + gateway G.711": (soxr_frames, soxr_resampler),
}


NUMPY_CALLS = {
    # direction: the numpy calls a steady 20 ms frame makes in the gateway's Transcoder
    "mulaw 8k -> pcm16 16k": ("take (decode + window gather)", "dot", "clip", "rint", "cast to int16", "tobytes"),
    "pcm16 16k -> mulaw 8k": (
        "cast (window gather)",
        "dot",
        "rint",
        "cast to intp",
        "take (saturate + encode)",
        "tobytes",
    ),
    "pcm16 16k -> pcm16 24k": ("cast (window gather)", "dot", "clip", "rint", "cast to int16", "tobytes"),
    "mulaw 8k -> mulaw 8k, pcm16 16k -> pcm16 16k": (),  # passthrough: the input object is returned
    "mulaw 8k <-> alaw 8k": (),  # bytes.translate
}
"""Six each way is the floor of this design (gather, product, round/saturate/encode, bytes). A variant
that bound these calls once per stream into fixed per-stream buffers (issue #15) was 5-10 % faster
in the tight loop but 7-11 % slower with 100-1,000 calls interleaved (--streams): per-stream scratch
crowds the cache where fresh allocations reuse the hot memory the previous call freed. Not kept."""


# --- measurements ----------------------------------------------------------------------------


def per_frame_us(process: Frame, frames: list[bytes], segment: int = 25) -> float:
    """Median over segments of ``segment`` frames: a preemption on a shared machine spoils one
    segment, not the round."""
    clock = time.perf_counter_ns
    costs = []
    for i in range(0, len(frames) - segment + 1, segment):
        part = frames[i : i + segment]
        start = clock()
        for frame in part:
            process(frame)
        costs.append(clock() - start)
    return statistics.median(costs) / segment / 1000


def rejection_db(make_resampler: Callable, src: int, dst: int) -> float:
    amplitude = 0.5 * 32767
    nyquist = min(src, dst) / 2
    worst = np.inf
    if dst > src:
        tones, band = (300, 1000, 2000, 3000, 3400, 3900), (nyquist + 100, dst / 2)
    else:
        tones, band = (4100, 4500, 5000, 6000, 7000, 7900), (0, dst / 2)
    for f in tones:
        process, flush = make_resampler(src, dst)
        y = np.concatenate([process(tone(f, src, 1.5, amplitude)), flush()])
        segment = y[dst // 4 : dst // 4 + 8192]
        freqs, spectrum = amplitude_spectrum(segment, dst)
        in_band = (freqs >= band[0]) & (freqs <= band[1])
        peak = max(float(spectrum[in_band].max()), 1e-3)
        worst = min(worst, 20 * np.log10(amplitude / peak))
    return float(worst)


def chunked_error(make_resampler: Callable, src: int, dst: int) -> int:
    x = speech_like(src, 10.0)
    process, flush = make_resampler(src, dst)
    whole = np.concatenate([process(x), flush()]).astype(np.int32)
    process, flush = make_resampler(src, dst)
    n = src * FRAME_MS // 1000
    chunked = np.concatenate([process(x[i : i + n]) for i in range(0, x.size, n)] + [flush()]).astype(np.int32)
    m = min(whole.size, chunked.size)
    return int(np.abs(whole[:m] - chunked[:m]).max())


def frames_of(fmt: AudioFormat, n_frames: int) -> list[bytes]:
    pcm = speech_like(fmt.sample_rate, n_frames * FRAME_MS / 1000)
    data = g711.encode_mulaw(pcm.tobytes()) if fmt.encoding == "mulaw" else pcm.tobytes()
    size = fmt.frame_bytes(FRAME_MS)
    return [data[i : i + size] for i in range(0, len(data), size)]


def time_pipelines(
    makers: dict[str, Callable[[AudioFormat, AudioFormat], Frame]],
    src: AudioFormat,
    dst: AudioFormat,
    rounds: int,
    n_frames: int,
) -> dict[str, list[float]]:
    """Per-frame microseconds per round; pipelines alternate order each round, round 0 is warm-up."""
    frames = frames_of(src, n_frames)
    return interleaved(list(makers), rounds, lambda name: per_frame_us(makers[name](src, dst), frames))


def interleaved(names: list[str], rounds: int, measure: Callable[[str], float]) -> dict[str, list[float]]:
    """``measure(name)`` for every name, rounds + 1 times, the order reversed every other round
    so drift hits all alike; round 0 warms up and is not kept."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds + 1):
        for name in names[::-1] if r % 2 else names:
            value = measure(name)
            if r:
                times[name].append(value)
    return times


def server_like_pair_us(
    makers: dict[str, Callable[[AudioFormat, AudioFormat], Frame]], streams: int, rounds: int, n_frames: int
) -> dict[str, list[float]]:
    """Per frame pair microseconds: ``streams`` calls, each a Twilio->Vonage and a Vonage->Twilio
    pipeline, fed one frame each in turn. Every run of up to 25 calls in a sweep is timed on its
    own and a round reports the median, so a shared machine's preemptions (which hit a long loop
    far more often than a short one) do not count; pipelines alternate order per round, round 0
    warms up."""
    inbound, outbound = frames_of(TWILIO_FORMAT, n_frames), frames_of(VONAGE_FORMAT, n_frames)
    times: dict[str, list[float]] = {name: [] for name in makers}
    clock = time.perf_counter_ns
    for r in range(rounds + 1):
        order = list(makers.items())
        if r % 2:
            order.reverse()
        for name, make in order:
            calls = [(make(TWILIO_FORMAT, VONAGE_FORMAT), make(VONAGE_FORMAT, TWILIO_FORMAT)) for _ in range(streams)]
            groups = [calls[i : i + 25] for i in range(0, streams, 25)]
            costs = []
            for frame_in, frame_out in zip(inbound, outbound, strict=False):
                for group in groups:
                    start = clock()
                    for up, down in group:
                        up(frame_in)
                        down(frame_out)
                    costs.append((clock() - start) / len(group))
            if r:
                times[name].append(statistics.median(costs) / 1000)
    return times


def batch_modes_us(streams: int, rounds: int, n_frames: int) -> dict[str, list[float]]:
    """Per frame microseconds of ``streams`` calls (a Twilio->Vonage and a Vonage->Twilio stream
    each) fed one frame per stream per iteration, direct vs batched vs scheduled; each round the
    median over iterations, modes alternating order per round, round 0 warms up."""
    inbound, outbound = frames_of(TWILIO_FORMAT, n_frames), frames_of(VONAGE_FORMAT, n_frames)
    clock = time.perf_counter_ns
    pending: list[object] = []

    def direct() -> Callable[[bytes, bytes], None]:
        calls = [
            (Transcoder(TWILIO_FORMAT, VONAGE_FORMAT).process, Transcoder(VONAGE_FORMAT, TWILIO_FORMAT).process)
            for _ in range(streams)
        ]

        def iteration(frame_in: bytes, frame_out: bytes) -> None:
            for up, down in calls:
                up(frame_in)
                down(frame_out)

        return iteration

    def batched() -> Callable[[bytes, bytes], None]:
        core = BatchTranscoder(min_group=2)  # every group batched: where batching starts to pay
        calls = [
            (Transcoder(TWILIO_FORMAT, VONAGE_FORMAT), Transcoder(VONAGE_FORMAT, TWILIO_FORMAT)) for _ in range(streams)
        ]

        def iteration(frame_in: bytes, frame_out: bytes) -> None:
            jobs = []
            for up, down in calls:
                jobs.append((up, frame_in))
                jobs.append((down, frame_out))
            core.run(jobs)

        return iteration

    def scheduled() -> Callable[[bytes, bytes], None]:
        scheduler = BatchScheduler(pending.append)
        calls = [
            (
                StreamTranscoder(TWILIO_FORMAT, VONAGE_FORMAT, scheduler),
                StreamTranscoder(VONAGE_FORMAT, TWILIO_FORMAT, scheduler),
            )
            for _ in range(streams)
        ]
        sink: list[bytes] = []
        done = sink.append

        def iteration(frame_in: bytes, frame_out: bytes) -> None:
            for up, down in calls:
                up.submit(frame_in, done)
                down.submit(frame_out, done)
            if pending:  # what the loop's call_soon would run (nothing is queued for one call)
                pending.clear()
                scheduler.run()
            sink.clear()

        return iteration

    makers = {"direct": direct, "batched": batched, "scheduled": scheduled}

    def measure(name: str) -> float:
        iteration = makers[name]()
        costs = []
        for frame_in, frame_out in zip(inbound, outbound, strict=True):
            start = clock()
            iteration(frame_in, frame_out)
            costs.append((clock() - start) / (2 * streams))
        return statistics.median(costs) / 1000

    return interleaved(list(makers), rounds, measure)


def paired_ratio(times: dict[str, list[float]], name: str, reference: str) -> float:
    """Median over rounds of the per-round ratio: robust to the machine speeding up or slowing down."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference], strict=False))


def load() -> str:
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per pipeline (default 15)")
    parser.add_argument("--frames", type=int, default=1000, help="20 ms frames per round (default 1000)")
    parser.add_argument("--no-extra", dest="extra", action="store_false", help="skip the 24 kHz agent legs")
    parser.add_argument(
        "--streams", default="1,100,400", help="server-like runs: calls interleaved (default 1,100,400)"
    )
    parser.add_argument("--batch", help="only the batching table: calls per loop iteration, e.g. 1,2,10,50,100,250")
    args = parser.parse_args()

    blas = {k: v for k, v in os.environ.items() if k.startswith(("OPENBLAS", "OMP_", "MKL_"))}
    print(
        f"python {platform.python_version()}  numpy {np.__version__}  soxr {soxr.__version__}  "
        f"cpu {platform.processor() or platform.machine()} x{os.cpu_count()}  env {blas or '-'}"
    )
    for a, b in ((8000, 16000), (16000, 8000)):
        bank = polyphase_bank(a, b)
        print(
            f"gateway filter {a}->{b}: {bank.taps.size} taps (L={bank.up}, M={bank.down}), "
            f"block {bank.block_in} in -> {bank.block_out} out, delay {bank.delay} samples "
            f"({1000 * bank.delay / b:.2f} ms), designed rejection {bank.stopband_db:.1f} dB"
        )
    if args.batch:
        print(
            f"batching: N calls, one frame per stream (2N streams) per loop iteration; us per frame, "
            f"median of {args.rounds} rounds x {args.frames} iterations (each round the median iteration); "
            f"load average {load()}"
        )
        print(
            f"{'N':>5} {'direct':>8} {'batched':>8} {'scheduled':>10} {'batched/direct':>15} {'scheduled/direct':>17}"
        )
        for n in (int(v) for v in args.batch.split(",") if v):
            times = batch_modes_us(n, args.rounds, max(50, args.frames // max(1, n)))
            med = {name: statistics.median(values) for name, values in times.items()}
            print(
                f"{n:>5} {med['direct']:>8.2f} {med['batched']:>8.2f} {med['scheduled']:>10.2f} "
                f"{paired_ratio(times, 'batched', 'direct'):>14.2f}x {paired_ratio(times, 'scheduled', 'direct'):>16.2f}x"
                f"   load {load()}"
            )
        return
    print(
        f"timing: median (min) of {args.rounds} interleaved rounds x {args.frames} frames of 20 ms, each round "
        f"the median of 25-frame segments; "
        f"quality on each resampling stage, PCM16 in/out; load average {load()}\n"
    )

    audioop_name, soxr_name = list(PIPELINES)[1:]
    header = (
        f"{'direction':<24} {'pipeline':<28} {'us/frame':>15} {'x audioop':>10} {'x soxr':>7} "
        f"{'reject dB':>10} {'chunk err':>10}"
    )
    print(header)
    print("-" * len(header))
    totals: dict[str, float] = {}
    for src, dst in ((TWILIO_FORMAT, VONAGE_FORMAT), (VONAGE_FORMAT, TWILIO_FORMAT)):
        makers = {name: make for name, (make, _) in PIPELINES.items()}
        times = time_pipelines(makers, src, dst, args.rounds, args.frames)
        label = f"{src.encoding} {src.sample_rate // 1000}k -> {dst.encoding} {dst.sample_rate // 1000}k"
        for i, (name, (_, make_resampler)) in enumerate(PIPELINES.items()):
            median = statistics.median(times[name])
            totals[name] = totals.get(name, 0.0) + median
            rejection = rejection_db(make_resampler, src.sample_rate, dst.sample_rate)
            error = chunked_error(make_resampler, src.sample_rate, dst.sample_rate)
            print(
                f"{label if i == 0 else '':<24} {name:<28} {median:>7.2f} ({min(times[name]):5.2f}) "
                f"{paired_ratio(times, name, audioop_name):>9.2f}x {paired_ratio(times, name, soxr_name):>6.2f}x "
                f"{rejection:>10.1f} {error:>6d} LSB"
            )
    print()
    for name, total in totals.items():
        print(
            f"{name:<28} both directions {total:6.2f} us/frame "
            f"-> ~{1e6 / (50 * total):,.0f} calls per core (transcoding only)"
        )

    print("\nnumpy calls per steady 20 ms frame in the gateway:")
    for direction, calls in NUMPY_CALLS.items():
        print(f"  {direction:<46} {len(calls)}  {', '.join(calls) or '-'}")

    streams = [int(n) for n in args.streams.split(",") if n]
    if streams:
        print(
            f"\nserver-like: N calls, a Twilio->Vonage and a Vonage->Twilio frame each, in turn "
            f"(us per frame pair, median of {max(3, args.rounds // 3)} rounds; x tight = vs the tight loop above)"
        )
        makers = {name: make for name, (make, _) in PIPELINES.items()}
        for n in streams:
            times = server_like_pair_us(makers, n, max(3, args.rounds // 3), max(25, args.frames // max(1, n // 4)))
            cells = [
                f"{name.split()[0]} {statistics.median(times[name]):6.2f} "
                f"(x tight {statistics.median(times[name]) / totals[name]:.2f})"
                for name in makers
            ]
            print(
                f"  N={n:<5} "
                + "   ".join(cells)
                + f"   gateway/soxr {paired_ratio(times, next(iter(makers)), soxr_name):.2f}x"
                f"   load {load()}"
            )

    if args.extra:
        print(f"\nother legs, gateway vs soxr {SOXR_QUALITY} (us per 20 ms frame, median; paired ratio)")
        makers = {"gateway": gateway_frames, "soxr": soxr_frames_any}
        for src, dst in (
            (TWILIO_FORMAT, AudioFormat("pcm16", 24000)),
            (AudioFormat("pcm16", 24000), TWILIO_FORMAT),
            (VONAGE_FORMAT, AudioFormat("pcm16", 24000)),
            (AudioFormat("pcm16", 24000), VONAGE_FORMAT),
        ):
            times = time_pipelines(makers, src, dst, max(5, args.rounds // 2), args.frames // 2)
            print(
                f"  {src!s:>12} -> {dst!s:<12} gateway {statistics.median(times['gateway']):6.2f}  "
                f"soxr {statistics.median(times['soxr']):6.2f}  ratio {paired_ratio(times, 'gateway', 'soxr'):.2f}x"
            )


if __name__ == "__main__":
    main()
