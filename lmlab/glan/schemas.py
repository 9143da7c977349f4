"""The pydantic schemas every GLAN stage's reply must satisfy. Their JSON schemas drive grammar-constrained
decoding on the local engine and `response_format` on HTTP backends. Length caps keep replies bounded, so a
weak model cannot spend the token budget inside one string."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

Level = Literal["introductory", "intermediate", "advanced"]
Short = Annotated[str, Field(min_length=1, max_length=48)]


class NameList(BaseModel):
    """Taxonomy generation: sub-fields of a field, or disciplines of a sub-field."""

    names: list[Short] = Field(min_length=1, max_length=8)


class Subject(BaseModel):
    name: str = Field(min_length=2, max_length=64)
    level: Level


class SubjectList(BaseModel):
    subjects: list[Subject] = Field(min_length=1, max_length=6)


class Session(BaseModel):
    title: str = Field(min_length=2, max_length=80)
    concepts: list[Short] = Field(min_length=1, max_length=5)


class Syllabus(BaseModel):
    sessions: list[Session] = Field(min_length=1, max_length=6)


class Question(BaseModel):
    question: str = Field(min_length=10, max_length=400)


class Answer(BaseModel):
    answer: str = Field(min_length=1, max_length=1500)
