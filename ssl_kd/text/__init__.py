"""Text support: GLUE tokenisation and caching, text views, official metrics, sentence reports."""
