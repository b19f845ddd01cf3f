"""Local peers of tongda's real providers, for `make demo PROVIDERS=local` and the tests.

Each follows its protocol or published API and is steered by the recipient address like the
sandbox providers of docs/CONTRACT.md, so the demo's scenarios end the same way through the
real provider code:

* `sip`: a SIPp UAS scenario (the voice channel's SIP provider calls it);
* `smtp`: an aiosmtpd relay that bounces `bounce@…` with a DSN to the email service;
* `fcm`: Google's OAuth2 token endpoint and FCM HTTP v1 (the push channel's FCM provider);
* `twilio`: Twilio's Messages and Calls REST API and its signed status callbacks (the SMS
  channel's failover provider in the demo, the Twilio tests' server);
* the SMPP test SMSC lives with the SMPP code (services/sms/smpp/testsmsc.py, `steering=
  "contract"`).

`python -m tools.peers` serves the SMSC, the FCM server, the SMTP relay and the Twilio
server in one process; tools/devstack/peers.py starts it and SIPp beside a stack and
configures the channel services to use them.
"""
