"""The official eval's parsing rules: how the official code turns freely generated tokens into the
actions it executes (decode=official), per checkpoint family. Pure functions of token ids."""

from __future__ import annotations

from dataclasses import dataclass

from worldvla import vocab as V
from worldvla.recipe import FAMILIES  # which official eval loop `official` reproduces
from worldvla.stats import ACTION_DIM


def parse_action_blocks(ids: list[int]) -> list[list[int]]:
    """Official generate-then-parse: the ids between each 10004 and the next 15004 (a new 10004 restarts)."""
    blocks, start = [], None
    for i, tok in enumerate(ids):
        if tok == V.ACTION_START_ID:
            start = i
        elif tok == V.ACTION_END_ID and start is not None:
            blocks.append(list(ids[start + 1 : i]))
            start = None
    return blocks


@dataclass
class ParsedActions:
    """What the official eval loop executes from one generation: `blocks` (7 ids each) in order, then,
    if `failure` is set, the exception that ends the episode as a failure (the official loop catches
    any exception of a step, stops the episode and counts it as not successful)."""

    blocks: list[list[int]]
    failure: str | None = None


def _official_blocks(ids: list[int]) -> tuple[list[list[int]], str | None]:
    """The official parser (both repositories): `parse_action_blocks`, except that an end token before
    any start token raises there (its start index is never initialised)."""
    ids = [int(t) for t in ids]
    starts = [i for i, t in enumerate(ids) if t == V.ACTION_START_ID]
    ends = [i for i, t in enumerate(ids) if t == V.ACTION_END_ID]
    if ends and (not starts or ends[0] < starts[0]):
        return [], f"the official parser raises: end token {V.ACTION_END_ID} before any start token {V.ACTION_START_ID}"
    return parse_action_blocks(ids), None


def parse_official_worldvla(ids: list[int]) -> ParsedActions:
    """WorldVLA's eval loop: every parsed block is executed in order. A block longer than 7 is cut to
    its first 7 ids; one id is broadcast to all 7 dimensions (numpy broadcasting in the official
    un-normalisation); any other short block raises when its turn comes, after the earlier blocks ran.
    No block at all: the loop pops from an empty list and fails."""
    raw, failure = _official_blocks(ids)
    blocks: list[list[int]] = []
    if failure is None:
        for i, blk in enumerate(raw):
            if len(blk) >= ACTION_DIM:
                blocks.append(blk[:ACTION_DIM])
            elif len(blk) == 1:
                blocks.append(blk * ACTION_DIM)
            else:
                failure = (f"action block {i} has {len(blk)} ids: the official un-normalisation of a ({len(blk)},) "
                           f"action against ({ACTION_DIM},) statistics raises (WorldVLA rule)")
                break
    if failure is None and not blocks:
        failure = "no action block was generated: the official loop pops from an empty action list"
    return ParsedActions(blocks, failure)


def parse_official_rynnvla002(ids: list[int]) -> ParsedActions:
    """RynnVLA-002's eval loop: blocks are taken in order up to the first one that is not exactly 7 ids
    long (it and all later ones are dropped). No 7-id block first: the loop pops from an empty list
    and fails."""
    raw, failure = _official_blocks(ids)
    blocks: list[list[int]] = []
    if failure is None:
        for blk in raw:
            if len(blk) != ACTION_DIM:
                break
            blocks.append(blk)
    if failure is None and not blocks:
        failure = (f"no {ACTION_DIM}-id action block before the first malformed one: the official loop pops from "
                   "an empty action list (RynnVLA-002 rule)")
    return ParsedActions(blocks, failure)


def parse_official(ids: list[int], family: str) -> ParsedActions:
    """The official parsing rule of a checkpoint family (recipe.FAMILIES)."""
    if family == "worldvla":
        return parse_official_worldvla(ids)
    if family == "rynnvla002":
        return parse_official_rynnvla002(ids)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
