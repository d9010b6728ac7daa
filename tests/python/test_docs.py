"""docs/ir.md's op table is what the registry says (scripts/gen_docs.sh)."""
import os

from kiln_util import ROOT, run_kiln


def test_ir_reference_lists_every_op():
    table = run_kiln("ops", "--markdown").stdout
    with open(os.path.join(ROOT, "docs", "ir.md")) as f:
        doc = f.read()
    assert table.strip() in doc, "docs/ir.md is stale: run scripts/gen_docs.sh"
    assert table.count("\n| ") > 120
