"""Osprey-724K (huggingface.co/datasets/AntGroup-MI/Osprey-724K) read into instruction records
(lavis/datasets/datasets/instructions.py), so it trains through the same items as the instruction JSONL.

Facts about the files, from github.com/CircleRadon/Osprey `osprey/datasets/osprey_724k.py` and `stage2_data.py`
(`annToMask`), `osprey/configs/stage3.json` and `dataset.md`:
- five JSON files (osprey_short_form, osprey_conversation(s), osprey_detail_description, osprey_part_level,
  osprey_lvis_positive_negative), each a list of records over COCO images (`file_name`, `height`, `width`);
- a record's regions are `annotation[i]["segmentation"]`: COCO polygons (a list of rings) or an RLE dict,
  compressed (`counts` a string) or not (`counts` a list);
- the image is `{image_root}/{file_name after its last "_"}` (COCO_train2014_000000123456.jpg -> 000000123456.jpg;
  a name without "_" is used as it is);
- `conversations` alternate human / gpt turns and name regions as `<region1>`, `<region2>`, ... (1-based into
  `annotation`). Osprey itself either puts its mask tokens where the names are (the LVIS positive / negative file)
  or announces every region once before the first question and keeps the names as words "region1" in the text
  (the conversation, short-form and part-level files, whose answers also name regions); short-form and part-level
  questions get " Answer the question using a single word or phrase." appended;
- the detailed-description file has no conversations: `description[i]` is "<regionN>: text" for `annotation[i]`.

Here (per file, `regions`): `inline` replaces each `<regionN>` of a human turn by the placeholder, the regions in
the order they are named (a region named twice is given twice); `preamble` opens the first human turn with
"There are N regions in the picture: region1 <region>, region2 <region>." and writes the names as words. In both,
names in answers become words ("region2"). A description record becomes one record per region, so each sample
carries its own region and no other region's description. Records naming a region that does not exist, or with
unreadable fields, are skipped and counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lavis.datasets.annotation_io import AnnotationError, parsing, read_json
from lavis.datasets.datasets.instructions import InstructionRecord, Region

REGION_NAME = re.compile(r"<region(\d+)>")
DESCRIPTION = re.compile(r"^\s*<[^>]*>\s*:\s*(.*)$", re.S)  # "<region3>: a red car ..." -> "a red car ..."
REFERENCE_STYLES = ("inline", "preamble")


@dataclass
class OspreyFileConfig:
    path: str = "???"  # relative to the builder's annotation_root
    split: str = "train"
    regions: str = "inline"  # inline | preamble (module docstring)
    question_suffix: str = ""  # appended to every question, e.g. Osprey's short-answer instruction


def osprey_image(file_name: str) -> str:
    """The image path of a record, relative to the image root: Osprey's rule (the part after the last "_")."""
    return file_name.split("_")[-1]


def read_osprey(path: str | Path, regions: str, question_suffix: str, region_token: str, describe_question: str
                ) -> tuple[list[InstructionRecord], list[tuple[str, str]]]:
    """The instruction records of one Osprey-724K JSON file, and the (record id, reason) of the records left out.
    `describe_question` is the question of a description record, its `{region}` the placeholder."""
    if regions not in REFERENCE_STYLES:
        raise ValueError(f"osprey724k: regions must be one of {REFERENCE_STYLES}, not '{regions}'")
    entries = read_json(path, "an Osprey-724K JSON list")
    if not isinstance(entries, list):
        raise AnnotationError(f"{path}: expected a JSON list of Osprey records, got {type(entries).__name__}")
    records, skipped = [], []
    stem = Path(path).stem
    with parsing(path, "an Osprey-724K JSON list"):
        for position, entry in enumerate(entries):
            record_id = f"{stem}#{position}"
            try:
                records += _records(entry, record_id, regions, question_suffix, region_token, describe_question)
            except ValueError as e:
                skipped.append((record_id, str(e)))
    return records, skipped


def _records(entry: Any, record_id: str, style: str, suffix: str, token: str, describe: str
             ) -> list[InstructionRecord]:
    if not isinstance(entry, dict):
        raise ValueError(f"a record must be an object, not {type(entry).__name__}")
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise ValueError("record has no 'file_name'")
    masks = _regions(entry.get("annotation"))
    image = osprey_image(file_name)
    if "conversations" in entry:
        regions, turns = _conversation(entry["conversations"], masks, style, suffix, token)
        return [InstructionRecord(record_id, image, regions, turns)]
    if "description" in entry:
        return _descriptions(entry["description"], masks, record_id, image, describe.format(region=token))
    raise ValueError("record has neither 'conversations' nor 'description'")


def _regions(annotation: Any) -> tuple[Region, ...]:
    if not isinstance(annotation, list) or not annotation:
        raise ValueError("record has no 'annotation' list of regions")
    regions = []
    for k, ann in enumerate(annotation):
        segmentation = ann.get("segmentation") if isinstance(ann, dict) else None
        if isinstance(segmentation, list) and segmentation:
            regions.append(Region("polygon", segmentation))
        elif isinstance(segmentation, dict) and {"size", "counts"} <= set(segmentation):
            regions.append(Region("mask", segmentation))
        else:
            raise ValueError(f"annotation {k} has no 'segmentation' (COCO polygons or RLE)")
    return tuple(regions)


def _region_index(match: re.Match, count: int) -> int:
    number = int(match.group(1))
    if not 1 <= number <= count:
        raise ValueError(f"a turn names {match.group(0)} but the record has {count} region(s)")
    return number - 1


def _conversation(conversations: Any, masks: tuple[Region, ...], style: str, suffix: str, token: str
                  ) -> tuple[tuple[Region, ...], tuple[tuple[str, str], ...]]:
    if not isinstance(conversations, list) or len(conversations) < 2:
        raise ValueError("'conversations' has no question with an answer")
    pairs = len(conversations) // 2  # a trailing question without its answer is no sample
    turns: list[tuple[str, str]] = []
    named: list[Region] = []

    def as_words(text: str) -> str:
        return REGION_NAME.sub(lambda m: f"region{_region_index(m, len(masks)) + 1}", text)

    def as_placeholders(text: str) -> str:
        def placeholder(match: re.Match) -> str:
            named.append(masks[_region_index(match, len(masks))])
            return token
        return REGION_NAME.sub(placeholder, text)

    for k in range(2 * pairs):
        turn = conversations[k]
        speaker, value = (turn.get("from"), turn.get("value")) if isinstance(turn, dict) else (None, None)
        if speaker != ("human", "gpt")[k % 2] or not isinstance(value, str):
            raise ValueError(f"conversation turn {k} is not a {('human', 'gpt')[k % 2]} turn with a text 'value'")
        if speaker == "gpt":
            turns.append((speaker, as_words(value)))
            continue
        question = (as_placeholders(value) if style == "inline" else as_words(value)) + suffix
        if style == "preamble" and k == 0:
            question = _preamble(len(masks), token) + " " + question
        turns.append((speaker, question))
    return (tuple(named) if style == "inline" else masks), tuple(turns)


def _preamble(count: int, token: str) -> str:
    names = ", ".join(f"region{i + 1} {token}" for i in range(count))
    return f"There {'is 1 region' if count == 1 else f'are {count} regions'} in the picture: {names}."


def _descriptions(descriptions: Any, masks: tuple[Region, ...], record_id: str, image: str, question: str
                  ) -> list[InstructionRecord]:
    if not isinstance(descriptions, list) or len(descriptions) != len(masks):
        found = len(descriptions) if isinstance(descriptions, list) else type(descriptions).__name__
        raise ValueError(f"'description' must list one '<regionN>: text' per annotation ({len(masks)}), got {found}")
    records = []
    for k, (text, mask) in enumerate(zip(descriptions, masks)):
        match = DESCRIPTION.match(text) if isinstance(text, str) else None
        if match is None:
            raise ValueError(f"description {k} is not '<regionN>: text': {str(text)[:80]!r}")
        records.append(InstructionRecord(f"{record_id}/{k}", image, (mask,),
                                         (("human", question), ("gpt", match.group(1).strip()))))
    return records
