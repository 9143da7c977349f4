"""Prompt templates per stage, after the GLAN paper's (arXiv:2402.13064, sections 2.1-2.4 and appendix).
Each is a chat (list of messages); the schema each reply must follow is stated in the prompt too, because
HTTP backends without `response_format` only have the words to go by."""

from __future__ import annotations

import json

Chat = list[dict[str, str]]


def _chat(system: str, user: str) -> Chat:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def subfields_prompt(field: str) -> Chat:
    return _chat(
        "You build a taxonomy of human knowledge.",
        f'List the main sub-fields of {field}. Reply in JSON: {{"names": ["...", ...]}}',
    )


def disciplines_prompt(field: str, subfield: str) -> Chat:
    return _chat(
        "You build a taxonomy of human knowledge.",
        f'List the disciplines taught within {subfield} (part of {field}). Reply in JSON: {{"names": ["...", ...]}}',
    )


def subjects_prompt(discipline: str, n: int) -> Chat:
    return _chat(
        f"You are an experienced teacher of {discipline}.",
        f"List up to {n} subjects a student of {discipline} should learn, from introductory to advanced, "
        f'each with its level. Reply in JSON: {{"subjects": [{{"name": "...", "level": "introductory|intermediate|advanced"}}]}}',
    )


def syllabus_prompt(discipline: str, subject: str, level: str, max_sessions: int) -> Chat:
    return _chat(
        f"You are an expert in {discipline} designing a course.",
        f"Design the syllabus of the {level} course '{subject}' in at most {max_sessions} class sessions. "
        f"For each session give a title and its key concepts. "
        f'Reply in JSON: {{"sessions": [{{"title": "...", "concepts": ["...", ...]}}]}}',
    )


def question_prompt(
    discipline: str, subject: str, context: list[dict], sessions: list[str], concepts: list[str]
) -> Chat:
    ctx = "\n".join(
        f"Session {i + 1}: {s['title']} (key concepts: {', '.join(s['concepts'])})" for i, s in enumerate(context)
    )
    return _chat(
        f"You are a teacher of {discipline} writing homework.",
        f"Course '{subject}'. Syllabus so far:\n{ctx}\n\n"
        f"Write one homework question about the session(s) {json.dumps(sessions)} that tests the key concept(s) "
        f'{json.dumps(concepts)}. Reply in JSON: {{"question": "..."}}',
    )


def answer_prompt(question: str) -> Chat:
    return _chat("You are a helpful, accurate tutor.", f'{question}\n\nReply in JSON: {{"answer": "..."}}')
