"""``DirectRoutes``: the hottest routes answered without FastAPI's per-request machinery.

Why: feedback ingest is one small JSON POST per vote, thousands per second (issue 13 asks for
5,000 events/s on two shared cores). Behind the app's own middleware, each such request still
crossed Starlette's exception middleware, FastAPI's two per-request exit stacks, the router's
scan of every route, and FastAPI's request handler (body/content-type handling, dependency
solving for a lone ``Request`` parameter), around an endpoint that already authenticates and
parses its body by hand (serving/feedback_routes.py). Measured side by side in one run
(`bench/bench_ingest.py --ingest-workers 2 --direct-routes 0,1`, session 18, two runs): single
votes 2,073-2,215 -> 2,683-3,427/s at c=32 and 3,072-3,285 -> 3,534-4,063/s at c=64.

What it does: a pure ASGI middleware placed innermost of the app's own middleware (so the
metrics, the body cap and the widget's CORS still wrap it). For an exact (method, path) it
calls the very endpoint function FastAPI would call, with a plain Starlette ``Request``, and
renders an ``ApiError`` the way the app's error handler does. Everything else (any other path
or method, OpenAPI docs, 405s) goes on to FastAPI unchanged; the routes stay registered there,
so /docs and the schema do not change. Other exceptions propagate as they would from FastAPI
(a bug is a 500 from Starlette's server-error middleware); an HTTPException (the body cap's 413,
raised while the body is read) is answered as the app's handler answers it.
"""
from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request

from serving.errors import ApiError, api_error_response, http_error_response


class DirectRoutes:
    def __init__(self, app, routes: dict[tuple[str, str], APIRoute]):
        self.app = app
        # (method, path) -> (the APIRoute, for the metrics' route label; its endpoint)
        self.routes = {key: (route, route.endpoint) for key, route in routes.items()}

    async def __call__(self, scope, receive, send):
        hit = self.routes.get((scope.get("method"), _route_path(scope))) if scope["type"] == "http" else None
        if hit is None:
            return await self.app(scope, receive, send)
        route, endpoint = hit
        scope["route"] = route      # what the router would set: names the request in /metrics
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except ApiError as exc:
            response = api_error_response(exc)
        except StarletteHTTPException as exc:   # e.g. the body cap's 413, raised while reading
            response = http_error_response(exc)
        await response(scope, receive, send)


def _route_path(scope) -> str:
    """The path the router matches: without the app's root_path (as Starlette's routing)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


def direct_routes_for(app, paths: tuple[str, ...]) -> dict[tuple[str, str], APIRoute]:
    """The app's POST APIRoutes at `paths` (each must exist and take only the request)."""
    found = {}
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path in paths and "POST" in route.methods:
            found[("POST", route.path)] = route
    missing = set(paths) - {p for _, p in found}
    if missing:
        raise RuntimeError(f"direct routes not registered on the app: {sorted(missing)}")
    return found
