"""The web dashboard: a static page and one script that read the JSON API and event stream."""
