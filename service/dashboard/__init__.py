"""The browser dashboard: server-rendered page shells (Jinja2) and the static scripts that fill
them from the /v1 JSON API. The shells hold no data, so they need no key; every number on a page
comes from a /v1 request that carries the browser's key."""
