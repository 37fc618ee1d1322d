"""StoryReasoning markup: frame segments, entity mentions, chain-of-thought boxes, caption policy.

A StoryReasoning ``story`` string holds one segment per image::

    <gdi image1> <gdo char1>James</gdo> <gda char1>enters</gda> the room ... </gdi>
    <gdi image2> ...

Inside a segment, ``<gdo IDS>`` tags entities, ``<gda IDS>`` actions and ``<gdl IDS>`` places,
where IDS are bare space-separated ids (``char1 obj3 bg2 lm1``). The tag kind does not always
match the id kind (``<gdo bg26>`` happens), whitespace and newlines vary, and a closing
``</gdi>`` is sometimes missing; the parser tolerates all of it.

``chain_of_thought`` holds, per ``## Image N`` section, markdown tables whose last column is a
``Bounding Box`` ``x1,y1,x2,y2`` in pixels; :func:`parse_boxes` returns them per image, and
:func:`parse_descriptions` the ``Description`` cell of each boxed entity.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cmar.settings import CAPTION_POLICIES

Box = tuple[float, float, float, float]  # (x1, y1, x2, y2) in pixels of the original image

_SEGMENT_OPEN = re.compile(r"<\s*gdi\s+image\s*(\d+)\s*>", re.IGNORECASE)
_SEGMENT_CLOSE = re.compile(r"<\s*/\s*gdi\s*>", re.IGNORECASE)
_TAG = re.compile(r"<\s*(/?)\s*(gdo|gda|gdl)\b([^>]*)>", re.IGNORECASE)
_WS = re.compile(r"\s+")
# A run of terminators (".", "!", "?", "...", "…"), then any closing quotes or brackets, then
# whitespace or the end of the text. Whether it really ends the sentence: _ends_sentence.
_SENTENCE_END = re.compile(r"(?P<stop>[.!?…]+)[\"”’')\]]*(?=\s|$)")
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "lt", "capt", "col", "gen", "sgt", "rev",
    "mt", "vs", "etc", "e.g", "i.e",
})
_OPENERS = "\"“‘'(["
_INITIAL = re.compile(r"[A-Z]")  # "J." of "J. Edgar"
_ACRONYM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # "U.S" of "U.S.", "L.A" of "L.A."
_NEXT_WORD = re.compile(r"\s*(\S?)")
_IMAGE_HEADER = re.compile(r"^\s*#{1,3}\s*Image\s+(\d+)\s*$", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass(frozen=True)
class Mention:
    """One tagged span of a segment's plain text.

    ``kind`` is the tag (``gdo`` entity, ``gda`` action, ``gdl`` place), ``ids`` the entity ids
    in the tag, ``start``/``end`` character offsets into :attr:`Segment.text`.
    """

    kind: str
    ids: tuple[str, ...]
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Segment:
    """The text of one ``<gdi imageN>`` segment: ``image`` is N (1-based)."""

    image: int
    text: str
    mentions: tuple[Mention, ...] = field(default_factory=tuple)

    @property
    def entity_ids(self) -> list[str]:
        """Entity ids mentioned in this segment, in order of first appearance, no repeats."""
        seen: dict[str, None] = {}
        for mention in self.mentions:
            for entity_id in mention.ids:
                seen.setdefault(entity_id, None)
        return list(seen)


class _TextBuilder:
    """Appends text pieces while collapsing whitespace, so offsets stay exact."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.ends_with_space = True  # treat the start as a space: no leading blank

    def add(self, piece: str) -> None:
        piece = _WS.sub(" ", piece)
        if self.ends_with_space:
            piece = piece.lstrip(" ")
        if not piece:
            return
        self.parts.append(piece)
        self.length += len(piece)
        self.ends_with_space = piece.endswith(" ")

    def position(self) -> int:
        """Offset where the next non-space character will land."""
        return self.length

    def text(self) -> str:
        return "".join(self.parts)


def _parse_segment(image: int, body: str) -> Segment:
    builder = _TextBuilder()
    open_tags: list[tuple[str, tuple[str, ...], int]] = []
    mentions: list[Mention] = []
    cursor = 0
    for match in _TAG.finditer(body):
        builder.add(body[cursor : match.start()])
        cursor = match.end()
        closing, kind, attrs = match.group(1), match.group(2).lower(), match.group(3)
        if not closing:
            open_tags.append((kind, tuple(attrs.split()), builder.position()))
            continue
        # Close the innermost open tag of this kind; a stray closing tag is ignored.
        for i in range(len(open_tags) - 1, -1, -1):
            if open_tags[i][0] == kind:
                tag_kind, ids, start = open_tags.pop(i)
                mentions.append(_mention(builder, tag_kind, ids, start))
                break
    builder.add(body[cursor:])
    for tag_kind, ids, start in reversed(open_tags):  # unclosed tags end with the segment
        mentions.append(_mention(builder, tag_kind, ids, start))
    text = builder.text().rstrip(" ")
    mentions = [m for m in mentions if m.start < len(text)]
    mentions.sort(key=lambda m: (m.start, m.end))
    return Segment(image=image, text=text, mentions=tuple(mentions))


def _mention(builder: _TextBuilder, kind: str, ids: tuple[str, ...], start: int) -> Mention:
    full = builder.text()
    # A mention that starts before a collapsed blank begins at the next character.
    while start < len(full) and full[start] == " ":
        start += 1
    end = len(full.rstrip(" "))
    end = max(end, start)
    return Mention(kind=kind, ids=ids, text=full[start:end], start=start, end=end)


def parse_segments(story: str) -> list[Segment]:
    """All ``<gdi imageN>`` segments of ``story``, ordered by N (duplicates kept, in order).

    Each segment runs from its opening tag to ``</gdi>`` or, when that is missing, to the next
    opening tag or the end of the string. Text outside segments is ignored.
    """
    opens = list(_SEGMENT_OPEN.finditer(story))
    segments = []
    for i, match in enumerate(opens):
        stop = opens[i + 1].start() if i + 1 < len(opens) else len(story)
        body = story[match.end() : stop]
        close = _SEGMENT_CLOSE.search(body)
        if close:
            body = body[: close.start()]
        segments.append(_parse_segment(int(match.group(1)), body))
    return sorted(segments, key=lambda s: s.image)  # sorted() is stable for equal N


def split_frames(story: str) -> list[str]:
    """Plain text of each ``<gdi imageN>`` segment, tags removed, whitespace collapsed, by N."""
    return [segment.text for segment in parse_segments(story)]


def frame_entities(story: str) -> list[list[str]]:
    """Entity ids mentioned in each segment (ordered by N), first appearance first."""
    return [segment.entity_ids for segment in parse_segments(story)]


def parse_tables(chain_of_thought: str) -> dict[int, list[dict[str, str]]]:
    """Rows of every markdown table under each ``## Image N`` header of ``chain_of_thought``.

    Returns ``{image_number (1-based): [row, ...]}`` where each row maps the table's header
    cells (as written) to the row's cells, plus ``"_table"``: the nearest ``###`` heading above
    the table (``Characters``, ``Objects``...). Tables of different shapes are all kept.
    """
    tables: dict[int, list[dict[str, str]]] = {}
    headers = list(_IMAGE_HEADER.finditer(chain_of_thought))
    for i, header in enumerate(headers):
        stop = headers[i + 1].start() if i + 1 < len(headers) else len(chain_of_thought)
        rows = tables.setdefault(int(header.group(1)), [])
        rows.extend(_section_rows(chain_of_thought[header.end() : stop]))
    return tables


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _section_rows(section: str) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    columns: list[str] | None = None
    heading = ""
    for line in section.splitlines():
        stripped = line.strip()
        if not stripped.startswith("|"):
            columns = None  # a table ends at the first non-table line
            if stripped.startswith("#"):
                heading = stripped.lstrip("#").strip()
            continue
        cells = _cells(stripped)
        if all(set(cell) <= set("-: ") for cell in cells):
            continue  # the |---|---| separator
        if columns is None:
            columns = cells
            continue
        row = dict(zip(columns, cells, strict=False))
        row["_table"] = heading
        rows.append(row)
    return rows


def _boxed_rows(tables: dict[int, list[dict[str, str]]]):
    """(image number, entity id, box, row) of every row of ``tables`` (:func:`parse_tables`)
    with an id and a box cell of at least four numbers (the first four are the box)."""
    for image, rows in tables.items():
        for row in rows:
            box_cell = next((v for k, v in row.items() if k.lower() == "bounding box"), None)
            entity_id = next(iter(row.values()), "")
            if box_cell is None or not entity_id:
                continue
            numbers = _NUMBER.findall(box_cell)
            if len(numbers) >= 4:
                yield image, entity_id, tuple(float(n) for n in numbers[:4]), row


def parse_boxes(chain_of_thought: str) -> dict[int, dict[str, Box]]:
    """Entity boxes per image from the ``chain_of_thought`` tables.

    Returns ``{image_number (1-based): {entity_id: (x1, y1, x2, y2)}}``. Every row of a table
    with a ``Bounding Box`` column contributes: the first cell is the id, the box cell must hold
    four numbers (rows without are skipped, never guessed).
    """
    tables = parse_tables(chain_of_thought)
    boxes: dict[int, dict[str, Box]] = {image: {} for image in tables}
    for image, entity_id, box, _ in _boxed_rows(tables):
        boxes[image][entity_id] = box
    return boxes


def parse_descriptions(chain_of_thought: str) -> dict[int, dict[str, str]]:
    """What the ``chain_of_thought`` tables say each boxed entity looks like, per image.

    Returns ``{image_number (1-based): {entity_id: description}}`` from every row that
    :func:`parse_boxes` keeps (an id and a box of four numbers) and whose ``Description`` cell
    is not empty. Only that column is read: a ``Name`` column never is (names live in the
    captions only).
    """
    tables = parse_tables(chain_of_thought)
    described: dict[int, dict[str, str]] = {image: {} for image in tables}
    for image, entity_id, _, row in _boxed_rows(tables):
        text = next((v for k, v in row.items() if k.lower() == "description"), "")
        text = _WS.sub(" ", text).strip()
        if text:
            described[image][entity_id] = text
    return described


def _ends_sentence(text: str, match: re.Match) -> bool:
    """Whether the terminator run ``match`` (see ``_SENTENCE_END``) ends a sentence of ``text``.

    It does not when the next word starts with a lowercase letter (``"Wait!" she says.``,
    ``He hesitates... then leaves.``), nor, for a single ``.``, after a one-letter initial
    (``J. Edgar``), a title or common abbreviation (``Mr.``, ``Capt.``, ``etc.``, ``e.g.``; the
    ``_ABBREVIATIONS``), a dotted acronym (``U.S.``, ``L.A.``) or ``No.`` before a digit.
    """
    following = _NEXT_WORD.match(text, match.end()).group(1)
    if following.islower():
        return False
    if match.group("stop") != ".":
        return True  # "!", "?", "?!", an ellipsis: never an abbreviation
    before = text[: match.start()]
    word = before.rsplit(maxsplit=1)[-1].lstrip(_OPENERS) if before.strip() else ""
    if word.lower() in _ABBREVIATIONS or _INITIAL.fullmatch(word) or _ACRONYM.fullmatch(word):
        return False
    return not (word.lower() == "no" and following.isdigit())


def apply_caption_policy(text: str, policy: str = "first_sentence") -> str:
    """The caption a model is trained to produce from a segment's plain text. Its length is
    bounded later, in tokens: every caption is cut at ``data.max_tokens`` BPE tokens, the one
    caption-length setting.

    - ``first_sentence`` (default): the text up to the end of its first sentence. A sentence
      ends at ``.``, ``!`` or ``?``
      (or a run of them: ``?!``, an ellipsis ``...``/``…``), with any closing quotes or
      brackets after it (``."``, ``!”``, ``?'``, ``.)``) kept, followed by whitespace or the
      end of the text. It does not end where the next word starts in lowercase (``"Wait!" she
      says.`` is one sentence; so is ``He pauses... then leaves.``), nor at the ``.`` of a
      one-letter initial (``J. Edgar``), a title or common abbreviation (Mr, Mrs, Ms, Dr, St,
      Jr, Sr, Prof, Lt, Capt, Col, Gen, Sgt, Rev, Mt, vs, etc, e.g, i.e), ``No.`` before a
      digit, or a dotted acronym (``U.S.``, ``L.A.``). The trade-off of that last rule: a
      sentence that really ends with an acronym or an abbreviation (``...moves to the U.S.
      They...``, ``...boxes, papers, etc. Tom...``) runs on into the next one; the token cap
      bounds the damage, and cutting ``the U.S. Marshal arrives.`` down to ``the U.S.`` would
      be worse. The lowercase rule cannot see a capitalised name after a quote:
      ``"Coming?" Maria asks.`` stops at ``"Coming?"``. Text with no sentence end is kept
      whole.
    - ``full``: the whole segment (the first N tokens of it: ``full`` with
      ``data.max_tokens=N``).

    The result is always a prefix of ``text``, so mention offsets stay valid.
    """
    if policy == "max_tokens":
        raise ValueError("caption policy 'max_tokens' is gone: use 'full'; every caption is "
                         "cut at data.max_tokens BPE tokens")
    if policy not in CAPTION_POLICIES:
        raise ValueError(f"unknown caption policy {policy!r}; choose one of {CAPTION_POLICIES}")
    if policy == "first_sentence":
        for end in _SENTENCE_END.finditer(text):
            if _ends_sentence(text, end):
                return text[: end.end()]
    return text
