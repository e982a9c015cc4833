"""Hardened reading of BPMN XML that may come from anyone (uploads, other modelers).

lxml's default parser expands internal entities; SpiffWorkflow uses it as is. We parse
ourselves with entity resolution, DTD loading and network access off, refuse any DOCTYPE
(no legitimate BPMN needs one) and cap the size, then hand the tree to SpiffWorkflow.
"""

from __future__ import annotations

import re

from lxml import etree

from engine.errors import Problem

BPMN_NS = "http://www.omg.org/spec/BPMN/20100524/MODEL"
SPIFF_NS = "http://spiffworkflow.org/bpmn/schema/1.0/core"
NSMAP = {"bpmn": BPMN_NS, "spiffworkflow": SPIFF_NS}

_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                           huge_tree=False, remove_blank_text=False)


def parse_bpmn_bytes(content: bytes, filename: str, max_bytes: int) -> tuple[etree._ElementTree | None,
                                                                               list[Problem]]:
    """Parse untrusted BPMN bytes. Returns ``(tree, [])`` or ``(None, problems)``."""
    if len(content) > max_bytes:
        return None, [Problem(f"file is {len(content):,} bytes; the limit is {max_bytes:,}", file=filename,
                              hint="split the process or raise CAREFLOW_MAX_BPMN_BYTES")]
    head = content[:65536]
    m = _DOCTYPE.search(head) or (_DOCTYPE.search(content) if len(content) > 65536 else None)
    if m:
        line = content[: m.start()].count(b"\n") + 1
        return None, [Problem("DOCTYPE and ENTITY declarations are not allowed in BPMN files", file=filename,
                              line=line, hint="remove the <!DOCTYPE ...> block; BPMN never needs one")]
    try:
        tree = etree.ElementTree(etree.fromstring(content, _parser()))
    except etree.XMLSyntaxError as err:
        line = err.lineno if err.lineno else None
        return None, [Problem(f"malformed XML: {err.msg}", file=filename, line=line,
                              hint="fix the XML syntax (is the file complete and well-formed?)")]
    if tree.docinfo.doctype:
        return None, [Problem("DOCTYPE declarations are not allowed in BPMN files", file=filename, line=1)]
    root = tree.getroot()
    if root.tag != f"{{{BPMN_NS}}}definitions":
        return None, [Problem(f"root element is <{etree.QName(root).localname}>, not BPMN 2.0 <definitions>",
                              file=filename, line=root.sourceline,
                              hint="is this a BPMN 2.0 XML file (namespace " + BPMN_NS + ")?")]
    return tree, []


def element_lines(tree: etree._ElementTree) -> dict[str, int]:
    """Map each element id in the document to its source line."""
    return {el.get("id"): el.sourceline for el in tree.iter() if isinstance(el.tag, str) and el.get("id")}


def local(tag: str) -> str:
    """Local name of a namespaced tag."""
    return etree.QName(tag).localname
