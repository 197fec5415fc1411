"""Teacher contexts: what only the teacher reads, per prompt (``teacher_context:`` in a spec).

Four kinds, one engine. ``hints`` are today's phrasings. ``demonstrations`` are example
answers (``{"prompt", "answer"}`` a line): the teacher reads the closest ones before the
question, never the prompt's own. ``documents`` are text files: chunked, and the chunks
closest to each prompt placed before the question. ``conversations`` are users' logs
(``{"messages": [...]}`` a line): each assistant turn that a user turn follows is a lesson;
the student sees the conversation up to that answer, the teacher also reads the user's next
turn (hindsight), and the answer trained on is the one the log holds.

"Closest" is BM25 (rank_bm25's BM25L: a term no other text shares scores 0) over lowercase
words, so nothing downloads a model at run time. Every reader bounds what it reads and
raises ``PromptFileError`` with the 1-based line of a bad record.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from engrain.spec.chat import place_hint
from engrain.spec.files import PromptFileError

DOCUMENT_SUFFIXES = (".txt", ".md")
WORD = re.compile(r"\w+")


# --- what the files hold ------------------------------------------------------------------

@dataclass(frozen=True)
class Demo:
    line: int
    prompt: str
    answer: str


@dataclass(frozen=True)
class Chunk:
    source: str         # file name, relative to the documents' path
    text: str


@dataclass(frozen=True)
class Lesson:
    """One assistant answer of a log that a user turn follows."""
    key: str                    # "<file>:<line>#<turn>": the store's prompt for it, and where it came from
    messages: list[dict]        # the conversation up to the answer (ending with a user turn)
    answer: str                 # the logged assistant answer
    next_turn: str              # the user's turn after it: the teacher's hindsight


def _jsonl(path: Path, max_lines: int):
    """(line number, object) for each non-blank line; bounded; errors name the line."""
    if path.suffix != ".jsonl":
        raise PromptFileError(None, f"unsupported file type {path.suffix or '(none)'!r}; expected .jsonl")
    if not path.is_file():
        raise PromptFileError(None, "file not found")
    with path.open(encoding="utf-8") as f:
        number = 0
        while True:
            try:
                line = f.readline()      # streamed: a log over max_lines is refused without reading it all
            except UnicodeDecodeError as e:
                raise PromptFileError(number + 1, f"not UTF-8 text ({e.reason})") from None
            if not line:
                return
            number += 1
            if number > max_lines:
                raise PromptFileError(None, f"more than {max_lines} lines (the limit): split the file, "
                                            "or raise the limit in the spec")
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(number, f"not valid JSON ({e.msg})") from None


def read_demonstrations(path: str | Path, max_lines: int = 100_000) -> list[Demo]:
    demos = []
    for number, record in _jsonl(Path(path), max_lines):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), str) and record[k].strip()
                                                   for k in ("prompt", "answer")):
            raise PromptFileError(number, 'expected an object with non-empty "prompt" and "answer" strings')
        demos.append(Demo(number, record["prompt"].strip(), record["answer"].strip()))
    if not demos:
        raise PromptFileError(None, "no demonstrations in the file")
    return demos


def chunk_text(text: str, chunk_chars: int) -> list[str]:
    """Paragraphs packed into chunks of at most ``chunk_chars`` characters; a longer paragraph
    is cut at word boundaries."""
    pieces = []
    for para in (p.strip() for p in re.split(r"\n\s*\n", text)):
        while len(para) > chunk_chars:
            cut = para.rfind(" ", 0, chunk_chars)
            cut = cut if cut > 0 else chunk_chars
            pieces.append(para[:cut].strip())
            para = para[cut:].strip()
        if para:
            pieces.append(para)
    chunks, current = [], ""
    for piece in pieces:
        if current and len(current) + 2 + len(piece) > chunk_chars:
            chunks.append(current)
            current = ""
        current = f"{current}\n\n{piece}" if current else piece
    return chunks + ([current] if current else [])


def read_documents(path: str | Path, chunk_chars: int, max_bytes: int, max_chunks: int) -> list[Chunk]:
    """The chunks of a text file, or of every .txt/.md file under a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DOCUMENT_SUFFIXES)
        if not files:
            raise PromptFileError(None, f"no {' or '.join(DOCUMENT_SUFFIXES)} files in the folder")
    elif path.is_file():
        if path.suffix not in DOCUMENT_SUFFIXES:
            raise PromptFileError(None, f"unsupported file type {path.suffix or '(none)'!r}; expected "
                                        f"{' or '.join(DOCUMENT_SUFFIXES)}")
        files = [path]
    else:
        raise PromptFileError(None, "file not found")
    total = sum(f.stat().st_size for f in files)
    if total > max_bytes:
        raise PromptFileError(None, f"{total:,} bytes of documents, over the limit of {max_bytes:,}: "
                                    "give fewer documents, or raise documents.max_bytes")
    chunks = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise PromptFileError(None, f"{f.name} is not UTF-8 text ({e.reason})") from None
        name = f.name if f == path else str(f.relative_to(path))
        chunks += [Chunk(name, c) for c in chunk_text(text, chunk_chars)]
        if len(chunks) > max_chunks:
            raise PromptFileError(None, f"more than {max_chunks} chunks: give fewer documents, or raise "
                                        "documents.max_chunks (or documents.chunk_chars)")
    if not chunks:
        raise PromptFileError(None, "the documents hold no text")
    return chunks


def read_conversations(path: str | Path, max_lines: int = 100_000) -> tuple[list[Lesson], int]:
    """The lessons of a log, and how many assistant turns were skipped (no user turn after
    them: nothing says what was wrong with them)."""
    path = Path(path)
    lessons, skipped = [], 0
    for number, record in _jsonl(path, max_lines):
        messages = record.get("messages") if isinstance(record, dict) else None
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str) for m in messages):
            raise PromptFileError(number, 'expected {"messages": [{"role": "user"|"assistant"|"system", '
                                          '"content": "..."}, ...]}')
        for turn, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            after = messages[turn + 1] if turn + 1 < len(messages) else None
            before = messages[:turn]
            if after is None or after["role"] != "user" or not before or before[-1]["role"] != "user":
                skipped += 1
                continue
            lessons.append(Lesson(f"{path.name}:{number}#{turn}", [dict(x) for x in before], m["content"],
                                  after["content"]))
    if not lessons:
        raise PromptFileError(None, f"no assistant turn followed by a user turn ({skipped} skipped): "
                                    "nothing to learn from")
    return lessons, skipped


FILE_FIX = "fix the file (its path is relative to the spec file)"


def file_readers(tc) -> dict:
    """A spec's teacher_context, its file-backed kinds: kind -> (where in the spec, the path
    as written, a bounded reader of the resolved path). One map for `cl validate` and the
    compile, so both read a file the same way."""
    out = {}
    if tc is None:
        return out
    if tc.demonstrations is not None:
        out["demonstrations"] = (("teacher_context", "demonstrations", "file"), tc.demonstrations.file,
                                 read_demonstrations)
    if tc.documents is not None:
        d = tc.documents
        out["documents"] = (("teacher_context", "documents", "path"), d.path,
                            lambda path: read_documents(path, d.chunk_chars, d.max_bytes, d.max_chunks))
    if tc.conversations is not None:
        c = tc.conversations
        out["conversations"] = (("teacher_context", "conversations", "file"), c.file,
                                lambda path: read_conversations(path, c.max_lines))
    return out


def file_problem(file: str, e: PromptFileError) -> str:
    return f"{file}:{e.line}: {e.message}" if e.line else f"{file}: {e.message}"


# --- closest texts --------------------------------------------------------------------------

def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class Retriever:
    """The texts closest to a query by BM25L; ties keep the texts' order."""

    def __init__(self, texts: list[str]):
        from rank_bm25 import BM25L
        self.texts = texts
        self.bm25 = BM25L([words(t) or ["\0"] for t in texts])

    def top(self, query: str, k: int, exclude=lambda i: False) -> list[int]:
        scores = self.bm25.get_scores(words(query))
        order = sorted(range(len(self.texts)), key=lambda i: (-scores[i], i))
        return [i for i in order if not exclude(i)][:k]


# --- the compiled context ---------------------------------------------------------------------

@dataclass
class TeacherContext:
    """The teacher's and the student's messages for a prompt. ``variants``: how many
    different contexts one prompt can get (a hint's phrasings; 1 otherwise)."""
    placement: str = "user_suffix"
    hints: list[str] = field(default_factory=list)
    demos: list[Demo] = field(default_factory=list)
    demo_k: int = 2
    chunks: list[Chunk] = field(default_factory=list)
    chunk_k: int = 2
    lessons: dict[str, Lesson] = field(default_factory=dict)
    hindsight: str = ""
    contrast: str = ""      # a neutral reply: the baseline teacher reads the note around it
    skipped: int = 0        # assistant turns of the log without a user turn after them

    def __post_init__(self):
        self._demo_index = Retriever([d.prompt for d in self.demos]) if self.demos else None
        self._chunk_index = Retriever([c.text for c in self.chunks]) if self.chunks else None

    @property
    def variants(self) -> int:
        return max(1, len(self.hints))

    def blocks(self, prompt: str) -> list[str]:
        """The texts the teacher reads before the question (demonstrations, documents)."""
        out = []
        if self._demo_index is not None:
            own = prompt.strip().lower()
            picked = self._demo_index.top(prompt, self.demo_k, lambda i: self.demos[i].prompt.lower() == own)
            if picked:
                out.append("Examples of good answers:\n\n" + "\n\n".join(
                    f"Question: {self.demos[i].prompt}\nAnswer: {self.demos[i].answer}" for i in picked))
        if self._chunk_index is not None:
            picked = self._chunk_index.top(prompt, self.chunk_k)
            out.append("Reference document:\n\n" + "\n\n".join(self.chunks[i].text for i in picked))
        return out

    def student_messages(self, prompt: str) -> list[dict]:
        if prompt in self.lessons:      # others (an anchor's, a suite's) are plain questions
            return [dict(m) for m in self.lessons[prompt].messages]
        return place_hint(prompt, None, self.placement)

    def teacher_messages(self, prompt: str, variant: int) -> list[dict]:
        if self.lessons:
            return self._noted(prompt, self.lessons[prompt].next_turn)
        question = "\n\n".join([*self.blocks(prompt), prompt])
        return place_hint(question, self.hints[variant % len(self.hints)] if self.hints else None, self.placement)

    def privileged(self, prompt: str, variant: int) -> list[str]:
        """What only the teacher reads for this prompt: each text must be absent from the student's."""
        if self.lessons:
            return [self.note(self.lessons[prompt].next_turn)]
        return [*self.blocks(prompt), *([self.hints[variant % len(self.hints)]] if self.hints else [])]

    def baseline_messages(self, prompt: str) -> list[dict] | None:
        """The teacher's messages with the neutral reply in place of the user's next turn:
        what the note alone does, to subtract (None without a contrast, or for a non-lesson)."""
        if not (self.lessons and self.contrast):
            return None
        return self._noted(prompt, self.contrast)

    def _noted(self, prompt: str, next_turn: str) -> list[dict]:
        messages = [dict(m) for m in self.lessons[prompt].messages]
        messages[-1]["content"] += "\n\n" + self.note(next_turn)
        return messages

    def note(self, next_turn: str) -> str:
        """The hindsight note around a user's next turn (replace, not format: a template may
        hold other braces)."""
        return self.hindsight.replace("{next}", next_turn)

    def logged_answer(self, prompt: str) -> str | None:
        """The answer a log holds for a lesson (what is trained on instead of a new sample)."""
        lesson = self.lessons.get(prompt)
        return lesson.answer if lesson else None
