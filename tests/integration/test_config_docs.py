"""test_config_docs — the configuration reference and the checker agree.

The README's Configuration section (kept as docs/config-reference.md) is
what users read; `modelmux --check` is what runs. Read from the documents
themselves, so that a change to either side without the other fails here:

  1. (every config and experiment shown in the docs passes --check:
     test_docs.py)
  2. every integer or number key with a documented range [lo, hi] in the
     README's tables accepts its default, lo and hi, and refuses just
     outside them with FILE:LINE:COL naming the key;
  3. docs/config-reference.md is the README's section, word for word.
"""
import json
import os
import re
import subprocess
import tempfile
import unittest

import mmtest

README = os.path.join(mmtest.SOURCE_DIR, "README.md")
REFERENCE = os.path.join(mmtest.SOURCE_DIR, "docs", "config-reference.md")

UPSTREAMS = {n: {"url": "http://127.0.0.1:%d" % (7001 + i)}
             for i, n in enumerate(("champion", "challenger", "champion-b"))}
BASE = {"upstreams": UPSTREAMS, "experiments": []}

# Where the keys of each table live: the heading of the table's section (the
# `eject` table sits inside `upstreams`, after its own introduction).
TABLES = {"admin": ("admin",), "store": ("store",), "log": ("log",), "limits": ("limits",),
          "upstreams": ("upstreams", "champion"), "eject": ("upstreams", "champion", "eject"),
          "experiments": ("experiments", 0)}
EXPERIMENT = {"name": "x", "match": {"path_prefix": "/"}, "policy": "ab",
              "arms": {"champion": 1}}

ROW = re.compile(r"^\| `(\w+)` \| (integer|number) \| (.*?) \| (.*?) \|$", re.M)


def check(text):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        f.write(text)
    try:
        r = subprocess.run([mmtest.MM_BIN, "--check", "-c", f.name], capture_output=True,
                           text=True, timeout=20)
    finally:
        os.unlink(f.name)
    return r.returncode, (r.stderr or r.stdout).strip().replace(f.name, "FILE")


def config_section(path):
    """{table: text} of the configuration tables of README.md or the reference."""
    with open(path) as f:
        text = f.read()
    if path == README:
        text = text[text.index("\n## Configuration\n"):text.index("\n### Example\n")]
        text = text.replace("\n### ", "\n## ")
    parts = re.split(r"^## `?(\w+)`?.*$", text, flags=re.M)
    sections = dict(zip(parts[1::2], parts[2::2]))
    if "upstreams" in sections:
        ups, _, eject = sections["upstreams"].partition("`eject` (Envoy-style")
        sections["upstreams"], sections["eject"] = ups, eject
    return {k: v for k, v in sections.items() if k in TABLES}


def with_value(table, key, value):
    cfg = json.loads(json.dumps(BASE))
    if table == "store":
        cfg["store"] = {"type": "redis"}
    if table == "experiments":
        cfg["experiments"] = [dict(EXPERIMENT)]
    node = cfg
    for seg in TABLES[table]:
        if isinstance(seg, str):
            node = node.setdefault(seg, {})
        else:
            node = node[seg]
    node[key] = value
    # One key per line, so the value's position is easy to find.
    text = json.dumps(cfg, indent=1)
    return text


def position_of(text, key):
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith('"%s": ' % key):
            return i, line.index('": ') + 4
    raise AssertionError(key)


class DocumentedRanges(unittest.TestCase):
    def rows(self):
        rows = []
        for table, text in config_section(README).items():
            for key, kind, default, accepted in ROW.findall(text):
                m = re.search(r"\[(-?[\d.]+), (-?[\d.]+)\]", accepted)
                if m:
                    rows.append((table, key, kind, default, float(m.group(1)),
                                 float(m.group(2)), accepted))
        return rows

    def test_defaults_and_bounds_are_accepted(self):
        rows = self.rows()
        self.assertGreaterEqual(len(rows), 17)
        for table, key, kind, default, lo, hi, accepted in rows:
            values = [lo, hi]
            d = re.match(r"`(-?[\d.]+)`", default)
            if d:
                values.append(float(d.group(1)))
            if accepted.startswith("0, or"):
                values.append(0)
            for v in values:
                v = int(v) if kind == "integer" else v
                with self.subTest(key="%s.%s" % (table, key), value=v):
                    rc, out = check(with_value(table, key, v))
                    self.assertEqual(rc, 0, out)

    def test_just_outside_the_bounds_is_refused_at_the_value(self):
        for table, key, kind, default, lo, hi, accepted in self.rows():
            step = 1 if kind == "integer" else 1e-9
            for v in (lo - step, hi + step):
                v = int(v) if kind == "integer" else v
                with self.subTest(key="%s.%s" % (table, key), value=v):
                    text = with_value(table, key, v)
                    rc, out = check(text)
                    self.assertEqual(rc, 1, out)
                    line, col = position_of(text, key)
                    self.assertTrue(out.startswith("FILE:%d:%d: " % (line, col)), out)
                    self.assertIn(key + " must be", out)


class ReferenceMatchesReadme(unittest.TestCase):
    def test_the_reference_documents_the_same_keys(self):
        def keys(path):
            return {t: sorted(re.findall(r"^\| `(\w+)` \|", text, re.M))
                    for t, text in config_section(path).items()}
        self.assertEqual(keys(REFERENCE), keys(README))

    def test_the_reference_is_the_readme_section(self):
        """The README says the section "is also kept as" the reference: word
        for word, one heading level up."""
        with open(README) as f:
            readme = f.read()
        with open(REFERENCE) as f:
            ref = f.read()
        section = readme[readme.index("### How values are checked"):readme.index("### Policies")]
        section = re.sub(r"^###", "##", section, flags=re.M)
        self.assertEqual(ref[ref.index("## How values are checked"):].strip(), section.strip())


if __name__ == "__main__":
    mmtest.main()
