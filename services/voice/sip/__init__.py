"""Outbound voice calls over SIP (RFC 3261, UDP) with the message spoken over RTP.

A small UAC on asyncio: `transport` (the shared UDP socket), `message` (SIP parsing),
`digest` (401/407), `call` (INVITE/CANCEL/ACK/BYE and the outcome), `sdp`, `rtp` (G.711
frames, RFC 4733 DTMF), `g711`, `amd` (the answering-machine heuristic), `tts` (espeak-ng)
and `provider` (the channel provider). See docs/providers-voice.md.
"""
