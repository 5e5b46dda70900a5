"""The baseline of bench/api_load.py: a minimal Falcon endpoint, served by the
same gunicorn config as the API (``gunicorn -c api/gunicorn_conf.py
'bench.api_minimal:create_app()'``). No middleware, no database, no Redis:
what one request costs in gunicorn + Falcon alone on this machine."""

from __future__ import annotations

import falcon


class Hello:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"data": {"hello": "world"}, "meta": {}}


def create_app() -> falcon.App:
    app = falcon.App()
    app.add_route("/hello", Hello())
    return app
