"""A reference admin web page that embeds bulkreset the way a host would (Flask)."""
