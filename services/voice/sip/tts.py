"""Text to speech: espeak-ng renders the message, sox resamples it to 8 kHz 16-bit mono PCM.

Rendered audio is kept in a bounded LRU cache per (text, voice): the same reminder to many
borrowers is rendered once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict

from services.voice.sip.settings import SipSettings

log = logging.getLogger(__name__)


class TtsError(RuntimeError):
    """espeak-ng or sox failed."""


class Tts:
    """espeak-ng + sox, with an LRU cache."""

    def __init__(self, settings: SipSettings) -> None:
        self.settings = settings
        self._cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self.renders = 0  # how many times espeak-ng ran (cache misses)

    def voice(self, locale: str | None) -> str:
        """The espeak-ng voice for a locale: by language (`zh-CN` → zh), else the default."""
        language = (locale or "").replace("_", "-").split("-")[0].lower()
        voices = self.settings.tts_voices
        return voices.get(language) or voices[self.settings.tts_default_language]

    async def render(self, text: str, locale: str | None) -> bytes:
        """The message as 8 kHz 16-bit signed little-endian mono PCM."""
        key = (text, self.voice(locale))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        wav = await self._run(
            [
                self.settings.espeak_path,
                "-v",
                key[1],
                "-s",
                str(self.settings.tts_speed_wpm),
                "--stdout",
            ],
            text.encode(),
        )
        pcm = await self._run(
            [
                self.settings.sox_path,
                "-q",
                "-t",
                "wav",
                "-",
                "-t",
                "raw",
                "-r",
                "8000",
                "-c",
                "1",
                "-e",
                "signed-integer",
                "-b",
                "16",
                "-L",
                "-",
            ],
            wav,
        )
        self.renders += 1
        self._cache[key] = pcm
        while len(self._cache) > self.settings.tts_cache_size:
            self._cache.popitem(last=False)
        return pcm

    async def _run(self, argv: list[str], data: bytes) -> bytes:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise TtsError(f"{argv[0]}: {exc.strerror}") from None
        try:
            out, err = await asyncio.wait_for(proc.communicate(data), self.settings.tts_timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise TtsError(f"{argv[0]} timed out") from None
        if proc.returncode != 0 or not out:
            detail = err.decode("utf-8", "replace").strip()[:200]
            raise TtsError(f"{argv[0]} exited {proc.returncode}: {detail}")
        return out
