"""Narrative xhtml (R4 §2.6 Narrative, txt-1/txt-2): the lexical rule every div is held to,
and the profile controls of the narrative (source classes, language sections)."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from typing import Any

from fhirschema.validator.findings import Finding, finding

# txt-1: HTML 4.0's basic formatting elements, tables, lists, <a>, images (chapters 7-11, 15).
ALLOWED = frozenset(
    ["a", "abbr", "acronym", "address", "b", "big", "blockquote", "br", "caption", "cite", "code", "col", "colgroup", "dd", "dfn", "div", "dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "q", "samp", "small", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt", "ul", "var"]
)  # fmt: skip


def _trie(words: list[str]) -> str:
    """A regular expression for exactly `words`, as a prefix tree: `a(?:bbr|cronym|ddress)?|b...`.

    A flat alternation of the 50 names is tried name by name at every tag; the tree tries one
    branch per letter (callgrind: the narrative scan was the largest cost invariants added)."""
    heads: dict[str, list[str]] = {}
    for word in sorted(words):
        heads.setdefault(word[0], []).append(word[1:])
    out = []
    for head, rests in heads.items():
        longer = [rest for rest in rests if rest]
        if not longer:
            out.append(re.escape(head))
        else:
            out.append(re.escape(head) + "(?:" + _trie(longer) + ")" + ("?" if "" in rests else ""))
    return "|".join(out)


# One linear pass each: the first tag outside ALLOWED, active content, some text after a tag.
_BAD_TAG = re.compile(
    r"<(?![/!?])(?!(?:" + _trie(sorted(ALLOWED)) + r")[\s/>])\s*([A-Za-z][\w:.-]*)?"
)  # XHTML names are lower case: `<P>` is no html element, `onClick` no attribute
# Searched, then the character before is checked: one scan of the text, where finding each of
# " on", "\non" and "\ton" took three (and "script:" a fourth).
_EVENT_ATTRIBUTE = re.compile(r"on[a-z]+\s*=")
_ATTRIBUTE_GAP = frozenset(" \n\t")
_TEXT = re.compile(r">\s*[^\s<]")
_XHTML_NS = "{http://www.w3.org/1999/xhtml}"
_LANG = ("lang", "{http://www.w3.org/XML/1998/namespace}lang")
SOURCES = frozenset(("boilerplate", "generated", "original"))


def is_div(div: str) -> bool:
    """The xhtml primitive's lexical rule: one <div> element."""
    return div.lstrip().startswith("<div") and div.rstrip().endswith("</div>")


def constraint_findings(div: str) -> list[Finding]:
    """txt-1 and txt-2 (R4 Narrative.div, `htmlChecks()`): FHIRPath constraints, so checked when
    invariants are (they cost a scan of every narrative)."""
    found = problem(div)
    if found is None:
        return []
    key = "txt-2" if "(txt-2)" in found else "txt-1"
    return [finding("fs601", f"constraint {key} failed: {found}")]


def problem(div: str) -> str | None:
    """Why `div` is not a narrative R4 allows (None: it is); regular expressions only, no parse."""
    if not is_div(div):
        return "the narrative must be a single xhtml <div> element"
    bad = _BAD_TAG.search(div)
    if bad is not None:
        return f"<{bad.group(1) or '?'}> is not allowed in a narrative (txt-1: basic html formatting only)"
    if _active(div):
        return "the narrative must not contain active content (event attributes, script urls)"
    if _TEXT.search(div) is None and "<img" not in div:
        return "the narrative has no non-whitespace content (txt-2)"
    return None


def _active(div: str) -> bool:
    """Event attributes (`onclick=`) or script urls."""
    if "script:" in div:  # javascript:, vbscript:
        return True
    found = _EVENT_ATTRIBUTE.search(div)
    while found is not None:
        start = found.start()
        if start > 0 and div[start - 1] in _ATTRIBUTE_GAP:
            return True
        found = _EVENT_ATTRIBUTE.search(div, start + 1)
    return False


def control_findings(
    item: Any, source: str | None, language: str | None, resource_language: Any
) -> list[Finding]:
    """A profile's narrative-source-control / narrative-language-control on a Narrative value."""
    div = item.get("div") if isinstance(item, dict) else None
    if not isinstance(div, str):
        return []
    try:
        root = ElementTree.fromstring(div)
    except ElementTree.ParseError as exc:
        return [finding("fs1401", f"the narrative is not well-formed xhtml: {exc}", extra=("div",))]
    out: list[Finding] = []
    if source is not None:
        if root.text and root.text.strip():
            out.append(_unsourced(root.text))
        for child in root:
            if not set((child.get("class") or "").split()) & SOURCES:
                out.append(_unsourced("".join(child.itertext()) or child.tag))
            if child.tail and child.tail.strip():
                out.append(_unsourced(child.tail))
    if language is not None:
        sections = [
            lang
            for child in root
            if child.tag in ("div", _XHTML_NS + "div")
            for lang in [next((child.get(a) for a in _LANG if child.get(a)), None)]
            if lang
        ]
        if language == "_yes" and not sections:
            out.append(
                finding("fs1401", "the narrative has no language sections, and the profile requires them")
            )
        elif language == "_no" and sections:
            out.append(finding("fs1401", f"the narrative has language sections ({', '.join(sections)}), "
                               "and the profile prohibits them"))  # fmt: skip
        elif (
            language == "_resource"
            and isinstance(resource_language, str)
            and resource_language not in sections
        ):
            out.append(finding("fs1401", f"the profile requires a narrative section in the resource's language "
                               f"({resource_language}); found {', '.join(sections) or 'none'}"))  # fmt: skip
    return out


def _unsourced(text: str) -> Finding:
    shown = " ".join(text.split())[:60]
    return finding("fs1401", f"narrative content {shown!r} has no class telling its source "
                   "(boilerplate, generated or original), which the profile requires")  # fmt: skip
