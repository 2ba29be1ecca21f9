"""Write the tiny WAV files under ``manifests/example/audio`` that the demo and tests use.

They are committed, so this script only documents how they were made and can rebuild them
byte for byte: 8 kHz mono 16-bit sine tones from the standard library alone (no sox, no
numpy), a few KB each, distinct in pitch and length so each has its own sha256.

Usage: ``python scripts/make_example_audio.py [OUT_DIR]`` (default: the committed folder).
"""

from __future__ import annotations

import math
import struct
import sys
import wave
from pathlib import Path

SAMPLE_RATE = 8000
AMPLITUDE = 0.3 * 32767

#: relative path → (frequency in Hz, seconds)
TONES: dict[str, tuple[float, float]] = {
    "hello.wav": (440.0, 0.3),
    "day1/meeting.wav": (523.25, 0.5),
    "day1/call.wav": (659.25, 0.2),
}


def tone(frequency: float, seconds: float) -> bytes:
    """Little-endian 16-bit PCM of a sine, faded in and out so it does not click."""
    count = int(SAMPLE_RATE * seconds)
    fade = SAMPLE_RATE // 100
    samples: list[int] = []
    for n in range(count):
        envelope = min(1.0, n / fade, (count - 1 - n) / fade)
        value = AMPLITUDE * envelope * math.sin(2 * math.pi * frequency * n / SAMPLE_RATE)
        samples.append(round(value))
    return struct.pack(f"<{count}h", *samples)


def write_wav(path: Path, frames: bytes) -> None:
    """A plain PCM WAV that every decoder (and the emulator's header parser) understands."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(frames)


def main(argv: list[str]) -> int:
    """Write every tone and print where it went."""
    default = Path(__file__).resolve().parent.parent / "manifests" / "example" / "audio"
    out_dir = Path(argv[1]) if len(argv) > 1 else default
    for name, (frequency, seconds) in TONES.items():
        path = out_dir / name
        write_wav(path, tone(frequency, seconds))
        print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
