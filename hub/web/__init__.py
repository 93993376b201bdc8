"""The hub's web front-end: sign-in and sessions (``auth``), the pages and their static files
(``pages``, ``static/``: plain HTML, CSS and ES modules shipped in the package, no build step,
no CDN)."""
