"""split_frames, mentions, chain_of_thought boxes and caption policy on StoryReasoning quirks."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cmar.data import (
    apply_caption_policy,
    frame_entities,
    parse_boxes,
    parse_segments,
    split_frames,
)

QUIRKY = """Title text outside any segment.
<gdi image2>In the  sterile room,
   <gdo char1>James</gdo>   <gda char1>enters</gda> beside <gdo bg26>a table</gdo>.
</gdi>
<gdi image1> <gdo char1 char2>John and   Sarah</gdo>
<gda char1 char2>walk</gda> along <gdl bg1 lm2>the Urban Street</gdl>.</gdi>
<gdi image3>   <gdo obj3>The door</gdo> closes"""


def test_split_frames_orders_by_image_number_and_strips_tags():
    assert split_frames(QUIRKY) == [
        "John and Sarah walk along the Urban Street.",
        "In the sterile room, James enters beside a table.",
        "The door closes",  # a missing </gdi> ends the segment at the end of the story
    ]


def test_frame_entities_keep_ids_including_mismatched_tag_kinds():
    assert frame_entities(QUIRKY) == [["char1", "char2", "bg1", "lm2"], ["char1", "bg26"], ["obj3"]]


def test_mention_offsets_point_into_the_plain_text():
    for seg in parse_segments(QUIRKY):
        for mention in seg.mentions:
            assert seg.text[mention.start:mention.end] == mention.text
    second = parse_segments(QUIRKY)[1]
    assert [(m.kind, m.ids, m.text) for m in second.mentions] == [
        ("gdo", ("char1",), "James"), ("gda", ("char1",), "enters"), ("gdo", ("bg26",), "a table")
    ]


def test_segment_count_mismatch_is_visible_to_the_caller():
    story = "<gdi image1> a </gdi><gdi image2> b </gdi><gdi image4> d </gdi>"
    assert [s.image for s in parse_segments(story)] == [1, 2, 4]  # the loader rejects this


def test_parse_boxes_reads_every_table_and_skips_rows_without_four_numbers():
    cot = """## Image 1
### Characters
| Character ID | Name | Description | Emotions | Actions | Narrative Function | Bounding Box |
|---|---|---|---|---|---|---|
| char1 | James | Man | Calm | Enters | Protagonist | 318,48,400,210 |
| char2 | Ghost | Unseen | - | - | - | not visible |
### Objects
| Object ID | Description | Function | Bounding Box |
|---|---|---|---|
| obj1 | boxes | props | 1.5, 2, 30, 40 |

## Image 2
| Character ID | Name | Bounding Box |
|---|---|---|
| char1 | James | 10,20,30,40 |
"""
    assert parse_boxes(cot) == {
        1: {"char1": (318.0, 48.0, 400.0, 210.0), "obj1": (1.5, 2.0, 30.0, 40.0)},
        2: {"char1": (10.0, 20.0, 30.0, 40.0)},
    }


TEXT = "Dr. Smith walks in. He sits down and waits for a very long time."


@pytest.mark.parametrize("policy,expected", [("first_sentence", "Dr. Smith walks in."),
                                             ("full", TEXT)])
def test_caption_policies(policy, expected):
    caption = apply_caption_policy(TEXT, policy)
    assert caption == expected
    assert TEXT.startswith(caption)  # a prefix, so mention offsets stay valid


# Hand-written prose in StoryReasoning's style (movie-scene narration), one quirk per line.
FIRST_SENTENCES = [
    ("J. Edgar waits by the door, his hat in his hands. He listens.",
     "J. Edgar waits by the door, his hat in his hands."),
    ("Agent T. Walsh and Dr. Kaplan study the map. A phone rings.",
     "Agent T. Walsh and Dr. Kaplan study the map."),
    ("Capt. Reyes, Lt. Moore and Sgt. Boyd crouch behind the truck. Shots ring out.",
     "Capt. Reyes, Lt. Moore and Sgt. Boyd crouch behind the truck."),
    ("Mrs. Dalton and Mr. Price cross St. Mark's Square at dusk. Pigeons scatter.",
     "Mrs. Dalton and Mr. Price cross St. Mark's Square at dusk."),
    ("The U.S. Marshal steps off the train in L.A. and scans the crowd. Nobody moves.",
     "The U.S. Marshal steps off the train in L.A. and scans the crowd."),
    ("He climbs the stairs to Room No. 12 and knocks twice. Silence.",
     "He climbs the stairs to Room No. 12 and knocks twice."),
    ("Crates, ropes, lamps, etc. litter the deck of the ship. Tom ducks.",
     "Crates, ropes, lamps, etc. litter the deck of the ship."),
    ('Sarah leans in and whispers, "We leave tonight." Tom nods slowly.',
     'Sarah leans in and whispers, "We leave tonight."'),
    ("Tom raises the lantern and shouts, “Over here!” The others turn.",
     "Tom raises the lantern and shouts, “Over here!”"),
    ('Ann stares at the letter. "Why now?" she asks. The clock ticks.',
     "Ann stares at the letter."),
    ('"Are you coming?" he asks from the doorway. She shrugs.',
     '"Are you coming?" he asks from the doorway.'),
    # the known limit: a capitalised name after a quoted "?" or "!" reads as a new sentence
    ('"Are you coming?" Maria asks from the doorway. He shrugs.', '"Are you coming?"'),
    ('"Wait!" she cries as the carriage pulls away. Tom stares after her.',
     '"Wait!" she cries as the carriage pulls away.'),
    ('The sign reads "Closed" and the windows are dark. He walks on.',
     'The sign reads "Closed" and the windows are dark.'),
    ("The corridor is silent... Then a door creaks open.", "The corridor is silent..."),
    ("Mike hesitates… then he steps into the vault. Alarms blare.",
     "Mike hesitates… then he steps into the vault."),
    ("She lowers the gun (her hands are shaking.) The man runs.",
     "She lowers the gun (her hands are shaking.)"),
    ("Who is at the door?! Jack grabs the bat.", "Who is at the door?!"),
    ("A man in a long grey coat walks slowly across the empty platform",
     "A man in a long grey coat walks slowly across the empty platform"),
]


@pytest.mark.parametrize("text,expected", FIRST_SENTENCES)
def test_first_sentence_on_movie_prose(text, expected):
    caption = apply_caption_policy(text, "first_sentence")
    assert caption == expected
    assert text.startswith(caption)


def test_first_sentence_without_an_end_is_the_whole_text():
    words = ("The camera pans across rows of empty seats while rain drums on the roof of the "
             "old theatre and a single usher sweeps the aisle").split()
    text = " ".join(words)
    assert apply_caption_policy(text, "first_sentence") == text


def test_first_sentence_is_a_prefix_so_mentions_keep_their_offsets():
    story = ('<gdi image1> <gdo char1>J. Edgar</gdo> tells <gdo char2>Mrs. Hale</gdo>, '
             '"Stay here." <gdo char2>She</gdo> nods. </gdi>')
    (seg,) = parse_segments(story)
    caption = apply_caption_policy(seg.text, "first_sentence")
    assert caption == 'J. Edgar tells Mrs. Hale, "Stay here."'
    kept = [m for m in seg.mentions if m.start < len(caption)]
    assert [caption[m.start:m.end] for m in kept] == ["J. Edgar", "Mrs. Hale"]


def test_unknown_caption_policy_names_the_choices():
    with pytest.raises(ValueError, match="first_sentence"):
        apply_caption_policy(TEXT, "last_sentence")
    with pytest.raises(ValueError, match="use 'full'; every caption is cut at data.max_tokens"):
        apply_caption_policy(TEXT, "max_tokens")


words = st.lists(st.from_regex(r"[A-Za-z][a-z]{0,6}[.,]?", fullmatch=True), min_size=1, max_size=6)
blank = st.sampled_from([" ", "  ", "\n", " \n\t "])
tag = st.sampled_from(["gdo", "gda", "gdl"])
ids = st.lists(st.from_regex(r"(char|obj|bg|lm)[1-9][0-9]?", fullmatch=True), min_size=1,
               max_size=3)


@given(st.lists(st.tuples(words, st.booleans(), tag, ids, blank), min_size=1, max_size=8))
def test_any_tagged_segment_strips_to_its_words(pieces):
    """Property: whatever the tags and whitespace, the plain text is the words, single-spaced,
    and every mention's offsets select exactly its words."""
    body, plain = "", []
    for chunk, tagged, kind, entity_ids, space in pieces:
        text = " ".join(chunk)
        body += (f"<{kind} {' '.join(entity_ids)}>{text}</{kind}>" if tagged else text) + space
        plain.append(text)
    (seg,) = parse_segments(f"<gdi image1>{body}</gdi>")
    assert seg.text == " ".join(plain)
    tagged_texts = [" ".join(c) for c, tagged, *_ in pieces if tagged]
    assert [m.text for m in seg.mentions] == tagged_texts
    for m in seg.mentions:
        assert seg.text[m.start:m.end] == m.text
