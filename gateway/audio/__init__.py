"""Call audio, pure numpy and sans-I/O: G.711, streaming resampling, re-framing, transcoding.

Everything here works on bytes and arrays handed in by the media layer and keeps only the state
a stream needs (filter history, a partial frame, half a PCM16 sample); nothing touches sockets
or files. ``batch`` transcodes many streams' frames in one pass; ``scheduler`` is the one piece
that knows the event loop: it gathers each loop iteration's frames into such a batch.
"""

from .batch import BatchTranscoder
from .codec import (
    AlawDecoder,
    AlawEncoder,
    Encoding,
    MulawDecoder,
    MulawEncoder,
    Pcm16Decoder,
    Pcm16Encoder,
    decoder_for,
    encoder_for,
)
from .filters import SUPPORTED_RATES, PolyphaseBank, polyphase_bank
from .formats import PLIVO_FORMAT, TELNYX_FORMAT, TWILIO_FORMAT, VONAGE_FORMAT, AudioFormat
from .g711 import decode_alaw, decode_mulaw, encode_alaw, encode_mulaw
from .reframer import Reframer
from .resampler import PolyphaseStream, StreamingResampler
from .transcoder import Transcoder

__all__ = [
    "PLIVO_FORMAT",
    "SUPPORTED_RATES",
    "TELNYX_FORMAT",
    "TWILIO_FORMAT",
    "VONAGE_FORMAT",
    "AlawDecoder",
    "AlawEncoder",
    "AudioFormat",
    "BatchTranscoder",
    "Encoding",
    "MulawDecoder",
    "MulawEncoder",
    "Pcm16Decoder",
    "Pcm16Encoder",
    "PolyphaseBank",
    "PolyphaseStream",
    "Reframer",
    "StreamingResampler",
    "Transcoder",
    "decode_alaw",
    "decode_mulaw",
    "decoder_for",
    "encode_alaw",
    "encode_mulaw",
    "encoder_for",
    "polyphase_bank",
]
