"""The Falcon WSGI app: ``gunicorn -c api/gunicorn_conf.py 'api:create_app()'``.

``create_app`` builds the app from a ``Settings`` (default: the environment)
and a ``Deps`` (default: connections made from those settings); tests pass
their own. Routes that other parts of the product serve through this process
(``/health``, ``/metrics``, ``/status``) come in through ``extra_routes``; when
it is not given, a module ``monitoring.http`` with a function
``routes(deps, settings) -> [(path, resource), ...]`` is used if it exists.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Iterable
from typing import Any

import falcon

from schema.settings import Settings

RouteList = Iterable[tuple[str, Any]]
ExtraRoutes = RouteList | Callable[[Any, Settings], RouteList] | None
# The operations routes (/health, /metrics, /status), if that module exists.
OPS_ROUTES_MODULE = "monitoring.http"


def default_extra_routes() -> ExtraRoutes:
    """``monitoring.http.routes`` when present. A module that exists but fails to
    import raises (a broken /health must not silently disappear)."""
    if importlib.util.find_spec(OPS_ROUTES_MODULE) is None:
        return None
    return importlib.import_module(OPS_ROUTES_MODULE).routes


def create_app(settings: Settings | None = None, deps: Any = None, extra_routes: ExtraRoutes = None) -> falcon.App:
    """The API app. ``extra_routes``: (path, resource) pairs, or a callable
    ``(deps, settings) -> pairs`` for resources that need the app's dependencies."""
    # Imported here so `python -m api token` and tools that only need settings
    # do not pay for spectree/pydantic model building.
    from spectree.plugins.falcon_plugin import OpenAPI

    from api.auth import AuthMiddleware
    from api.deps import Deps
    from api.errors import render_error
    from api.middleware import BodyMiddleware, DbMiddleware, LatencyMiddleware
    from api.resources.admin import RefreshResource
    from api.resources.chains import ChainPostsResource, ChainsResource
    from api.resources.investors import InvestorsResource
    from api.resources.leaderboard import LeaderboardBuildersResource, LeaderboardProjectsResource
    from api.resources.me import ConversationsResource, DashboardResource, IntroStatsResource
    from api.resources.projects import CommentsResource, FeedResource, ProjectResource, UpvoteResource
    from api.resources.search import SearchResource
    from api.spec import api_spec

    settings = settings or Settings.from_env()
    deps = deps or Deps.connect(settings)
    app = falcon.App(middleware=[
        LatencyMiddleware(),
        DbMiddleware(deps.engine, deps.write_engine),
        AuthMiddleware(settings.jwt_secret),
        BodyMiddleware(settings.max_body_bytes),
    ])
    app.add_route("/api/projects", FeedResource(deps))
    app.add_route("/api/projects/{project_id:uuid}", ProjectResource(deps))
    app.add_route("/api/projects/{project_id:uuid}/upvote", UpvoteResource(deps))
    app.add_route("/api/projects/{project_id:uuid}/comments", CommentsResource(deps))
    app.add_route("/api/leaderboard/projects", LeaderboardProjectsResource(deps))
    app.add_route("/api/leaderboard/builders", LeaderboardBuildersResource(deps))
    app.add_route("/api/dashboard", DashboardResource(deps))
    app.add_route("/api/conversations", ConversationsResource(deps))
    app.add_route("/api/intros/stats", IntroStatsResource(deps))
    app.add_route("/api/search", SearchResource(deps))
    app.add_route("/api/chains", ChainsResource(deps))
    app.add_route("/api/chains/{chain_id:uuid}/posts", ChainPostsResource(deps))
    app.add_route("/api/investors", InvestorsResource(deps))
    app.add_route("/api/admin/refresh/{view_name}", RefreshResource(deps))

    if extra_routes is None:
        extra_routes = default_extra_routes()
    routes = extra_routes(deps, settings) if callable(extra_routes) else (extra_routes or ())
    for path, resource in routes:
        app.add_route(path, resource)

    # One error shape: Falcon picks the most specific handler, so HTTPError is
    # registered too (else Falcon's own 404/405/400 keep Falcon's body).
    app.add_error_handler(Exception, render_error)
    app.add_error_handler(falcon.HTTPError, render_error)

    # After every route: spectree builds the document from the router.
    api_spec.register(app)  # /apidoc/openapi.json, /apidoc/swagger, /apidoc/redoc, ...
    app.add_route("/openapi.json", OpenAPI(api_spec.spec))
    return app
