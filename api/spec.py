"""OpenAPI: the SpecTree instance, request models (validated) and response models (documented).

Request query strings and JSON bodies are validated by spectree (pydantic 2)
before a responder runs; a failure becomes a 422 in our error shape (see
``validation_failed``). Responses are rendered by the resources straight to
JSON bytes (no per-request pydantic work on the hot path); their models here
document them, and tests/test_api_openapi.py runs schemathesis against a real
gunicorn to check that every answer conforms.

The document is served at ``/openapi.json``; spectree's pages (Swagger UI,
Redoc, Scalar) at ``/apidoc/swagger``, ``/apidoc/redoc``, ``/apidoc/scalar``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any, Literal

import falcon
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field
from spectree import Response, SecurityScheme, SpecTree
from spectree.models import SecuritySchemeData

from api.errors import ApiError
from api.pagination import DEFAULT_LIMIT, MAX_LIMIT

SEARCH_TYPES = ("project", "builder", "chain", "post", "investor")
SEARCH_MAX_CHARS = 200
SEARCH_MAX_OFFSET = 99  # search_combined returns at most 100 rows
BEARER = "bearerAuth"
TOKEN_HINT = "python -m api token --user NAME"


# -- cleaning of text input -------------------------------------------------------


def _not_blank_pattern() -> str:
    """A regex class for "a character that is neither whitespace nor NUL".

    Spelled out with the exact characters ``str.strip()`` removes (Python's
    ``isspace``) as u-escapes, not with the backslash-s class: that class means
    a different set in the ECMA-262 regexes of JSON Schema (it lacks U+0085 and
    U+001C..U+001F, and has U+FEFF), and the document must say exactly what the
    cleaning below accepts.
    """
    spaces = "".join(f"\\u{ord(c):04x}" for c in map(chr, range(0x10000)) if c.isspace())
    return f"[^{spaces}\\u0000]"


NOT_BLANK = _not_blank_pattern()


def _cleaner(max_chars: int) -> BeforeValidator:
    """Check the raw length, strip NUL (Postgres text cannot hold it), refuse text
    that is not valid UTF-8 (lone surrogates from JSON escapes), then trim."""

    def clean(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if len(value) > max_chars:
            raise ValueError(f"at most {max_chars} characters")
        value = value.replace("\x00", "")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("text is not valid UTF-8") from None
        return value.strip()

    return BeforeValidator(clean)


def _not_blank(value: str) -> str:
    if not value:
        raise ValueError("must not be empty or only whitespace")
    return value


def _text(max_chars: int) -> Any:
    """Optional text: cleaned, at most ``max_chars`` characters."""
    # Constraints first: they then sit on the inner str schema (and so in the
    # JSON schema); the cleaner wraps it and runs before them.
    return Annotated[str, Field(max_length=max_chars), _cleaner(max_chars)]


def _required_text(max_chars: int) -> Any:
    """Text with at least one visible character after cleaning."""
    return Annotated[str, Field(min_length=1, max_length=max_chars, pattern=NOT_BLANK), _cleaner(max_chars),
                     AfterValidator(_not_blank)]


SearchText = _required_text(SEARCH_MAX_CHARS)
Title = _required_text(200)
Description = _text(10_000)
Tag = _required_text(40)
Url = Annotated[str, Field(max_length=500, pattern=f"^https?://{NOT_BLANK}+$"), _cleaner(500)]
CommentBody = _required_text(5_000)


# -- request models -----------------------------------------------------------------


class _Query(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PageQuery(_Query):
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="page size (1..100)")
    cursor: str | None = Field(None, max_length=512, pattern=r"^[A-Za-z0-9_-]+$",
                               description="meta.next_cursor of the previous page (opaque)")


class FeedQuery(PageQuery):
    sort: Literal["trending", "newest"] = "trending"


class ChainsQuery(PageQuery):
    sort: Literal["members", "activity"] = "members"


class SearchQuery(_Query):
    q: SearchText = Field(..., description="search text, 1..200 characters after trimming")
    type: Literal["project", "builder", "chain", "post", "investor"] | None = Field(
        None, description="restrict to one kind")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0, le=SEARCH_MAX_OFFSET, description="0..99 (search returns at most 100 results)")


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title
    description: Description = ""
    tags: Annotated[list[Tag], Field(max_length=10)] = []
    url: Url | None = None
    chain_id: uuid.UUID | None = None


class CommentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    body: CommentBody


# -- response models (documentation and conformance) -------------------------------


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ListMeta(BaseModel):
    view: str
    as_of: dt.datetime | None = Field(description="completion time of the view's last logged refresh (null: none)")
    count: int
    limit: int
    next_cursor: str | None = None


class SearchMeta(BaseModel):
    view: str
    as_of: dt.datetime | None
    count: int
    limit: int
    offset: int
    next_offset: int | None = None
    q: str
    type: str | None = None


class ItemMeta(BaseModel):
    view: str
    as_of: dt.datetime | None
    source: Literal["view", "live"] = "view"


class UserMeta(BaseModel):
    source: str
    as_of: dt.datetime | None = None


class FeedProject(BaseModel):
    id: uuid.UUID
    title: str
    author_id: uuid.UUID
    author_username: str
    author_name: str
    chain_id: uuid.UUID | None
    chain_name: str | None
    upvote_count: int
    comment_count: int
    created_at: dt.datetime
    trending_score: float
    user_has_upvoted: bool | None = Field(None, description="present when signed in")


class FeedResponse(BaseModel):
    data: list[FeedProject]
    meta: ListMeta


class ProjectDetail(BaseModel):
    id: uuid.UUID
    title: str
    description: str
    tags: list[str]
    url: str | None
    author_id: uuid.UUID
    author_username: str
    author_name: str
    chain_id: uuid.UUID | None
    chain_slug: str | None
    chain_name: str | None
    upvote_count: int
    comment_count: int
    trending_score: float
    created_at: dt.datetime
    updated_at: dt.datetime
    user_has_upvoted: bool | None = None


class ProjectDetailResponse(BaseModel):
    data: ProjectDetail
    meta: ItemMeta


class LeaderboardProject(BaseModel):
    rank: int
    id: uuid.UUID
    title: str
    author_id: uuid.UUID
    author_username: str
    author_name: str
    chain_id: uuid.UUID | None
    chain_name: str | None
    upvote_count: int
    comment_count: int
    created_at: dt.datetime
    user_has_upvoted: bool | None = None


class LeaderboardProjectsResponse(BaseModel):
    data: list[LeaderboardProject]
    meta: ListMeta


class LeaderboardBuilder(BaseModel):
    rank: int
    user_id: uuid.UUID
    username: str
    name: str
    project_count: int
    upvotes_received: int
    comments_received: int
    latest_project_at: dt.datetime | None


class LeaderboardBuildersResponse(BaseModel):
    data: list[LeaderboardBuilder]
    meta: ListMeta


class Chain(BaseModel):
    id: uuid.UUID
    slug: str
    name: str
    description: str
    owner_id: uuid.UUID | None
    owner_username: str | None
    member_count: int
    post_count: int
    comment_count: int
    project_count: int
    activity_count: int
    last_activity_at: dt.datetime | None
    created_at: dt.datetime


class ChainsResponse(BaseModel):
    data: list[Chain]
    meta: ListMeta


class ChainPost(BaseModel):
    id: uuid.UUID
    chain_id: uuid.UUID
    chain_slug: str
    chain_name: str
    user_id: uuid.UUID
    author_username: str
    author_name: str
    title: str
    excerpt: str
    is_pinned: bool
    upvote_count: int
    comment_count: int
    trending_score: float
    last_activity_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class ChainPostsResponse(BaseModel):
    data: list[ChainPost]
    meta: ListMeta


class Investor(BaseModel):
    id: uuid.UUID
    user_id: uuid.UUID
    username: str
    name: str
    firm_name: str
    title: str
    bio_excerpt: str
    focus_areas: list[str]
    stages: list[str]
    check_size_min: int | None
    check_size_max: int | None
    location: str
    is_accepting_intros: bool
    intro_requests_received: int
    intro_requests_accepted: int
    intro_requests_declined: int
    intro_requests_pending: int
    acceptance_rate: float | None
    created_at: dt.datetime


class InvestorsResponse(BaseModel):
    data: list[Investor]
    meta: ListMeta


class SearchResult(BaseModel):
    kind: Literal["project", "builder", "chain", "post", "investor"]
    id: uuid.UUID
    title: str
    subtitle: str | None
    snippet: str | None
    url_path: str | None
    parent_id: uuid.UUID | None
    popularity: int
    created_at: dt.datetime | None
    score: float
    match_type: Literal["fulltext", "fuzzy", "both"]


class SearchResponse(BaseModel):
    data: list[SearchResult]
    meta: SearchMeta


class UpvoteResult(BaseModel):
    project_id: uuid.UUID
    upvoted: bool
    upvote_count: int = Field(description="exact count from Postgres right after the change")


class UpvoteResponse(BaseModel):
    data: UpvoteResult


class CreatedProject(BaseModel):
    id: uuid.UUID
    title: str
    description: str
    tags: list[str]
    url: str | None
    chain_id: uuid.UUID | None
    author_id: uuid.UUID
    created_at: dt.datetime


class CreatedProjectResponse(BaseModel):
    data: CreatedProject


class CreatedComment(BaseModel):
    id: uuid.UUID
    project_id: uuid.UUID
    user_id: uuid.UUID
    body: str
    created_at: dt.datetime


class CreatedCommentResponse(BaseModel):
    data: CreatedComment


class MeMeta(BaseModel):
    source: str
    as_of: dt.datetime


class MeListMeta(MeMeta):
    count: int
    limit: int
    next_cursor: str | None = None


class IntroCounts(BaseModel):
    requests_sent: int
    sent_pending: int
    sent_accepted: int
    sent_declined: int
    requests_received: int = Field(description="as an investor")
    received_pending: int
    received_accepted: int
    received_declined: int


class Dashboard(BaseModel):
    user_id: uuid.UUID
    username: str
    name: str
    project_count: int
    active_projects: int
    total_upvotes_received: int
    total_comments_received: int
    chains_joined: int
    last_updated_at: dt.datetime | None
    intro_requests: IntroCounts


class DashboardResponse(BaseModel):
    data: Dashboard
    meta: MeMeta


class Conversation(BaseModel):
    conversation_id: uuid.UUID
    other_user_id: uuid.UUID
    other_username: str | None
    other_name: str | None
    message_count: int
    unread_count: int
    last_message_id: uuid.UUID | None
    last_message_at: dt.datetime | None
    last_message_sender_id: uuid.UUID | None
    last_message_preview: str | None


class ConversationsResponse(BaseModel):
    data: list[Conversation]
    meta: MeListMeta


class IntroStats(IntroCounts):
    user_id: uuid.UUID
    last_updated_at: dt.datetime | None


class IntroStatsResponse(BaseModel):
    data: IntroStats
    meta: MeMeta


class RefreshAccepted(BaseModel):
    task_id: str
    view: str
    queue: str | None
    task: str


class RefreshAcceptedResponse(BaseModel):
    data: RefreshAccepted


# -- spectree ---------------------------------------------------------------------


def validation_failed(req: falcon.Request, resp: falcon.Response, error: Exception | None,
                      instance: object, model_adapter: Any = None) -> None:
    """spectree's ``before`` hook: a request validation error becomes our 422."""
    if error is None:
        return
    details = []
    for item in getattr(error, "errors", lambda: [])():
        details.append({
            "loc": [str(p) for p in item.get("loc", ())],
            "msg": str(item.get("msg", "")),
            "type": str(item.get("type", "")),
        })
    first = details[0] if details else None
    where = ".".join(first["loc"]) if first and first["loc"] else "request"
    message = f"{where}: {first['msg']}" if first else "request validation failed"
    raise ApiError(falcon.HTTP_422, "validation_error", message, details=details)


api_spec = SpecTree(
    "falcon",
    title="Discovery platform read API",
    version="1.0.0",
    description=(
        "Reads come from materialized views and trigger-kept tables; meta.as_of and the "
        "X-Data-Age header say how fresh the view is. Errors are {error: {code, message}}."
    ),
    mode="strict",
    before=validation_failed,
    validation_error_model=ErrorResponse,
    security_schemes=[
        SecurityScheme(name=BEARER, data=SecuritySchemeData(type="http", scheme="bearer", bearer_format="JWT")),
    ],
    annotations=True,
)

AUTH = {BEARER: []}


def responses(ok: Any, *codes: int, ok_code: int = 200) -> Response:
    """A spectree Response: ``ok`` for success, ErrorResponse for every listed error code.

    Every route can answer 400 (malformed input), 401 (a bad token is refused
    everywhere) and 503 (a dependency is down), so those are always listed.
    """
    models: dict[str, Any] = {f"HTTP_{ok_code}": ok}
    for code in sorted({400, 401, 503, *codes}):
        models[f"HTTP_{code}"] = ErrorResponse
    return Response(**models)
