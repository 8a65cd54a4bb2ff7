"""test_docs — what a reader copies from README.md and docs/*.md works.

A user pastes the configs the docs show and follows their links. Every JSON
block that is a whole config, or one experiment of one, must pass
`modelmux --check` (an experiment is checked inside a config with the
upstreams the docs use); the config the README prints must be
config/modelmux.json as shipped; the README opens with its two commands;
and every relative link, anchor included, must lead somewhere.
"""
import glob
import json
import os
import re
import subprocess
import tempfile
import unittest

import mmtest

DOCS = ["README.md"] + sorted(os.path.join("docs", os.path.basename(p))
                              for p in glob.glob(os.path.join(mmtest.SOURCE_DIR, "docs", "*.md"))
                              if not p.endswith("bench-history.md"))
FENCE = re.compile(r"^\s*```(\w*)\n(.*?)^\s*```\s*$", re.M | re.S)


def read(path):
    with open(os.path.join(mmtest.SOURCE_DIR, path), encoding="utf-8") as f:
        return f.read()


def json_blocks():
    """(doc, line, text, parsed object) for every ```json block holding one
    object."""
    for doc in DOCS:
        text = read(doc)
        for m in FENCE.finditer(text):
            if m.group(1) != "json":
                continue
            try:
                obj = json.loads(m.group(2))
            except ValueError:
                continue  # several objects per block, or "…" placeholders: examples of answers
            yield doc, text.count("\n", 0, m.start()) + 1, m.group(2), obj


def anchors(text):
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to -."""
    out, seen = set(), {}
    for line in FENCE.sub("", text).splitlines():
        m = re.match(r"#+\s+(.*)", line)
        if not m:
            continue
        a = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(a, -1) + 1
        seen[a] = n
        out.add(a if n == 0 else "%s-%d" % (a, n))
    return out


class DocsConfigs(unittest.TestCase):
    def check(self, text):
        """--check on the config text: a block as written (so a duplicate
        key in it would count), or an experiment inside the upstreams."""
        with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
            f.write(text)
            f.flush()
            return subprocess.run([mmtest.MM_BIN, "--check", "-c", f.name], capture_output=True,
                                  text=True, timeout=20)

    def test_every_config_and_experiment_block_passes_check(self):
        ups = {n: {"url": "http://127.0.0.1:%d" % (7001 + i)}
               for i, n in enumerate(("champion", "challenger", "champion-b"))}
        configs = experiments = 0
        for doc, line, text, obj in json_blocks():
            if not isinstance(obj, dict):
                continue
            if "upstreams" in obj:
                configs += 1
            elif "match" in obj:
                experiments += 1
                text = json.dumps({"upstreams": ups, "experiments": [obj]})
            else:
                continue
            with self.subTest(block="%s:%d" % (doc, line)):
                r = self.check(text)
                self.assertEqual(r.returncode, 0, r.stderr)
        self.assertGreaterEqual(configs, 2)
        self.assertGreaterEqual(experiments, 7)

    def test_readme_prints_the_shipped_default_config(self):
        shipped = json.loads(read("config/modelmux.json"))
        shown = [obj for doc, _, _, obj in json_blocks()
                 if doc == "README.md" and "upstreams" in obj]
        self.assertEqual(shown, [shipped])


class DocsText(unittest.TestCase):
    def test_readme_opens_with_demo_and_test(self):
        m = FENCE.search(read("README.md"))
        self.assertEqual(m.group(2).split(), ["scripts/demo", "scripts/test"])

    def test_every_relative_link_resolves(self):
        for doc in DOCS:
            here = os.path.dirname(doc)
            for link in re.findall(r"\]\(([^)\s]+)\)", read(doc)):
                if re.match(r"[a-z]+:", link):
                    continue
                path, _, anchor = link.partition("#")
                target = os.path.normpath(os.path.join(here, path)) if path else doc
                with self.subTest(doc=os.path.basename(doc), link=link):
                    self.assertTrue(os.path.exists(os.path.join(mmtest.SOURCE_DIR, target)))
                    if anchor:
                        self.assertIn(anchor, anchors(read(target)))


if __name__ == "__main__":
    mmtest.main()
