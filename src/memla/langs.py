"""Language facts in one place: the 12 benchmark languages, their names, the join rule.

The MKEB benchmark (and memla's built-in ``mkeb-mini``) covers twelve languages,
in this order: en zh fr de ja ko pt ru it es pl th.  Chinese, Japanese and Thai
are written without spaces between words, so the target of a cloze prompt is
appended without a separator (DESIGN.md, "Target join rule").  Any other valid
ISO 639-1 two-letter code passes through (datasets such as BMIKE-53 cover 53
languages) and uses ``" "`` as separator.
"""

from __future__ import annotations

from collections.abc import Iterable

from memla.errors import DataError

LANGS: tuple[str, ...] = ("en", "zh", "fr", "de", "ja", "ko", "pt", "ru", "it", "es", "pl", "th")

LANG_NAMES: dict[str, str] = {
    "en": "English",
    "zh": "Chinese",
    "fr": "French",
    "de": "German",
    "ja": "Japanese",
    "ko": "Korean",
    "pt": "Portuguese",
    "ru": "Russian",
    "it": "Italian",
    "es": "Spanish",
    "pl": "Polish",
    "th": "Thai",
}

NO_SPACE: frozenset[str] = frozenset({"zh", "ja", "th"})

# Every ISO 639-1 code (two letters).  Codes outside LANGS are accepted as they are.
ISO_639_1: frozenset[str] = frozenset(
    """
    aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs
    cu cv cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha
    he hi ho hr ht hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn
    ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb
    nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd
    se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw
    ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu
    """.split()
)

# Non-standard codes that public editing datasets use in file names and keys
# (MzsRE writes "cz" and "du", BMIKE-53 "zh-cn"); only `normalize` applies them.
ALIASES: dict[str, str] = {
    "cz": "cs",
    "du": "nl",
    "jp": "ja",
    "gr": "el",
    "vn": "vi",
    "dk": "da",
    "ua": "uk",
    "iw": "he",
    "in": "id",
}


def is_known(code: str) -> bool:
    """Whether ``code`` is a language code memla accepts in a dataset.

    Args:
        code: a language code as written in a dataset (lower case, no region).

    Returns:
        True for the 12 benchmark languages and every other ISO 639-1 code.
    """
    return isinstance(code, str) and code in ISO_639_1


def lang_name(code: str) -> str:
    """English name of a benchmark language, or the code itself for other languages.

    Args:
        code: a language code.

    Returns:
        The name from `LANG_NAMES`, else ``code`` unchanged.
    """
    return LANG_NAMES.get(code, code)


def normalize(code: str) -> str:
    """Map a loosely written language tag to the code memla stores.

    Lower-cases, drops a region or script subtag (``zh-CN`` -> ``zh``,
    ``pt_BR`` -> ``pt``) and maps the non-standard codes some datasets use
    (`ALIASES`: ``cz`` -> ``cs``, ``du`` -> ``nl``, ``jp`` -> ``ja``).  The result
    is not checked; use `is_known` for that.

    Args:
        code: a language tag.

    Returns:
        The normalised code.
    """
    primary = code.strip().lower().replace("_", "-").split("-", 1)[0]
    return ALIASES.get(primary, primary)


def sep(lang: str) -> str:
    """Separator between a prompt and its target (DESIGN.md join rule).

    Args:
        lang: language code of the prompt.

    Returns:
        ``""`` for languages written without spaces (zh, ja, th), ``" "`` otherwise.
    """
    return "" if normalize(lang) in NO_SPACE else " "


def join(prompt: str, target: str, lang: str) -> str:
    """The text a model scores for ``target`` after ``prompt``: ``prompt + sep(lang) + target``.

    Args:
        prompt: the prompt with the subject written in (no ``{}``).
        target: the answer to append.
        lang: language code of the prompt.

    Returns:
        The joined string; the target's tokens are its suffix after the prompt's tokens.
    """
    return f"{prompt}{sep(lang)}{target}"


def resolve_langs(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Turn a language selection into a tuple of codes, in the order given.

    Args:
        spec: ``"all"`` (the 12 benchmark languages), a comma-separated string
            (``"en,zh"``) or an iterable of codes.  Tags are normalised
            (``"ZH-cn"`` -> ``"zh"``); duplicates are dropped.

    Returns:
        The language codes.

    Raises:
        DataError: on an empty selection or an unknown code (the message lists the known ones).
    """
    if isinstance(spec, str):
        if spec.strip().lower() == "all":
            return LANGS
        items = [part for part in spec.split(",") if part.strip()]
    else:
        items = list(spec)
    codes: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise DataError(f"language codes must be strings, got {item!r}")
        code = normalize(item)
        if not is_known(code):
            raise DataError(
                f"unknown language code {item!r}; known: {', '.join(LANGS)} "
                "(or any other ISO 639-1 two-letter code), or 'all'"
            )
        if code not in codes:
            codes.append(code)
    if not codes:
        raise DataError(f"no language selected; known: {', '.join(LANGS)}, or 'all'")
    return tuple(codes)


def order_langs(codes: Iterable[str]) -> tuple[str, ...]:
    """Sort language codes: the 12 benchmark languages in `LANGS` order, then the rest alphabetically.

    Args:
        codes: language codes (duplicates allowed).

    Returns:
        The distinct codes, ordered.
    """
    unique = set(codes)
    head = [code for code in LANGS if code in unique]
    return tuple(head + sorted(unique.difference(LANGS)))
