"""What `serve` answers, as pydantic models: the OpenAPI schema (/openapi.json) describes every response, so that a
client generated from it parses them."""
from __future__ import annotations

from pydantic import BaseModel, Field


class Row(BaseModel):
    """One face of an uploaded photo; a photo without a face (rule `no face`) or that cannot be read (`error`) is
    one row whose other values are null."""
    image: int = Field(description="the upload's index in the request")
    path: str = Field(description="the upload's file name")
    face: int | None = Field(description="0, 1, ... in the photo")
    left: int | None
    top: int | None
    right: int | None
    bottom: int | None
    p_female: float | None = Field(description="P(female)")
    label: int | None = Field(description="0 male, 1 female")
    doubtful: bool | None = Field(description="P(female) before the second stage inside the doubtful band")
    stage: int | None = Field(description="which of the model's stages decided")
    rule: str = Field(description="detected, whole, fills-photo, crop-like, or no face")
    error: str = Field(description="why the upload gave no face row; empty otherwise")


class Prediction(BaseModel):
    model: str
    images: int
    rows: list[Row]
    seconds: float


class Health(BaseModel):
    status: str
    model: str
    format: str
    sources: list[str]
    head: str
    protocol: str
    genderfusion: str
    columns: list[str]


class Refusal(BaseModel):
    """A request refused as a whole (401, 413, 415, 422, 503, 504)."""
    error: str


class Files(BaseModel):
    """The multipart form of a request: one file part per photo."""
    files: list[bytes] = Field(json_schema_extra={"items": {"type": "string", "format": "binary"}})


REFUSALS = {status: {"model": Refusal, "description": what} for status, what in (
    (401, "the token is missing or wrong"), (413, "over a limit: bytes, pixels or images"),
    (415, "neither multipart/form-data nor JSON"), (422, "no image, or a body that cannot be read"),
    (503, "busy: the queue is full"), (504, "no answer within the time limit"))}


def request_body() -> dict:
    """The OpenAPI requestBody of POST /predict (the app reads the body itself, within its limits): the multipart
    form. The JSON form is accepted too and described in the operation's text, not as a second content
    type: openapi-python-client 0.29 generates a client for a body of two content types that fails at import (its
    union annotation names `Unset` without importing it)."""
    return {"required": True, "content": {"multipart/form-data": {"schema": Files.model_json_schema()}}}
