"""The pure core: decisions from messages and records. No network, no database, no clock.

Nothing in this package may import sqlmodel, imapclient, smtplib, jinja2 or read the clock;
time is always passed in as an aware UTC ``datetime``.
"""
