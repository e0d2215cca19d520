"""Radiology report text: sections, sentences, relaxed-CLIP sentence sampling, zero-shot prompts, meta-labels.

Pipeline (DESIGN.md "Data flow"): report -> :func:`extract_sections` (FINDINGS, IMPRESSION, or the
last paragraph as fallback) -> :func:`split_sentences` -> :func:`sample_sentences` (training
augmentation) or :func:`prompt_pairs` (zero-shot) -> tokenizer.

The section rules follow the MIMIC-CXR sectioner (MIT-LCP/mimic-cxr ``txt/section_parser.py``, the
tool the relaxed-CLIP paper cites): a section header is a label at the start of a line followed by a
colon, either a known section name in any case ("Findings:", typos such as "IMPRESSON:" too) or any
upper-case label; header variants are normalised ("CONCLUSION" and "FINDINGS AND IMPRESSION" count as
impression, view descriptions such as "CHEST, PA AND LATERAL" as findings); empty sections are ignored
and the last non-empty occurrence of a section wins. Reports flattened to one line are read through
their inline upper-case headers when no line-start header gives a section. This module is written
from those facts, not from that code.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = [
    "CHEXZERO_TEMPLATES",
    "extract_sections",
    "clinical_text",
    "split_sentences",
    "sample_sentences",
    "prompt_pairs",
    "meta_label_text",
]

# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------

# A header: at a line start, a letter, then letters/spaces/()/,/-/& up to a colon. The colon must be
# followed by whitespace or the end (so "10:30" or "C:\" never start a section).
_HEADER = re.compile(r"^[ \t]*([A-Za-z][A-Za-z ()/,&'-]{0,60}?)[ \t]*:(?=\s|$)", re.MULTILINE)
# Reports flattened to one line ("... clear. IMPRESSION: No acute ...") keep their upper-case
# headers inline; these are searched only when no line-start header gives FINDINGS or IMPRESSION.
_INLINE_HEADER = re.compile(
    r"(?<![A-Za-z])(EXAMINATION|INDICATION|CLINICAL HISTORY|HISTORY|TECHNIQUE|COMPARISON|FINDINGS|IMPRESSION"
    r"|CONCLUSION|RECOMMENDATIONS?|RECOMMENDATION\(S\)|NOTIFICATION)[ \t]*:(?=\s|$)"
)
# A blank (whitespace-only) line separates paragraphs; MIMIC writes it as "\n \n".
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")
# All-caps headers that describe the exam view are the findings section in MIMIC-CXR.
_VIEW_HEADER = re.compile(
    r"\b(chest|portable|views?|frontal|lateral|pa|ap|upright|semi-upright|supine|ribs|bone window)\b"
)
_KNOWN_SECTIONS = ("findings", "impression", "comparison", "indication", "history", "technique", "examination",
                   "recommendations", "notification", "addendum", "wet read", "note", "comment")


def _normalize_header(raw: str) -> str | None:
    """Canonical section name for a header label, or None if the label is not a section header."""
    name = " ".join(raw.lower().split())
    if "impression" in name or "conclusion" in name:
        return "impression"  # includes "findings and impression", "findings/impression"
    if "finding" in name:
        return "findings"
    close = difflib.get_close_matches(name, _KNOWN_SECTIONS, n=1, cutoff=0.8)  # typos: "impresson", "findngs"
    if close:
        return close[0]
    if not raw.strip().isupper():
        return None  # "Heart size: normal" is prose, not a header
    if _VIEW_HEADER.search(name):
        return "findings"
    return name


def _clean(text: str) -> str:
    return " ".join(text.split())


def _last_paragraph(report: str) -> str:
    paragraphs = [p for p in _PARAGRAPH_BREAK.split(report) if p.strip()]
    if not paragraphs:
        return ""
    last = paragraphs[-1]
    header = _HEADER.match(last)
    if header and _normalize_header(header.group(1)) is not None:
        last = last[header.end():]  # drop a leading "COMMENT:"-style label
    return _clean(last)


def _headers(report: str, pattern: re.Pattern) -> list[tuple[re.Match, str]]:
    found = [(match, _normalize_header(match.group(1))) for match in pattern.finditer(report)]
    return [(match, name) for match, name in found if name is not None]


def _sections(report: str, pattern: re.Pattern) -> dict[str, str]:
    headers = _headers(report, pattern)
    sections = {"findings": "", "impression": ""}
    for index, (match, name) in enumerate(headers):
        end = headers[index + 1][0].start() if index + 1 < len(headers) else len(report)
        body = _clean(report[match.end():end])
        if name in sections and body:
            sections[name] = body  # last non-empty occurrence wins (MIMIC convention)
    return sections


def extract_sections(report: str) -> dict[str, str]:
    """FINDINGS and IMPRESSION of a free-text report, with the relaxed-CLIP last-paragraph fallback.

    Relaxed-CLIP paper (§4.1, MIMIC-CXR): "Since meaningful observations are mainly written in the
    "Findings" or "Impression" sections, we extract those two sections for each study. If the section
    is not extracted by the rule-based method, we use the last paragraph of those samples."

    Returns:
        ``{"findings": str, "impression": str, "last_paragraph": str}``, whitespace-collapsed,
        "" when absent. ``last_paragraph`` is filled only when neither FINDINGS nor IMPRESSION was
        found (the fallback); it is the last blank-line-separated paragraph, without a header label.
    """
    if report is None:
        report = ""
    if not isinstance(report, str):
        raise TypeError(f"report must be a string, got {type(report).__name__}.")
    report = report.replace("\r\n", "\n").replace("\r", "\n")
    sections = _sections(report, _HEADER)
    if not (sections["findings"] or sections["impression"]):
        sections = _sections(report, _INLINE_HEADER)
    fallback = "" if (sections["findings"] or sections["impression"]) else _last_paragraph(report)
    return {"findings": sections["findings"], "impression": sections["impression"], "last_paragraph": fallback}


def clinical_text(report: str) -> str:
    """The text relaxed-CLIP trains on: FINDINGS + " " + IMPRESSION, or the last paragraph (fallback)."""
    sections = extract_sections(report)
    joined = " ".join(part for part in (sections["findings"], sections["impression"]) if part)
    return joined or sections["last_paragraph"]


# ----------------------------------------------------------------------------------------------
# Sentences
# ----------------------------------------------------------------------------------------------

# Words whose trailing period is not a sentence end (lower-case, without the final period).
_ABBREVIATIONS = frozenset({
    "dr", "mr", "mrs", "ms", "prof", "sr", "jr", "st", "vs", "approx", "appt", "e.g", "i.e", "cf", "fig",
    "figs", "resp", "incl", "min", "max", "est", "hx", "dx", "sx", "tx", "pt", "pts", "yo", "y.o", "wk", "wks",
    "mo", "mos", "yr", "yrs", "hosp", "dept", "univ", "ca", "sq", "vol", "al", "et",
})
# "a.m." / "p.m." end a sentence only when a capitalised word follows ("at 9 a.m. on ___" does not split).
_TIME_ABBREVIATIONS = frozenset({"a.m", "p.m"})
# List markers at the start of an item: "1.", "2)", "(3)" and bullets "-", "*", "•".
_LIST_MARKER = re.compile(r"^\s*(?:\(?\d{1,2}[.)](?!\d)|[-*\u2022\u2023\u25e6])\s*")
# A line that starts a list item (a boundary even without a period before it).
_LIST_LINE = re.compile(r"\n(?=[ \t]*(?:\(?\d{1,2}[.)](?!\d)|[-*\u2022\u2023\u25e6])\s)")
# Candidate boundary: sentence punctuation (+ closing quotes/brackets), whitespace, then a sentence start.
_BOUNDARY = re.compile(
    r"([.!?]+[\"')\]]*)(\s+)(?=[\"'(\[]?[A-Z0-9_\-*\u2022])"  # "clear. The", "clear. 2. ..."
    r"|(?<=[a-z]{3})(\.)()(?=[A-Z][a-z])"  # a missing space: "carina.The"
)


def _token_before(text: str, end: int) -> str:
    """The whitespace-delimited token that ends at ``end`` (exclusive), e.g. "Dr." or "2.5"."""
    start = end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    return text[start:end]


def _is_boundary(text: str, punct_end: int, next_start: int, sentence_start: int) -> bool:
    token = _token_before(text, punct_end)
    bare = token.rstrip("\"')]").rstrip(".!?")
    if not token.rstrip("\"')]").endswith("."):
        return True  # "!" or "?"
    word = bare.lower().lstrip("(\"'[")
    if word in _ABBREVIATIONS:
        return False
    following = text[next_start:next_start + 2]
    if word in _TIME_ABBREVIATIONS:
        return following[:1].isupper() and following[1:2].islower()
    if word == "no" and following[:1].isdigit():
        return False  # "No. 2"
    if len(bare) == 1 and bare.isalpha() and bare.isupper():
        return False  # an initial: "Dr. J. Smith"
    if _LIST_MARKER.fullmatch(text[sentence_start:punct_end] + " "):
        return False  # the "1." of a numbered item
    return True


def split_sentences(text: str) -> list[str]:
    """Split report text into sentences.

    Survives abbreviations ("Dr.", "approx.", "vs.", "e.g."), decimals ("1.5 cm"), initials, and
    numbered or bulleted lists ("1. ... 2. ...", "- ..."), whose markers are removed. Paragraph
    breaks and lines that start a list item are boundaries; other line breaks are wrapping. Section
    headers are not removed: pass section text (see :func:`clinical_text`).

    Returns:
        Sentences with collapsed whitespace, in order; empty pieces dropped.
    """
    if not text or not text.strip():
        return []
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    blocks = [b for chunk in _PARAGRAPH_BREAK.split(text) for b in _LIST_LINE.split(chunk)]
    sentences: list[str] = []
    for block in blocks:
        block = " ".join(block.split())
        start = 0
        for match in _BOUNDARY.finditer(block):
            punct_group = 1 if match.group(1) is not None else 3
            punct_end, next_start = match.end(punct_group), match.end(punct_group + 1)
            if _is_boundary(block, punct_end, next_start, start):
                sentences.append(block[start:punct_end])
                start = next_start
        sentences.append(block[start:])
    cleaned = []
    for sentence in sentences:
        sentence = _LIST_MARKER.sub("", sentence, count=1).strip()
        if sentence and any(ch.isalnum() for ch in sentence):
            cleaned.append(sentence)
    return cleaned


def sample_sentences(
    report_or_sentences: str | Sequence[str],
    n: int = 3,
    rng: np.random.Generator | int | None = None,
) -> str:
    """Relaxed-CLIP random sentence sampling (text augmentation, §3.2 of the paper).

    Paper: "We randomly subsample n sentences from the report for every sample [...] Suppose that the
    number of sentences in the report is m, then the image can be matched mCn positive samples"; n = 3
    in all experiments. mCn counts combinations, so sampling is without replacement and the chosen
    sentences keep their report order. When m <= n every sentence is kept (the whole text: the only
    combination left); m = 0 gives "".

    Args:
        report_or_sentences: a report (its FINDINGS + IMPRESSION are used, or the last paragraph when
            neither exists; a text without any section header is used whole) or a list of sentences.
        n: sentences per sample.
        rng: a ``numpy.random.Generator`` (or a seed); draw a new sample each epoch.
    Returns:
        The sampled sentences joined by single spaces.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    if isinstance(report_or_sentences, str):
        text = report_or_sentences
        if _headers(text, _HEADER) or _headers(text, _INLINE_HEADER):
            text = clinical_text(text)
        sentences = split_sentences(text)
    else:
        sentences = [s for s in report_or_sentences if s and s.strip()]
    if len(sentences) <= n:
        return " ".join(sentences)
    generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    chosen = np.sort(generator.choice(len(sentences), size=n, replace=False))
    return " ".join(sentences[i] for i in chosen)


# ----------------------------------------------------------------------------------------------
# Zero-shot prompts and meta-label text
# ----------------------------------------------------------------------------------------------

# CheXzero (rajpurkarlab/CheXzero zero_shot.py): one positive "{}" and one negative "no {}" template,
# filled with the raw label name (the CLIP tokenizer lower-cases).
CHEXZERO_TEMPLATES: tuple[tuple[str, str], ...] = (("{}", "no {}"),)


def prompt_pairs(
    label: str,
    templates: Sequence[tuple[str, str]] = CHEXZERO_TEMPLATES,
    fix_negated_labels: bool = False,
) -> tuple[list[str], list[str]]:
    """Positive and negative zero-shot prompts for one label (CheXzero "pair" softmax evaluation).

    Args:
        label: the class name, e.g. "Pleural Effusion".
        templates: (positive, negative) format strings with one ``{}``; the text embeddings of a
            label are averaged over templates.
        fix_negated_labels: CheXzero feeds "no No Finding" for "No Finding", which inverts that class
            (CheXzero issue #19, AUROC 0.07). True swaps in "no finding" / "finding" for labels that
            start with "No ". Default False = CheXzero as published.
    Returns:
        ``(positives, negatives)``, one string per template.
    """
    if not label or not label.strip():
        raise ValueError("prompt_pairs: label is empty.")
    for pair in templates:
        if len(pair) != 2 or any(template.count("{}") != 1 for template in pair):
            raise ValueError(f"Each template pair needs two strings with exactly one '{{}}', got {pair!r}.")
    if fix_negated_labels and label.lower().startswith("no "):
        condition = label[3:]
        positives = [negative.format(condition) for _, negative in templates]
        negatives = [positive.format(condition) for positive, _ in templates]
        return positives, negatives
    positives = [positive.format(label) for positive, _ in templates]
    negatives = [negative.format(label) for _, negative in templates]
    return positives, negatives


def meta_label_text(
    labels: Mapping[str, object] | Sequence[object],
    label_names: Sequence[str] | None = None,
    style: str = "paper",
    empty_text: str = "",
) -> str:
    """CXR-CML "meta label" caption built from the present labels (CXR-CML paper §2, Text Generation).

    Paper: "Textual descriptions are constructed for all classes that are marked as present [...] for
    an image containing adenopathy and pulmonary effusion, the generated text is: "adenopathy is present,
    pulmonary effusion is present"". ``style="paper"`` reproduces that (lower-case names, ", ").
    ``style="code"`` reproduces the official ``text_generation.py`` of chinnarouge/CXR_CML:
    "{Name} is present." per class in label order, joined by " ", names as in the CSV header.
    Neither says what to write when no class is present: the code writes "" (the default of
    ``empty_text``); with the CXR-LT 40 labels this only happens if "Normal" is 0 too.

    Args:
        labels: ``{name: value}``, a vector of values (needs ``label_names``), or a list of present
            names. A value counts as present when it equals 1 (NaN/0/-1 are not present).
        label_names: names for a value vector.
        style: "paper" or "code".
        empty_text: returned when nothing is present.
    """
    if style not in ("paper", "code"):
        raise ValueError(f"style must be 'paper' or 'code', got {style!r}.")
    if isinstance(labels, Mapping):
        present = [name for name, value in labels.items() if _is_present(value)]
    elif label_names is not None:
        values = list(labels) if isinstance(labels, list) else list(np.asarray(labels, dtype=np.float64).reshape(-1))
        if len(values) != len(label_names):
            raise ValueError(f"meta_label_text: {len(values)} label values but {len(label_names)} label_names.")
        present = [name for name, value in zip(label_names, values) if _is_present(value)]
    elif all(isinstance(name, str) for name in labels):
        present = list(labels)
    else:
        raise ValueError("meta_label_text: a vector of label values needs label_names.")
    if not present:
        return empty_text
    if style == "paper":
        return ", ".join(f"{name.lower()} is present" for name in present)
    return " ".join(f"{name} is present." for name in present)


def _is_present(value: object) -> bool:
    try:
        return float(value) == 1.0
    except (TypeError, ValueError):
        return False
