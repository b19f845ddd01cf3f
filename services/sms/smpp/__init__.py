"""SMS over SMPP 3.4: the PDU codec, one transceiver session, the provider, a test SMSC."""
