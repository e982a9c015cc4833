"""``careflow customers import``: good rows kept, bad rows reported, re-runs create nothing twice."""

from __future__ import annotations

import csv
import json

from sqlalchemy import func, select

from careflow.cli import cli
from engine.customers import Customer
from engine.runtime import Careflow

from crm_helpers import credit_code, mobile

CN_HEADER = ["客户类型", "客户名称", "统一社会信用代码", "身份证号", "联系人", "联系电话", "电子邮箱", "年消费额（元）",
             "需求类型", "客户来源", "首次接触日期"]


def _write(path, header, rows, encoding="utf-8-sig"):
    with path.open("w", encoding=encoding, newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _count(settings) -> int:
    eng = Careflow(settings)
    try:
        with eng.Session() as s:
            return s.scalar(select(func.count()).select_from(Customer))
    finally:
        eng.close()


def _report(path) -> dict[int, str]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        return {int(r["row"]): r["reason"] for r in csv.DictReader(f)}


def test_import_keeps_good_rows_reports_bad_ones_and_reruns_cleanly(runner, settings, tmp_path):
    rows = [
        ["企业", "北京华联精密机械有限公司", credit_code(1), "", "王建国", mobile(1), "wangjg@hualian.cn", "36万",
         "产品购买;售后服务", "展会", "2021-03-02"],                                     # row 2: good (core)
        ["企业", "上海鼎信软件科技有限公司", credit_code(2), "", "陈晓雯", "021-588812", "", "68000", "", "", ""],  # 3: phone
        ["个人", "张丽华", "", "110105198503152348", "", "136 1234 5678", "", "15000", "", "转介绍", ""],  # 4: good
        ["企业", "", credit_code(4), "", "", mobile(4), "", "", "", "", ""],                      # row 5: no name
        ["企业", "深圳市启航电子有限公司", "914403001928374610", "", "", mobile(5), "", "", "", "", ""],  # 6: check char
        ["企业", "杭州绿源环保科技有限公司", credit_code(6), "", "周敏", "+86 139 0000 0001", "", "", "", "", ""],  # 7: dup
        ["", "", "", "", "", "", "", "", "", "", ""],                                          # row 8: blank, skipped
        ["企业", "成都天府物流有限公司", credit_code(9), "", "杨帆", "0571 8765 1234", "", "45000", "", "", "2022/9/5"],  # 9
    ]
    src = _write(tmp_path / "customers.csv", CN_HEADER, rows)
    first = runner.invoke(cli, ["customers", "import", str(src), "--user", "li.na", "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert (summary["created"], summary["updated"], summary["unchanged"], summary["bad"]) == (3, 0, 0, 4)
    assert "Importing customers" in first.stderr  # the progress bar
    report_path = tmp_path / "customers-report.csv"
    assert summary["report"] == str(report_path)
    report = _report(report_path)
    assert sorted(report) == [3, 5, 6, 7]
    assert report[3].startswith("phone:") and "mobile" in report[3]
    assert report[5] == "name: is required"
    assert "credit_code: check character is wrong" in report[6]
    assert "duplicate of customer #1 北京华联精密机械有限公司 (same phone 139****0001)" in report[7]
    with report_path.open(encoding="utf-8-sig", newline="") as f:
        bad = {int(r["row"]): r for r in csv.DictReader(f)}
    assert bad[3]["name"] == "上海鼎信软件科技有限公司" and bad[3]["phone"] == "021-588812"  # the row, to fix and re-import
    assert _count(settings) == 3

    again = runner.invoke(cli, ["customers", "import", str(src), "--json"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert (summary["created"], summary["updated"], summary["unchanged"], summary["bad"]) == (0, 0, 3, 4)
    assert _count(settings) == 3

    # fix the bad rows in the report's spirit and import only them: now they are created
    rows[1][5] = "021-58881234"
    rows[3][1] = "广州粤海餐饮管理有限公司"
    rows[4][2] = "914403001928374617"
    rows[5][5] = mobile(7)
    _write(src, CN_HEADER, rows)
    fixed = runner.invoke(cli, ["customers", "import", str(src), "--report", str(tmp_path / "r.csv")])
    assert fixed.exit_code == 0, fixed.output
    assert "4 created, 0 updated, 3 unchanged, 0 not imported." in fixed.stdout
    assert not (tmp_path / "r.csv").exists()
    assert _count(settings) == 7


def test_gb18030_file_english_headers_and_merge_on_duplicate(runner, settings, tmp_path):
    header = ["customer_type", "name", "credit_code", "phone", "email", "annual_spend", "tier"]
    rows = [["enterprise", "南京金陵建设工程有限公司", credit_code(1), mobile(1), "", "520000", "core"],
            ["enterprise", "西安秦川仪器仪表有限公司", credit_code(2), "029-88451234", "", "", "core"]]
    src = _write(tmp_path / "excel.csv", header, rows, encoding="gb18030")
    first = runner.invoke(cli, ["customers", "import", str(src), "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["created"] == 1 and summary["bad_rows"][0]["row"] == 3
    assert "tier rule gives 'potential'" in summary["bad_rows"][0]["reasons"][0]

    rows = [["enterprise", "南京金陵建设工程有限公司", credit_code(1), mobile(1), "sunht@jinling.com", "80000", ""]]
    _write(src, header, rows, encoding="gb18030")
    skipped = runner.invoke(cli, ["customers", "import", str(src), "--json"])
    assert json.loads(skipped.stdout)["bad_rows"][0]["reasons"][0].startswith("duplicate of customer #1")
    merged = runner.invoke(cli, ["customers", "import", str(src), "--on-duplicate", "merge", "--json"])
    assert json.loads(merged.stdout)["updated"] == 1
    shown = json.loads(runner.invoke(cli, ["customers", "show", "1", "--json"]).stdout)
    assert shown["tier"] == "important" and shown["email"] == "s***@jinling.com"
    assert _count(settings) == 1


def test_unknown_or_missing_columns_import_nothing(runner, settings, tmp_path):
    src = _write(tmp_path / "bad.csv", ["客户名称", "电话", "微信号"], [["某公司", mobile(1), "wx123"]])
    result = runner.invoke(cli, ["customers", "import", str(src), "--json"])
    assert result.exit_code == 2
    problems = json.loads(result.stdout)["problems"]
    assert any("unknown column '微信号'" in p["message"] for p in problems)
    assert any("required column 'customer_type'" in p["message"] for p in problems)
    assert _count(settings) == 0
    empty = _write(tmp_path / "empty.csv", [], [])
    assert runner.invoke(cli, ["customers", "import", str(empty)]).exit_code == 2


def test_rows_with_extra_cells_are_reported(runner, tmp_path):
    src = tmp_path / "extra.csv"
    src.write_text(f"customer_type,name,phone,credit_code\nenterprise,某公司,{mobile(1)},{credit_code(1)},surplus\n",
                   encoding="utf-8")
    result = runner.invoke(cli, ["customers", "import", str(src), "--json"])
    summary = json.loads(result.stdout)
    assert summary["bad_rows"] == [{"row": 2, "reasons": ["the row has more cells than the header has columns"]}]
