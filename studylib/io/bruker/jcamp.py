"""JCAMP-DX parameter files of Bruker ParaVision (``acqp``, ``method``, ``visu_pars``, ``reco``).

ParaVision stores every parameter as one JCAMP-DX 4.24 labelled record (McDonald & Wilks,
Appl. Spectrosc. 42:151, 1988, https://doi.org/10.1366/0003702884428734; Bruker's ParaVision
"Parameter Files" manual)::

    ##$PVM_EchoTime=1.335                      scalar number
    ##$PVM_SpatDimEnum=<2D>                    string
    ##$Ssfp=FID                                enumeration word
    ##$ExcPulse1=(1.05, 3000, 15, Yes, ...)    struct (may continue on the next lines)
    ##$PVM_Matrix=( 2 )                        array: dimensions, then the values on the next lines
    64 64
    ##$VisuCoreUnits=( 2, 65 )                 array of strings (the last dimension is the length)
    <mm> <mm>
    ##$PVM_SliceGeo=( 1 )                      array of structs
    (((1 0 0 0 -1 0 0 0 -1, 0 0 -1.92), 38.4 38.4 2, <+R;read> ...), 1, 1, 256, 2, 0, No)

``$$`` lines are comments, ``##TITLE=`` etc. (no ``$``) are header records and ``##END=`` ends
the file.  ParaVision 360 writes runs of equal values as ``@N*(value)``; they are expanded.
Lines are wrapped at 80 characters between values, or inside a string (joined without a
separator); ``\\`` escapes ``<``, ``>`` and ``\\`` in strings and a ``\\`` before a line break is
a newline in the string.

:func:`parse_jcamp` returns a dict: numbers as ``int``/``float``, numeric arrays as
:class:`numpy.ndarray` (int64 or float64, shaped as declared), arrays of words as lists of
str, strings as ``str``, arrays of strings and of structs as lists, structs as tuples (an
element holding several space-separated values is a list).  :func:`format_jcamp` writes the
same objects back, so ``parse_jcamp(format_jcamp(p)) == p`` (tested with hypothesis).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import DataFileError
from ..sidecar import read_bytes

__all__ = ["parse_jcamp", "read_jcamp", "format_jcamp", "JcampParams"]

_INT_RE = re.compile(r"[+-]?\d+")
_FLOAT_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_DIMS_RE = re.compile(r"\(\s*(\d+(?:\s*,\s*\d+)*)\s*\)")
_SPACED_DIMS_RE = re.compile(r"\( \d+(?:, \d+)* \)")
_REPEAT_RE = re.compile(r"@(\d+)\*\((.*)\)", re.S)
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # always used with fullmatch


class JcampParams(dict):
    """The parameters of one file (name without ``$`` -> value), with ``header`` (TITLE, ...) and ``source``."""

    def __init__(self, *args, header: dict | None = None, source: str = "", **kw):
        super().__init__(*args, **kw)
        self.header = dict(header or {})
        self.source = source


def _number(tok: str):
    """``int``/``float`` for a numeric token, else ``None``."""
    if _INT_RE.fullmatch(tok):
        return int(tok)
    if _FLOAT_RE.fullmatch(tok):
        return float(tok)
    return None


def _scalar_token(tok: str):
    n = _number(tok)
    return tok if n is None else n


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            out.append(s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def _split_top_level(s: str, source: str, name: str, *, at_comma: bool) -> list[str]:
    """Split ``s`` at top-level whitespace (``at_comma=False``) or commas (``True``): ``<strings>`` (with
    ``\\`` escapes) and ``(structs)`` stay whole; unbalanced parentheses or an open string are errors."""
    parts, buf, depth, in_str, i = [], [], 0, False, 0
    while i < len(s):
        ch = s[i]
        if in_str:
            buf.append(ch)
            if ch == "\\" and i + 1 < len(s):
                buf.append(s[i + 1])
                i += 1
            elif ch == ">":
                in_str = False
        elif ch == "<":
            in_str = True
            buf.append(ch)
        elif ch in "()":
            depth += 1 if ch == "(" else -1
            if depth < 0:
                raise DataFileError(f"{source}: parameter {name}: unbalanced ')' in {s[:60]!r}")
            buf.append(ch)
        elif depth == 0 and (ch == "," if at_comma else ch.isspace()):
            if at_comma or buf:
                parts.append("".join(buf).strip() if at_comma else "".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if in_str or depth:
        raise DataFileError(f"{source}: parameter {name}: unterminated {'string' if in_str else '('} "
                            f"in {s[:60]!r}")
    if at_comma:
        parts.append("".join(buf).strip())
    elif buf:
        parts.append("".join(buf))
    return parts


def _tokens(s: str, source: str, name: str) -> list:
    """Split at top-level whitespace: ``<strings>`` and ``(structs)`` stay whole."""
    return _split_top_level(s, source, name, at_comma=False)


def _split_commas(s: str, source: str = "", name: str = "") -> list[str]:
    """Split a struct's inside at top-level commas."""
    return _split_top_level(s, source, name, at_comma=True)


def _element(s: str, source: str, name: str):
    """One comma-separated element of a struct."""
    toks = _expand_repeats(_tokens(s, source, name))
    vals = [_atom(t, source, name) for t in toks]
    if len(vals) == 1:
        return vals[0]
    return vals


def _atom(tok: str, source: str, name: str):
    if tok.startswith("<") and tok.endswith(">"):
        return _unescape(tok[1:-1])
    if tok.startswith("(") and tok.endswith(")"):
        return _struct(tok, source, name)
    return _scalar_token(tok)


def _struct(s: str, source: str, name: str) -> tuple:
    inner = s[1:-1]
    if not inner.strip():
        return ()
    return tuple(_element(p, source, name) for p in _split_commas(inner, source, name))


def _expand_repeats(toks: list[str]) -> list[str]:
    out = []
    for t in toks:
        m = _REPEAT_RE.fullmatch(t)
        if m:
            out.extend([m.group(2).strip()] * int(m.group(1)))
        else:
            out.append(t)
    return out


def _array(dims: tuple[int, ...], content: str, source: str, name: str):
    content = content.strip()
    if not content:
        return np.zeros(dims if int(np.prod(dims)) == 0 else (0,))
    toks = _expand_repeats(_tokens(content, source, name))
    if toks[0].startswith("<"):
        strs = [_atom(t, source, name) for t in toks]
        if not all(isinstance(v, str) for v in strs):
            raise DataFileError(f"{source}: parameter {name}: array mixes strings and other values")
        return strs[0] if (len(dims) == 1 and len(strs) == 1) else strs
    if toks[0].startswith("("):
        return [_atom(t, source, name) for t in toks]
    nums = [_number(t) for t in toks]
    if all(n is not None for n in nums):
        is_int = all(isinstance(n, int) for n in nums)
        arr = np.asarray(nums, dtype=np.int64 if is_int else np.float64)
        if len(dims) > 1 and int(np.prod(dims)) == arr.size:
            arr = arr.reshape(dims)
        return arr
    return [_atom(t, source, name) for t in toks]


def _value(name: str, first: str, rest: list[str], source: str):
    first = first.strip()
    m = _DIMS_RE.fullmatch(first)
    if m and (any(r.strip() for r in rest) or _SPACED_DIMS_RE.fullmatch(first)):
        dims = tuple(int(x) for x in m.group(1).split(","))
        return _array(dims, _join(rest), source, name)
    text = _join([first] + rest).strip()
    if text.startswith("<") and text.endswith(">") and len(_tokens(text, source, name)) == 1:
        return _unescape(text[1:-1])
    if text.startswith("(") and text.endswith(")") and len(_tokens(text, source, name)) == 1:
        return _struct(text, source, name)
    n = _number(text)
    return text if n is None else n


def _string_state(text: str, in_str: bool) -> tuple[bool, bool]:
    """``(open, escaped)``: is a ``<...`` string still open after ``text`` (given the state before it),
    and does ``text`` end with an unpaired ``\\`` inside it (an escaped line break)?"""
    i = 0
    while i < len(text):
        ch = text[i]
        if in_str and ch == "\\":
            if i + 1 == len(text):
                return True, True
            i += 2
            continue
        if ch == "<" and not in_str:
            in_str = True
        elif ch == ">" and in_str:
            in_str = False
        i += 1
    return in_str, False


def _join(lines: list[str]) -> str:
    """Join a record's lines: a break inside a string is no character (a newline after ``\\``), else a space."""
    parts: list[str] = []
    in_str = escaped = False
    for ln in lines:
        if parts:
            parts.append(("\n" if escaped else "") if in_str else " ")
        parts.append(ln)
        in_str, escaped = _string_state(ln, in_str)
    return "".join(parts)


def parse_jcamp(text: str, *, source: str = "parameter file") -> JcampParams:
    """Parse the text of a ParaVision JCAMP-DX parameter file.

    Parameters
    ----------
    text : str
        The file's text.
    source : str
        File name for error messages.

    Returns
    -------
    JcampParams
        ``{name: value}`` for every ``##$name=`` record (see the module docstring for the
        types); ``.header`` holds the ``##TITLE=``-style records.

    Raises
    ------
    DataFileError
        No ``##`` record at all, a record without ``=``, a duplicated parameter, or an
        unbalanced string/struct; the message names ``source`` and the parameter.
    """
    records: list[tuple[str, str, list[str]]] = []
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        if line.startswith("$$"):
            continue
        if line.startswith("##"):
            if "=" not in line:
                raise DataFileError(f"{source}: malformed record {line[:60]!r} (no '=')")
            key, _, val = line[2:].partition("=")
            if key.strip() == "END":
                break
            records.append((key.strip(), val, []))
        elif records:
            records[-1][2].append(line)
        elif line.strip():
            raise DataFileError(f"{source}: text before the first '##' record: {line[:60]!r}")
    if not records:
        raise DataFileError(f"{source}: not a JCAMP-DX parameter file (no '##' records)")
    params = JcampParams(source=source)
    for key, first, rest in records:
        if key.startswith("$"):
            name = key[1:]
            if name in params:
                raise DataFileError(f"{source}: parameter {name} appears twice")
            params[name] = _value(name, first, rest, source)
        else:
            params.header[key] = _join([first] + rest).strip()
    return params


def read_jcamp(path) -> JcampParams:
    """Read and parse one parameter file (UTF-8, else Latin-1); :class:`DataFileError` naming it if unreadable."""
    path = Path(path)
    raw = read_bytes(path, "ParaVision parameter file")
    try:
        text = raw.decode("utf-8")  # ParaVision 360 writes UTF-8 (σ, χ² in labels)
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # older versions: 8-bit text, every byte a character
    return parse_jcamp(text, source=str(path))


# --------------------------------------------------------------------------- writing

def _fmt_num(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        raise TypeError("booleans have no JCAMP form; use Yes/No words")
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    f = float(v)
    if not np.isfinite(f):
        raise ValueError(f"non-finite number {f} has no JCAMP form")
    return repr(f)


def _fmt_str(s: str) -> str:
    if any(c in s for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
        raise ValueError(f"string {s[:30]!r}: only \\n may break lines in a JCAMP string")
    out = []
    for i, ch in enumerate(s):
        if ch in "\\<>":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\\n")  # backslash + line break
        elif ch in "$#" and i and s[i - 1] == "\n":
            out.append("\\" + ch)  # a continued line must not look like a comment or a record
        else:
            out.append(ch)
    return "<" + "".join(out) + ">"


def _fmt_atom(v) -> str:
    if isinstance(v, str):
        if _NAME_RE.fullmatch(v) and _number(v) is None:
            return v
        return _fmt_str(v)
    if isinstance(v, tuple):
        return "(" + ", ".join(_fmt_elem(e) for e in v) + ")"
    return _fmt_num(v)


def _fmt_elem(v) -> str:
    if isinstance(v, list):
        if len(v) < 2:
            raise ValueError("a struct element list needs at least two values")
        return " ".join(_fmt_atom(x) for x in v)
    return _fmt_atom(v)


def _wrap(tokens: list[str], width: int = 78) -> list[str]:
    lines, cur = [], ""
    for t in tokens:
        if cur and len(cur) + 1 + len(t) > width:
            lines.append(cur)
            cur = t
        else:
            cur = f"{cur} {t}" if cur else t
    if cur:
        lines.append(cur)
    return lines


def _fmt_value(name: str, v) -> list[str]:
    if isinstance(v, np.ndarray):
        if v.size == 0:
            raise ValueError(f"{name}: empty arrays are not written")
        dims = ", ".join(str(d) for d in v.shape)
        return [f"##${name}=( {dims} )"] + _wrap([_fmt_num(x) for x in v.ravel().tolist()])
    if isinstance(v, list):
        if not v:
            raise ValueError(f"{name}: empty lists are not written")
        if all(isinstance(x, str) for x in v) and not all(_NAME_RE.fullmatch(x) and _number(x) is None for x in v):
            return [f"##${name}=( {len(v)}, 65 )"] + _wrap([_fmt_str(x) for x in v])
        if all(isinstance(x, tuple) for x in v):
            return [f"##${name}=( {len(v)} )"] + [_fmt_atom(x) for x in v]
        if all(isinstance(x, str) for x in v):
            return [f"##${name}=( {len(v)} )"] + _wrap(v)
        raise ValueError(f"{name}: a list must hold only strings/words or only structs")
    if isinstance(v, str) and not (_NAME_RE.fullmatch(v) and _number(v) is None):
        return [f"##${name}=( {max(65, len(v) + 1)} )", _fmt_str(v)]
    return [f"##${name}={_fmt_atom(v)}"]


def format_jcamp(params: dict, *, title: str = "Parameter List, studylib") -> str:
    """Write parameters as ParaVision-style JCAMP-DX text (inverse of :func:`parse_jcamp`).

    Numbers use Python's shortest round-trip form; arrays are wrapped at 78 characters
    between values.  Used by the tests (round trips, altered copies of real scans).
    """
    lines = [f"##TITLE={title}", "##JCAMPDX=4.24", "##DATATYPE=Parameter Values",
             "##ORIGIN=studylib", "##OWNER=studylib"]
    for name, v in params.items():
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"parameter name {name!r} is not a JCAMP name")
        lines += _fmt_value(name, v)
    lines.append("##END=")
    return "\n".join(lines) + "\n"
