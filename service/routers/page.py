"""The web page at / (static files shipped in the package: plain HTML, JS and CSS, no CDN,
no build step), GET /session (who the page's key is) and GET /models/{name}/calibration
(the held-out score distribution the page draws scores against)."""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from core.registry import MODEL_NAME_RE, RegistryError, UnknownModel

from ..deps import ServicesDep, UsePrincipal
from ..schemas import Calibration, SessionInfo, errors

STATIC = Path(__file__).resolve().parent.parent / "static"
HISTOGRAM_BINS = 40

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    # no-cache: a service upgrade must not leave browsers on an old page
    return FileResponse(STATIC / "index.html", media_type="text/html",
                        headers={"Cache-Control": "no-cache"})


# ReDoc's bundle (from fastapi-offline) shows a logo it loads from cdn.redoc.ly, a request to
# another site on every visit (and a console error offline).  The page is served with the same
# bundle, the logo's address pointed at a file of ours; nothing else in it is changed.
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"
REDOC_LOCAL_LOGO = b"/static/app/redoc-logo.svg"
REDOC_JS = "/static/redoc/redoc.standalone.js"
_redoc_bundle: bytes | None = None


def redoc_bundle() -> bytes:
    global _redoc_bundle
    if _redoc_bundle is None:
        import fastapi_offline

        source = Path(fastapi_offline.__file__).parent / "static" / "redoc.standalone.js"
        _redoc_bundle = source.read_bytes().replace(REDOC_CDN_LOGO, REDOC_LOCAL_LOGO)
    return _redoc_bundle


@router.get("/redoc", include_in_schema=False)
async def redoc(request: Request) -> HTMLResponse:
    from fastapi.openapi.docs import get_redoc_html

    return get_redoc_html(openapi_url=request.app.openapi_url,
                          title=request.app.title + " - ReDoc", redoc_js_url=REDOC_JS,
                          with_google_fonts=False,
                          redoc_favicon_url="/static/docs/favicon.png")


@router.get(REDOC_JS, include_in_schema=False)
async def redoc_js() -> Response:
    return Response(await run_in_threadpool(redoc_bundle), media_type="text/javascript",
                    headers={"Cache-Control": "max-age=3600"})


@router.get("/session", response_model=SessionInfo, tags=["session"],
            responses=errors(401))
async def session(principal: UsePrincipal) -> SessionInfo:
    """The key's id and scopes (the page shows admin controls only to admin keys)."""
    return SessionInfo(key_id=principal.key_id, scopes=sorted(principal.scopes))


def cdf_at(value: float, quantiles: list[float]) -> float:
    """P(score <= value) from evenly spaced quantiles (linear between them)."""
    if value <= quantiles[0]:
        return 0.0
    if value >= quantiles[-1]:
        return 1.0
    last = len(quantiles) - 1
    i = bisect.bisect_right(quantiles, value) - 1
    lo, hi = quantiles[i], quantiles[i + 1]
    within = (value - lo) / (hi - lo) if hi > lo else 1.0
    return (i + within) / last


def histogram(quantiles: list[float], count: int, bins: int = HISTOGRAM_BINS
              ) -> dict[str, list[float]]:
    """Counts of held-out scores per equal-width bin, rebuilt from the stored quantiles."""
    lo, hi = quantiles[0], quantiles[-1]
    if not hi > lo:
        return {"edges": [lo, hi], "counts": [float(count)]}
    edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    cdf = [cdf_at(e, quantiles) for e in edges]
    return {"edges": edges,
            "counts": [round((cdf[i + 1] - cdf[i]) * count, 3) for i in range(bins)]}


def read_calibration(services, name: str, version: int | None) -> Calibration:
    if not MODEL_NAME_RE.match(name):
        raise UnknownModel(f"unknown model {name!r}")
    spec = name if version is None else f"{name}:{version}"
    name, version = services.registry.resolve(spec, default_model=name)
    try:
        manifest = services.registry.manifest(name, version)
    except RegistryError as exc:
        raise HTTPException(409, str(exc)) from None
    calibration: dict[str, Any] | None = manifest.get("calibration")
    if not calibration or len(calibration.get("quantiles") or []) < 2:
        raise HTTPException(409, f"model {name}:{version} is not calibrated; run "
                                 "`debm calibrate` on its checkpoint")
    quantiles = [float(q) for q in calibration["quantiles"]]
    return Calibration(model=f"{name}:{version}", count=int(calibration["count"]),
                       threshold=float(calibration["threshold"]),
                       false_reject_rate=calibration.get("false_reject_rate"),
                       score=calibration.get("score", "texture"),
                       sigma=calibration.get("sigma"), draws=calibration.get("draws"),
                       quantiles=quantiles,
                       histogram=histogram(quantiles, int(calibration["count"])))


@router.get("/models/{name}/calibration", response_model=Calibration, tags=["models"],
            responses=errors(401, 404, 409, 422))
async def calibration(name: str, services: ServicesDep, principal: UsePrincipal,
                      version: Annotated[int | None, Query(ge=1)] = None) -> Calibration:
    """The held-out score distribution of a model version (default: its default version):
    the quantiles that percentiles are read from, a histogram rebuilt from them, and the
    OOD threshold (scores below it are OOD)."""
    return await run_in_threadpool(read_calibration, services, name, version)
