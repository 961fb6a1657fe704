"""Numbered plain-SQL migrations, one folder per database; see README.md here."""
