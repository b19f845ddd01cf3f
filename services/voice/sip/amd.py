"""A simple answering-machine heuristic (documented as such in docs/providers-voice.md).

At answer, the callee's audio is classified 20 ms frame by frame as speech or silence by its
energy. A person says something short ("Hello?") and waits; a machine plays a long greeting.
So: at least `amd_machine_speech_s` of speech before a pause of `amd_silence_s` → machine;
a pause after shorter speech, or no speech at all for `amd_initial_silence_s` → person.
"""

from __future__ import annotations

import asyncio
from typing import Literal

from services.voice.sip.rtp import FRAME_S
from services.voice.sip.settings import SipSettings

Verdict = Literal["person", "machine"]


class MachineDetector:
    """Fed one energy value per received audio frame (RtpSession.on_energy)."""

    def __init__(self, settings: SipSettings) -> None:
        self.settings = settings
        self.speech_s = 0.0  # speech heard in total
        self.silence_s = 0.0  # silence since the last speech frame
        self.verdict: Verdict | None = None
        self.changed = asyncio.Event()  # set after every frame

    def feed(self, energy: float) -> None:
        s = self.settings
        if energy >= s.amd_speech_rms:
            self.speech_s += FRAME_S
            self.silence_s = 0.0
        else:
            self.silence_s += FRAME_S
        if self.verdict is None:
            if self.speech_s >= s.amd_machine_speech_s:
                self.verdict = "machine"
            elif self.speech_s > 0 and self.silence_s >= s.amd_silence_s:
                self.verdict = "person"
        self.changed.set()

    async def decide(self) -> Verdict:
        """Wait for a verdict; no speech within `amd_initial_silence_s` is a person, and so
        is a callee who sends no audio at all."""
        s = self.settings
        loop = asyncio.get_running_loop()
        start = loop.time()
        limit = s.amd_initial_silence_s
        while self.verdict is None:
            if self.speech_s > 0:  # speaking: wait long enough to tell a greeting
                limit = s.amd_initial_silence_s + s.amd_machine_speech_s + s.amd_silence_s
            remaining = start + limit - loop.time()
            if remaining <= 0:
                return "machine" if self.speech_s >= s.amd_machine_speech_s else "person"
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                continue
        return self.verdict

    async def end_of_greeting(self) -> bool:
        """After a machine verdict: wait for the pause after the greeting (and its beep), at
        most `amd_max_greeting_s`. True when the pause came."""
        s = self.settings
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.amd_max_greeting_s
        while self.silence_s < s.amd_silence_s:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(remaining, s.amd_silence_s))
            except TimeoutError:
                return True  # no audio at all for a while: silence
        return True
