"""The OCR-garbage rule (sumrl.data.quality): real examples, the built-in set it was calibrated on,
and the warning `sumrl data validate` prints for user files."""

from __future__ import annotations

import collections
import gzip
import json
import re
import statistics
from pathlib import Path

import pytest

from sumrl.cli import main
from sumrl.data import load_builtin
from sumrl.data.builtin import builtin_data_dir
from sumrl.data.quality import OCR_GARBAGE_MAX_SHARE, is_ocr_garbage, mangled_counts, mangled_share

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

# The first 260 words of ScisummNet C00-2137 (CC BY 4.0), the paper whose debris the demo's SFT
# model copied ("111017(` - IIICI;I]CS)"); dropped from the built-in set by this rule.
GARBAGE = r"""
Bedford, MA 01730 USA asy~mit rc .o rg Abstract Statisti(:a,1 signiticance testing of (litlerelmeS
in v;~hl(`-s of metri(:s like recall, i)rccision and bat- au(:(~(l F-s(:()rc is a ne(:(`-ssary t)art
of eml)irical ual;ural language 1)ro(:essing. Unfortunately, we lind in a set of (;Xl)erinlc]d;s
(;hal; many (:ore- inertly used tesl;s ofte, n underest imate t.he s ignif icancc an(l so are less
likely to detect differences that exist 1)el;ween ditlercnt techniques. This undelesi;imation comes
from an in(let)endcn((~ a,-;SUlnl)tion that is often violated. ~fe l)oint out some useful l;e,%s
(;hal; (lo nol; make this assuml)- lion, including computationally--intcnsive ran- d()mizat,ion
1;cs|;s. 1 I n t rodu( - t ion In Clnl)irical natural ]al~gUag(~ l)rocessing, on(, is ottcal
|:(~st;ing whether some new technique 1)ro(lu(es im])rove(l lesull;s (as mcasur(xl ])y one ()1
111017(` - IIICI;I]CS) Oit son Ic i;esl; (lai;~L set; V]l(`-ll (;Olll])aIe(l l i ( )sol l le (; l
lrrel lt ( l )ascl i lm) l;c(:]lnique. 5/]lell ,]le lCsllll;s are better with the new tcch- ni(lUe ,
a question arises as t() wh(,l;h(;r these l:(`-- sult; (litleren(:es are due t() the new technique
a(:t;ually 1)eing l)cl;t(x or just; due 1;o (:han(:e. Un- tortmmtely, one usually Callll()t)
directly answer the qnesl;ion "what is the 1)robatfility that 1;11(; now l;(x:hni(luC, is t)el;lx~r
givell l;he results on the t(,sl, dal;a sol;": I)(new technique is better [ test set results) ]~ul;
with statistics, one cml answer the follow- ing proxy question: if the new technique was a(> tually
no ditterent han the old t(,(hnique ((;he * This paper reports on work l)erfonncd at the MITR1,;
Corporation
"""

# The first 230 words of ScisummNet C94-1079: OCR errors ("1;o", "o17", "ncil)les"), but readable;
# kept (the highest-scoring paper under the threshold).
READABLE = r"""
Introduction Principle-based grammars, such as Govern- ment-Binding (GB) theory (Chomsky, 1981;
Haegeman, 1991), offer many advantages over rule-based and unification-based grammars, such as the
universality ofprinciples and mod- ularity of components in the grammar. Prin- ciples are
constraints over X-bar structures. Most previous principle-based parsers, e.g., (Dorr, 1991; Font,
1991; Johnson, 1991), es- sentially generate all possible X-bar structures of a sentence and then
use the principles to fil- ter out the illicit ones. The drawback of this approach is the
inefficiency due 1;o the large number of candidate structures to be. filtered out. The problem
persists even when w~rions techniques such as optimal ordering of princi- ples (Fong, 1991), and
corontining (Dorr, 1991; Johnson, 1991) are used. This problem may also account for the fact that
these parsers are experimental nd have limited coverage. This paper describes an efficient, broad-
coverage, principle-based parser, called PRIN- CIPAR. The main innovation in PRINCIPAR is that it
applies principles to descriptions o17 X- bar structures rather than the structures them- selves.
X-bar structures of a sentence are only built when their descriptions have satisfied all the pri
ncil)les. O dynamic data \ [~ static dala l)rocegsing module data flow Figure 1: '.Pile architecture
of PRINCIPAR Figure I shows the architecture of PRIN- CIPAR. Sentence analysis is divided into three
steps. The lexical analyser first converts the in- put sentence into a set
"""


def _loop_counts(text: str) -> tuple[int, int]:
    """The rule as a plain loop over tokens (what the two regex scans of mangled_counts replace)."""
    word = re.compile(r"[^\W\d_]+(?:[-'\u2019][^\W\d_]+)*")
    toks = [t for t in text.split() if any(c.isalpha() for c in t)]
    bad = sum(1 for t in toks if not word.fullmatch(t.lstrip("([{\"'`\u201c\u2018").rstrip(")]}\"'`\u201d\u2019.,;:!?")))
    return bad, len(toks)


def test_mangled_tokens_by_hand():
    # plain words, with the punctuation and brackets around them, count as words; numbers and lone
    # symbols are not letter-bearing tokens at all
    assert mangled_counts('The (state-of-the-art) "model," don\'t: 42 3.5 % --') == (0, 4)
    # letters interleaved with OCR debris are mangled: 4 of these 6 tokens; a misread made only of
    # letters ("(litlerelmeS" = "differences") looks like a word to this rule -- the share over a
    # whole document still catches such text, because the debris comes with it
    assert mangled_counts("Statisti(:a,1 (litlerelmeS v;~hl(`-s metri(:s 1)ro(:essing. recall,") == (4, 6)
    assert mangled_counts("(:omplex") == (1, 1)  # a ':' before the letters is debris, not punctuation
    assert mangled_share("") == 0.0 and mangled_share("12 34") == 0.0
    assert mangled_counts("Übersetzung naïve 機械翻訳 x2 e.g. a_b") == (3, 6)  # letters of any script
    for text in (GARBAGE, READABLE, "a\tb\n(c) d;e 'f' \u201cg\u201d h-i- -j \u2019k"):
        assert mangled_counts(text) == _loop_counts(text)


def test_real_examples():
    bad, n = mangled_counts(GARBAGE)
    assert n >= 200 and bad / n > 0.3 and is_ocr_garbage(GARBAGE)
    assert mangled_share(READABLE) < OCR_GARBAGE_MAX_SHARE and not is_ocr_garbage(READABLE)
    # a short text is never judged: too few tokens for a share to mean anything
    short = " ".join(GARBAGE.split()[:100])
    assert mangled_share(short) > OCR_GARBAGE_MAX_SHARE and not is_ocr_garbage(short)
    # the threshold is a share, not a count: the same garbage diluted 4:1 by clean text passes
    assert not is_ocr_garbage(GARBAGE + READABLE * 4)


def test_builtin_sets_hold_no_ocr_garbage():
    for name in ("scisummnet:human", "scitldr"):  # (qmsum's meetings: at most 1.4% mangled)
        assert not [e.id for e in load_builtin(name, "all") if is_ocr_garbage(e.document)], name
    shares = [mangled_share(e.document) for e in load_builtin("scisummnet:human", "all")]
    assert statistics.median(shares) < 0.02  # the typical paper: under 2% (docs/data.md)
    manifest = json.loads(builtin_data_dir().joinpath("MANIFEST.json").read_text())
    dropped = {d["id"]: d for d in manifest["files"]["scisummnet.jsonl.gz"]["dropped"] if "OCR garbage" in d["rule"]}
    assert sorted(dropped) == ["C00-1007", "C00-1072", "C00-2137", "C94-1042", "C94-2174", "C94-2195", "C96-1058",
                               "C96-1079"]
    assert [i for i, d in dropped.items() if d["split_before"] != "train"] == ["C00-2137"]
    assert not dropped.keys() & {e.id for e in load_builtin("scisummnet:human", "all")}


@pytest.mark.skipif(not (SHARED / "scisummnet").is_dir(), reason="needs ../shared/data")
def test_rule_against_a_dictionary_on_the_source_papers():
    """Calibration check on all 978 source papers: the papers the rule drops are exactly the eight
    with the fewest dictionary words (words of the SciTLDR abstracts), an independent measure."""
    with gzip.open(SHARED / "scisummnet" / "scisummnet_2019.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    manifest = json.loads(builtin_data_dir().joinpath("MANIFEST.json").read_text())
    earlier = {d["id"] for d in manifest["files"]["scisummnet.jsonl.gz"]["dropped"] if "OCR garbage" not in d["rule"]}
    rows = [r for r in rows if r["id"] not in earlier]  # near-empty and letter-less papers, dropped first
    counts = collections.Counter(w for e in load_builtin("scitldr", "all") for w in re.findall(r"[a-z]+",
                                                                                               e.document.lower()))

    def dictionary_share(text: str) -> float:
        toks = [t.strip("([{\"'`)]}.,;:!?").lower() for t in text.split() if any(c.isalpha() for c in t)]
        return sum(t in counts for t in toks) / len(toks)

    flagged = {r["id"] for r in rows if is_ocr_garbage(r["document"])}
    fewest = {r["id"] for r in sorted(rows, key=lambda r: dictionary_share(r["document"]))[:len(flagged)]}
    assert len(flagged) == 8 and flagged == fewest


def test_validate_warns_with_file_line_and_field(tmp_path, capsys):
    rows = [{"id": f"p{i}", "document": READABLE, "summary": "s."} for i in range(4)]
    rows.insert(2, {"id": "ocr", "document": GARBAGE, "summary": "s."})
    path = tmp_path / "papers.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "validate", "--data", str(path)]) == 0
    warnings = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1
    assert f"{path}, line 3, field 'document'" in warnings[0] and "OCR garbage" in warnings[0]
    # a clean file: no warning
    path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["id"] != "ocr"))
    assert main(["data", "validate", "--data", str(path)]) == 0
    assert "warning" not in capsys.readouterr().out
