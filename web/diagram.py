"""The BPMN XML the instance page's viewer draws.

A process deployed without diagram information (no ``bpmndi:BPMNDiagram``, e.g. written
by hand or generated) still gets a picture: a simple layered left-to-right layout, one
horizontal band per lane, flows drawn as orthogonal lines. Files with a diagram are served
unchanged.
"""

from __future__ import annotations

from lxml import etree

from engine.bpmn_xml import _parser

BPMN = "http://www.omg.org/spec/BPMN/20100524/MODEL"
BPMNDI = "http://www.omg.org/spec/BPMN/20100524/DI"
DC = "http://www.omg.org/spec/DD/20100524/DC"
DI = "http://www.omg.org/spec/DD/20100524/DI"

SIZES = {"task": (100, 80), "event": (36, 36), "gateway": (50, 50), "subprocess": (120, 90)}
COL_W, ROW_H, LANE_PAD, LABEL_W = 160, 120, 30, 30


def _kind(local: str) -> str | None:
    if local.endswith("Event"):
        return "event"
    if local.endswith("Gateway"):
        return "gateway"
    if local in ("subProcess", "transaction", "adHocSubProcess"):
        return "subprocess"
    if local.endswith("Task") or local in ("task", "callActivity"):
        return "task"
    return None


def _local(el) -> str:
    return etree.QName(el).localname


def process_file(bpmn_files: dict[str, str], process_id: str) -> str | None:
    """The XML of the file that defines ``process_id``."""
    for text in bpmn_files.values():
        root = etree.fromstring(text.encode("utf-8"), _parser())
        if root.find(f"{{{BPMN}}}process[@id='{process_id}']") is not None:
            return text
    return next(iter(bpmn_files.values()), None)


def with_layout(xml: str, process_id: str) -> str:
    """``xml`` unchanged when it has a diagram, else with a generated one for ``process_id``."""
    root = etree.fromstring(xml.encode("utf-8"), _parser())
    if root.find(f"{{{BPMNDI}}}BPMNDiagram") is not None:
        return xml
    process = root.find(f"{{{BPMN}}}process[@id='{process_id}']")
    if process is None:
        process = root.find(f"{{{BPMN}}}process")
    if process is None:
        return xml
    _layout(root, process)
    return etree.tostring(root, encoding="unicode")


def _layout(root, process) -> None:
    nodes: dict[str, tuple[str, object]] = {}
    boundary: dict[str, str] = {}
    for el in process:
        kind = _kind(_local(el)) if isinstance(el.tag, str) else None
        if kind and el.get("id"):
            nodes[el.get("id")] = (kind, el)
            if _local(el) == "boundaryEvent":
                boundary[el.get("id")] = el.get("attachedToRef")
    flows = [(f.get("id"), f.get("sourceRef"), f.get("targetRef"))
             for f in process.findall(f"{{{BPMN}}}sequenceFlow")]
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for _fid, s, t in flows:
        if s in succ and t in nodes:
            succ[s].append(t)
    # layer = longest path from a start, ignoring back edges (found by DFS)
    layer = {n: 0 for n in nodes}
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str) -> None:
        state[n] = 1
        for m in succ.get(n, []):
            if state.get(m) is None:
                visit(m)
        state[n] = 2
        order.append(n)

    roots = [n for n in nodes if not any(n in v for v in succ.values())] + list(nodes)
    for n in roots:
        if state.get(n) is None:
            visit(n)
    back = set()
    pos = {n: i for i, n in enumerate(reversed(order))}
    for s, targets in succ.items():
        for t in targets:
            if pos[t] <= pos[s]:
                back.add((s, t))
    for n in reversed(order):
        for m in succ.get(n, []):
            if (n, m) not in back:
                layer[m] = max(layer[m], layer[n] + 1)
    for b, host in boundary.items():  # a boundary event sits on its host; its successors follow the host
        if host in layer:
            layer[b] = layer[host]
            for m in succ.get(b, []):
                layer[m] = max(layer[m], layer[host] + 1)
    # lanes
    lanes = []
    lane_of: dict[str, str] = {}
    for lane in process.iter(f"{{{BPMN}}}lane"):
        lanes.append(lane)
        for ref in lane.findall(f"{{{BPMN}}}flowNodeRef"):
            lane_of[(ref.text or "").strip()] = lane.get("id")
    lane_ids = [lane.get("id") for lane in lanes] or [None]
    slots: dict[tuple[str | None, int], int] = {}
    row_in_lane: dict[str, int] = {}
    for n in sorted(nodes, key=lambda n: (layer[n], pos.get(n, 0))):
        if n in boundary:
            continue
        key = (lane_of.get(n), layer[n])
        row_in_lane[n] = slots.get(key, 0)
        slots[key] = row_in_lane[n] + 1
    lane_rows = {lid: max([c for (l_id, _layer), c in slots.items() if l_id == lid] or [1]) for lid in lane_ids}
    lane_top, y = {}, 0
    for lid in lane_ids:
        lane_top[lid] = y
        y += lane_rows[lid] * ROW_H + LANE_PAD
    total_h = y
    width = (max(layer.values(), default=0) + 1) * COL_W + LABEL_W + 40
    bounds: dict[str, tuple[float, float, float, float]] = {}
    for n, (kind, _el) in nodes.items():
        if n in boundary:
            continue
        w, h = SIZES[kind]
        cx = LABEL_W + 40 + layer[n] * COL_W + 50
        cy = lane_top[lane_of.get(n) if lane_of.get(n) in lane_top else lane_ids[0]] + LANE_PAD / 2 \
            + row_in_lane[n] * ROW_H + ROW_H / 2
        bounds[n] = (cx - w / 2, cy - h / 2, w, h)
    for b, host in boundary.items():
        hx, hy, hw, hh = bounds.get(host, (0, 0, 100, 80))
        w, h = SIZES["event"]
        bounds[b] = (hx + hw - w - 8, hy + hh - h / 2, w, h)
    _write_di(root, process, nodes, flows, bounds, lanes, lane_top, lane_rows, width, total_h)


def _write_di(root, process, nodes, flows, bounds, lanes, lane_top, lane_rows, width, total_h) -> None:
    nsmap = {"bpmndi": BPMNDI, "dc": DC, "di": DI}
    collab = root.find(f"{{{BPMN}}}collaboration")
    participant = None
    if collab is not None:
        participant = next((p for p in collab.findall(f"{{{BPMN}}}participant")
                            if p.get("processRef") == process.get("id")), None)
    diagram = etree.SubElement(root, f"{{{BPMNDI}}}BPMNDiagram", nsmap=nsmap, id="CareflowGeneratedDiagram")
    plane_ref = collab.get("id") if participant is not None else process.get("id")
    plane = etree.SubElement(diagram, f"{{{BPMNDI}}}BPMNPlane", id="CareflowGeneratedPlane", bpmnElement=plane_ref)

    def shape(element_id: str, x: float, y: float, w: float, h: float, horizontal: bool = False) -> None:
        attrs = {"id": f"{element_id}_di", "bpmnElement": element_id}
        if horizontal:
            attrs["isHorizontal"] = "true"
        s = etree.SubElement(plane, f"{{{BPMNDI}}}BPMNShape", **attrs)
        etree.SubElement(s, f"{{{DC}}}Bounds", x=f"{x:.0f}", y=f"{y:.0f}", width=f"{w:.0f}", height=f"{h:.0f}")

    if participant is not None:
        shape(participant.get("id"), 0, 0, width, total_h, horizontal=True)
    for lane in lanes:
        lid = lane.get("id")
        shape(lid, LABEL_W, lane_top[lid], width - LABEL_W, lane_rows[lid] * 120 + 30, horizontal=True)
    for n in nodes:
        x, y, w, h = bounds[n]
        shape(n, x, y, w, h)
    for fid, s, t in flows:
        if s not in bounds or t not in bounds or not fid:
            continue
        sx, sy, sw, sh = bounds[s]
        tx, ty, tw, th = bounds[t]
        if s in (n for n, (k, el) in nodes.items() if _local(el) == "boundaryEvent"):
            start = (sx + sw / 2, sy + sh)
            points = [start, (start[0], ty + th / 2), (tx, ty + th / 2)]
        else:
            start = (sx + sw, sy + sh / 2)
            end = (tx, ty + th / 2) if tx > sx else (tx + tw / 2, ty + th)
            if abs(start[1] - end[1]) < 1:
                points = [start, end]
            elif tx > sx:
                mid = (start[0] + end[0]) / 2
                points = [start, (mid, start[1]), (mid, end[1]), end]
            else:
                points = [start, (start[0] + 20, start[1]), (start[0] + 20, end[1] + 30), (end[0], end[1] + 30), end]
        edge = etree.SubElement(plane, f"{{{BPMNDI}}}BPMNEdge", id=f"{fid}_di", bpmnElement=fid)
        for px, py in points:
            etree.SubElement(edge, f"{{{DI}}}waypoint", x=f"{px:.0f}", y=f"{py:.0f}")
