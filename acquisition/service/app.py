"""The HTTP face of the station: JSON API, live status (SSE) and the page.

Public without a session: ``/`` and ``/static/*`` (the page), ``/api/health``,
``/api/login``, ``/openapi.json``, ``/docs``. Everything else, the event
stream included, needs the session cookie set by ``/api/login`` (or the same
token as ``Authorization: Bearer``). Route functions are plain ``def``: FastAPI
runs them on its thread pool, so serial and disk work never block the loop.

Every response a route can give is declared in the OpenAPI schema; errors are
``{"detail": "<one sentence>"}`` (400 malformed JSON, 401 no session, 403 role,
404 unknown, 409 out of order or refused by the station, 422 invalid field).
"""

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse, ServerSentEvent
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from acquisition import __version__
from acquisition.service import auth
from acquisition.service.runtime import Runtime
from acquisition.service.store import User
from acquisition.service.workflow import WorkflowError

STATIC = Path(__file__).resolve().parent.parent / "static"


# ---------------------------------------------------------------------- models
class Error(BaseModel):
    detail: str


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class UserOut(BaseModel):
    username: str
    role: Literal["technician", "physicist", "admin"]


class UserIn(LoginIn):
    role: Literal["technician", "physicist", "admin"]
    password: str = Field(min_length=8, max_length=256)


class Tube(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kv: float = Field(ge=40, le=150, description="tube voltage, kV")
    ma: float = Field(gt=0, le=1000, description="tube current, mA")
    ms: float = Field(gt=0, le=5000, description="exposure time, ms")


class Technique(BaseModel):
    model_config = ConfigDict(extra="forbid")
    A: Tube
    B: Tube


class Segments(BaseModel):
    reference_segment: str = Field(min_length=1)
    moving_segment: str = Field(min_length=1)
    segments: dict[str, list[Annotated[list[float], Field(min_length=3, max_length=3)]]]


class ExamIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    patient_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    patient_name: str = Field(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\\]+$")
    birth_date: dt.date | None = None
    region: Literal["spine", "upper", "lower"]
    reference_exam_id: int | None = Field(default=None, ge=1, le=2**53)
    series_length: int = Field(default=1, ge=1, le=20, description="stereo pairs (dynamic)")
    technique: Technique | None = Field(default=None, description="default: region preset")
    segments: Segments | None = None


class RetakeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=500)


class AcceptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attempt: int | None = Field(default=None, ge=1, le=10_000, description="default: latest")


class Attempt(BaseModel):
    number: int
    pair_index: int
    status: str
    exposure_id: int | None
    requested: dict[str, Any]
    report: dict[str, Any] | None
    images: dict[str, Any]
    cage_checks: dict[str, Any]
    result: dict[str, Any] | None
    migration: dict[str, Any] | None
    error: str | None
    created: str
    updated: str


class ExamOut(BaseModel):
    id: int
    patient_id: str
    patient_name: str
    birth_date: str | None
    region: str
    procedure_code: str
    reference_exam_id: int | None
    series_length: int
    state: str
    technique: dict[str, Any]
    segments: dict[str, Any] | None
    used_attempts: list[int]
    migration: dict[str, Any] | None
    pacs: dict[str, Any] | None
    operator: str
    created: str
    updated: str
    attempts: list[Attempt]
    actions: list[str]


class HoldOut(BaseModel):
    exam_id: int
    state: str


class AuditOut(BaseModel):
    seq: int
    time: str
    operator: str
    action: str
    exam_id: int | None
    details: dict[str, Any]
    prev_hash: str
    hash: str


class SimulatorIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    interlock: Literal["door", "collimator", "detector_a_ready", "detector_b_ready"] | None = None
    closed: bool = True
    hand_switch: Literal["off", "prep", "expose"] | None = None


class VerifyOut(BaseModel):
    ok: bool
    entries: int
    first_bad_seq: int | None
    message: str


def _err(*codes: int) -> dict:
    text = {
        400: "Malformed request body",
        401: "Not logged in",
        403: "Role not allowed",
        404: "Not found",
        409: "Not possible in the exam's state, or refused by the station",
        422: "Invalid field",
        429: "Too many failed logins: wait (Retry-After)",
    }
    return {c: {"model": Error, "description": text[c]} for c in codes}


AUTH = _err(401, 403)
BODY = _err(400, 422)


# ---------------------------------------------------------------------- app
def create_app(runtime: Runtime, *, own_runtime: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.bus.bind(asyncio.get_running_loop())
        if own_runtime:
            await asyncio.to_thread(runtime.start)
        try:
            yield
        finally:
            runtime.bus.bind(None)
            if own_runtime:
                await asyncio.to_thread(runtime.close)

    app = FastAPI(
        title="RSA station",
        version=__version__,
        description="Technician workflow, live cage check, reconstruction and QC.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    cookie_scheme = APIKeyCookie(name=auth.SESSION_COOKIE, auto_error=False)
    bearer_scheme = HTTPBearer(auto_error=False)

    # -------------------------------------------------------------- errors
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errs = exc.errors()
        first = errs[0] if errs else {}
        if first.get("type") == "json_invalid":
            ctx = first.get("ctx", {}).get("error", "")
            return JSONResponse({"detail": f"The request body is not valid JSON: {ctx}"}, 400)
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        msg = first.get("msg", "invalid")
        more = f" (and {len(errs) - 1} more)" if len(errs) > 1 else ""
        return JSONResponse({"detail": f"{loc}: {msg}{more}"}, 422)

    @app.exception_handler(WorkflowError)
    async def _conflict(request: Request, exc: WorkflowError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, 409)

    @app.exception_handler(LookupError)
    async def _missing(request: Request, exc: LookupError) -> JSONResponse:
        return JSONResponse({"detail": str(exc).strip("'\"")}, 404)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, exc.status_code, headers=exc.headers)

    # -------------------------------------------------------------- auth
    def session_token(
        request: Request,
        cookie: Annotated[str | None, Depends(cookie_scheme)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    ) -> str | None:
        return cookie or (bearer.credentials if bearer else None)

    def current_user(token: Annotated[str | None, Depends(session_token)]) -> User:
        user = runtime.store.session_user(token)
        if user is None:
            raise StarletteHTTPException(401, "Log in first.")
        return user

    def need(permission: str):
        def dep(user: Annotated[User, Depends(current_user)]) -> User:
            if not auth.allowed(user.role, permission):
                raise StarletteHTTPException(
                    403, f"A {user.role} may not do this; it needs the {permission} right."
                )
            return user

        return dep

    Exam = Annotated[User, Depends(need("exam"))]
    View = Annotated[User, Depends(need("view"))]
    ExamId = Annotated[int, PathParam(ge=1, le=2**53)]

    # -------------------------------------------------------------- public
    @app.get("/api/health", response_model=Health, tags=["public"])
    def health() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok", "version": __version__}

    throttle = auth.LoginThrottle()

    @app.post(
        "/api/login", response_model=UserOut, tags=["public"], responses=_err(400, 401, 422, 429)
    )
    def login(body: LoginIn, response: Response) -> dict:
        """Start a session; sets the session cookie (HttpOnly, SameSite=Strict).

        After 5 wrong passwords for one user name within 15 minutes, further
        attempts for that name get 429 with Retry-After, unchecked. (Per name,
        not per address: the station's users share one workstation, and one
        person's typing must not lock the others out.)
        """
        keys = ("user:" + body.username.lower(),)
        wait = throttle.retry_after(*keys)
        if wait > 0:
            raise StarletteHTTPException(
                429,
                f"Too many wrong passwords: try again in {int(wait // 60) + 1} min.",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        token = runtime.store.login(body.username, body.password)
        if token is None:
            throttle.failed(*keys)
            raise StarletteHTTPException(401, "Wrong user name or password.")
        throttle.succeeded(*keys)
        response.set_cookie(
            auth.SESSION_COOKIE,
            token,
            httponly=True,
            samesite="strict",
            max_age=int(auth.SESSION_HOURS * 3600),
        )
        user = runtime.store.session_user(token)
        return {"username": user.username, "role": user.role}

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # -------------------------------------------------------------- session
    @app.post("/api/logout", status_code=204, tags=["session"], responses=_err(401))
    def logout(
        response: Response,
        user: Annotated[User, Depends(current_user)],
        token: Annotated[str | None, Depends(session_token)],
    ) -> Response:
        runtime.store.logout(token or "", user.username)
        response = Response(status_code=204)
        response.delete_cookie(auth.SESSION_COOKIE)
        return response

    @app.get("/api/me", response_model=UserOut, tags=["session"], responses=_err(401))
    def me(user: Annotated[User, Depends(current_user)]) -> dict:
        return {"username": user.username, "role": user.role}

    @app.get("/api/users", response_model=list[UserOut], tags=["admin"], responses=AUTH)
    def users(user: Annotated[User, Depends(need("users"))]) -> list[dict]:
        return [{"username": u.username, "role": u.role} for u in runtime.store.users()]

    @app.post(
        "/api/users",
        response_model=UserOut,
        status_code=201,
        tags=["admin"],
        responses=AUTH | BODY | _err(409),
    )
    def add_user(body: UserIn, user: Annotated[User, Depends(need("users"))]) -> dict:
        u = runtime.store.add_user(body.username, body.password, body.role, by=user.username)
        return {"username": u.username, "role": u.role}

    # -------------------------------------------------------------- status
    @app.get("/api/status", tags=["station"], responses=AUTH)
    def status(user: View) -> dict[str, Any]:
        """Controller state, interlocks, hand switch, tube heat, detectors, active exam."""
        return runtime.status()

    @app.get(
        "/api/events",
        response_class=EventSourceResponse,
        tags=["station"],
        responses=AUTH | _err(422),
    )
    async def events(
        user: View,
        limit: Annotated[
            int | None, Query(ge=1, le=100_000, description="close after this many events")
        ] = None,
    ) -> AsyncIterator[ServerSentEvent]:
        """Live status as Server-Sent Events: ``status``, ``exam``, ``progress``,
        ``cage_check``, ``fault``, ``interlock``, ``hand_switch``. Starts with the
        current status and active exam."""
        q = runtime.bus.subscribe()
        try:
            sent = 0
            for ev in runtime.bus.snapshot():
                yield ServerSentEvent(data=ev.to_dict(), event=ev.kind, id=str(ev.id))
                sent += 1
                if limit is not None and sent >= limit:
                    return
            while True:
                ev = await q.get()
                yield ServerSentEvent(data=ev.to_dict(), event=ev.kind, id=str(ev.id))
                sent += 1
                if limit is not None and sent >= limit:
                    return
        finally:
            runtime.bus.unsubscribe(q)

    @app.post(
        "/api/simulator",
        tags=["station"],
        responses=AUTH | BODY | _err(404),
    )
    def simulator(body: SimulatorIn, user: Exam) -> dict[str, Any]:
        """Simulator only: open or close an interlock, or work the board's
        physical hand switch. 404 when the station runs on real hardware."""
        runtime.hw.simulator_control(body.interlock, body.closed, body.hand_switch)
        runtime.store.record(
            user.username, "simulator_control", None, body.model_dump(exclude_none=True)
        )
        return runtime.status()

    # -------------------------------------------------------------- exams
    @app.post(
        "/api/exams",
        response_model=ExamOut,
        status_code=201,
        tags=["exam"],
        responses=AUTH | BODY | _err(404, 409),
    )
    def register(body: ExamIn, user: Exam) -> dict:
        """Register patient and exam. The region sets the procedure code
        (0348T spine, 0349T upper, 0350T lower) and the technique preset; a
        follow-up names its completed reference exam."""
        return runtime.register(user.username, body.model_dump(mode="json"))

    @app.get("/api/exams", response_model=list[ExamOut], tags=["exam"], responses=AUTH | _err(422))
    def list_exams(user: View, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> list[dict]:
        return [runtime.exam(e["id"]) for e in runtime.store.exams(limit)]

    @app.get(
        "/api/exams/{exam_id}",
        response_model=ExamOut,
        tags=["exam"],
        responses=AUTH | _err(404, 422),
    )
    def get_exam(exam_id: ExamId, user: View) -> dict:
        return runtime.exam(exam_id)

    step_errors = AUTH | _err(404, 409, 422)

    @app.put(
        "/api/exams/{exam_id}/technique",
        response_model=ExamOut,
        tags=["exam"],
        responses=step_errors | BODY,
    )
    def set_technique(exam_id: ExamId, body: Technique, user: Exam) -> dict:
        """Technique per tube (kV, mA, ms); only before arming."""
        return runtime.set_technique(user.username, exam_id, body.model_dump())

    @app.post(
        "/api/exams/{exam_id}/arm", response_model=ExamOut, tags=["exam"], responses=step_errors
    )
    def arm(exam_id: ExamId, user: Exam) -> dict:
        """Send the technique and arm. Refused (409, with the reason) while an
        interlock is open, a detector is not ready or a tube is over its heat limit."""
        return runtime.arm(user.username, exam_id)

    @app.post(
        "/api/exams/{exam_id}/disarm", response_model=ExamOut, tags=["exam"], responses=step_errors
    )
    def disarm(exam_id: ExamId, user: Exam) -> dict:
        return runtime.disarm(user.username, exam_id)

    @app.post(
        "/api/exams/{exam_id}/hold", response_model=HoldOut, tags=["exam"], responses=step_errors
    )
    def hold(exam_id: ExamId, user: Exam) -> dict:
        """Hold-to-expose keep-alive: send repeatedly (every 100 ms) while the
        button is held; the board exposes while holds keep coming and stops
        when they stop. The board stays the authority."""
        return runtime.hold(user.username, exam_id)

    @app.post(
        "/api/exams/{exam_id}/release",
        response_model=HoldOut,
        tags=["exam"],
        responses=step_errors,
    )
    def release(exam_id: ExamId, user: Exam) -> dict:
        """The hold-to-expose button was released."""
        return runtime.release(user.username, exam_id)

    @app.post(
        "/api/exams/{exam_id}/retake",
        response_model=ExamOut,
        tags=["exam"],
        responses=step_errors | BODY,
    )
    def retake(exam_id: ExamId, user: Exam, body: RetakeIn | None = None) -> dict:
        """Take the pair again; the previous attempt is kept, marked superseded."""
        return runtime.retake(user.username, exam_id, body.reason if body else "")

    @app.post(
        "/api/exams/{exam_id}/accept",
        response_model=ExamOut,
        tags=["exam"],
        responses=step_errors | BODY,
    )
    def accept(exam_id: ExamId, user: Exam, body: AcceptIn | None = None) -> dict:
        """Finish the exam, recording which attempt (of each pair) is used."""
        return runtime.accept(user.username, exam_id, body.attempt if body else None)

    @app.post(
        "/api/exams/{exam_id}/cancel",
        response_model=ExamOut,
        tags=["exam"],
        responses=step_errors | BODY,
    )
    def cancel(exam_id: ExamId, user: Exam, body: RetakeIn | None = None) -> dict:
        return runtime.cancel(user.username, exam_id, body.reason if body else "")

    @app.post(
        "/api/exams/{exam_id}/export",
        tags=["exam"],
        responses=step_errors,
    )
    def export(exam_id: ExamId, user: Exam) -> dict[str, Any]:
        """Send the used images of a completed exam to the PACS again (C-STORE)."""
        return runtime.export(user.username, exam_id)

    @app.get(
        "/api/exams/{exam_id}/attempts/{number}/{name}",
        tags=["exam"],
        response_class=FileResponse,
        responses=AUTH
        | _err(404, 422)
        | {
            200: {
                "description": "overlay PNG, DICOM image or result JSON",
                "content": {
                    "image/png": {},
                    "application/dicom": {},
                    "application/json": {},
                },
            }
        },
    )
    def attempt_file(
        exam_id: ExamId,
        number: Annotated[int, PathParam(ge=1, le=10_000)],
        name: Literal[
            "cage-A.png",
            "cage-B.png",
            "result-A.png",
            "result-B.png",
            "A.dcm",
            "B.dcm",
            "result.json",
        ],
        user: View,
    ) -> FileResponse:
        """Files of one attempt: cage-check and result overlays, images, result."""
        runtime.store.exam(exam_id)  # 404 for an unknown exam
        path = runtime.attempt_dir(exam_id, number) / name
        if not path.is_file():
            raise StarletteHTTPException(404, f"Attempt {number} of exam {exam_id} has no {name}.")
        media = {"png": "image/png", "dcm": "application/dicom", "json": "application/json"}
        return FileResponse(path, media_type=media[name.rsplit(".", 1)[1]])

    # -------------------------------------------------------------- audit
    @app.get(
        "/api/audit", response_model=list[AuditOut], tags=["audit"], responses=AUTH | _err(422)
    )
    def audit_log(
        user: Annotated[User, Depends(need("audit"))],
        exam_id: Annotated[int | None, Query(ge=1, le=2**53)] = None,
        after: Annotated[int, Query(ge=0, le=2**53)] = 0,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    ) -> list[dict]:
        return [e.to_dict() for e in runtime.store.audit_entries(exam_id, after, limit)]

    @app.get("/api/audit/verify", response_model=VerifyOut, tags=["audit"], responses=AUTH)
    def audit_verify(user: Annotated[User, Depends(need("audit"))]) -> dict:
        """Recompute the hash chain of the whole audit log."""
        return runtime.store.verify_audit().to_dict()

    return app
