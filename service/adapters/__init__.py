"""Thin edges around the core: IMAP, SMTP, files, database, templates."""
