"""``rtnode rename``: files and folders, CSV report, dry run, evaluation; as a subprocess too."""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from appliance.cli_rename import REPORT_COLUMNS, add_rename_parser, cmd_rename
from tests.factories import RoiSpec, make_ct_series, make_rtstruct, write_dataset

ROOT = Path(__file__).resolve().parents[1]
ROIS = (
    RoiSpec("BODY", (0.0, 0.0), (160.0, 100.0), "EXTERNAL"),
    RoiSpec("Lt Parotid", (74.0, -5.0), (20.0, 20.0)),
    RoiSpec("Ring 60", (0.0, 0.0), (30.0, 30.0), "CONTROL"),
    RoiSpec("SpinalCord", (0.0, 88.0), (6.0, 5.0)),
)
# what the rename sub-command is once the lead registers it in appliance/cli.py
RUN_CLI = (
    "import argparse, sys\n"
    "from appliance.cli_rename import add_rename_parser\n"
    "p = argparse.ArgumentParser(prog='rtnode')\n"
    "add_rename_parser(p.add_subparsers(dest='command', required=True))\n"
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
)


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="rtnode")
    add_rename_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["rename", *argv])
    assert args.func is cmd_rename
    result: int = args.func(args)
    return result


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """Two structure sets in nested folders, plus a CT slice and a text file to skip."""
    ct = make_ct_series(n_slices=3, rows=16, cols=16)
    write_dataset(make_rtstruct(ct, ROIS, points_per_contour=6), tmp_path / "in" / "a" / "rs1.dcm")
    write_dataset(
        make_rtstruct(ct, ROIS[:2], points_per_contour=6), tmp_path / "in" / "b" / "c" / "rs2.dcm"
    )
    write_dataset(ct.datasets[0], tmp_path / "in" / "ct.dcm")
    (tmp_path / "in" / "notes.txt").write_text("not dicom", encoding="utf-8")
    return tmp_path


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_rename_folder_recursively(tree: Path) -> None:
    report = tree / "report.csv"
    assert run(str(tree / "in"), "--output", str(tree / "out"), "--report", str(report)) == 0
    rows = read_report(report)
    assert list(rows[0])[: len(REPORT_COLUMNS)] == list(REPORT_COLUMNS)
    assert len(rows) == len(ROIS) + 2
    by_old = {r["old_name"]: r for r in rows}
    assert by_old["Lt Parotid"]["new_name"] == "Parotid_L"
    assert by_old["Ring 60"]["new_name"] == "Ring 60" and by_old["Ring 60"]["method"] == "abstain"
    assert (
        by_old["SpinalCord"]["new_name"] == "SpinalCord"
        and by_old["SpinalCord"]["method"] == "compliant"
    )
    written = sorted(pydicom.dcmread(p).Modality for p in (tree / "out").iterdir())
    assert written == ["RTSTRUCT", "RTSTRUCT", "SR", "SR"]


def test_dry_run_writes_report_only(tree: Path) -> None:
    report = tree / "dry.csv"
    assert run(str(tree / "in" / "a" / "rs1.dcm"), "--dry-run", "--report", str(report)) == 0
    assert len(read_report(report)) == len(ROIS)
    assert not (tree / "out").exists()


def test_overrides_option(tree: Path) -> None:
    overrides = tree / "site.yaml"
    overrides.write_text("names:\n  Ring 60: zRing_PTV60\n", encoding="utf-8")
    report = tree / "r.csv"
    run(str(tree / "in" / "a"), "--dry-run", "--report", str(report), "--overrides", str(overrides))
    ring = next(r for r in read_report(report) if r["old_name"] == "Ring 60")
    assert (ring["new_name"], ring["method"]) == ("zRing_PTV60", "override")


def test_usage_errors(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(str(tree / "in")) == 2  # neither --output nor --dry-run
    assert run(str(tree / "missing"), "--dry-run") == 2
    assert run("--evaluate", str(tree / "missing.csv")) == 2
    assert run(str(tree / "in"), "--dry-run", "--overrides", str(tree / "none.yaml")) == 2
    assert "error:" in capsys.readouterr().err


def test_evaluate_prints_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    labelled = tmp_path / "dev.csv"
    labelled.write_text(
        "raw_name,tg263_name,clean,modifier_flags\n"
        "Lt Parotid,Parotid_L,1,\n"  # correct
        "L femur,Femur_Head_R,1,\n"  # wrong (a label error kept as such)
        "Pr,Prostate,1,\n"  # abstained
        "cord PRV,SpinalCord,0,PRV\n"  # base organ identified
        "Prostate + SV,NO_SINGLE_TG263_NAME,0,\n",
        encoding="utf-8",
    )
    report = tmp_path / "eval.csv"
    assert run("--evaluate", str(labelled), "--report", str(report)) == 0
    out = capsys.readouterr().out
    assert "accuracy (clean): 33.33% (1)" in out
    assert "wrong renames (clean): 33.33% (1)" in out
    assert "abstentions (clean): 33.33% (1)" in out
    assert "base-organ accuracy (modifier rows): 100.00% (1)" in out
    assert len(read_report(report)) == 5


def test_cli_as_a_subprocess(tree: Path) -> None:
    report = tree / "sub.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN_CLI,
            "rename",
            str(tree / "in"),
            "--output",
            str(tree / "o"),
            "--report",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "2 structure set(s), 6 ROI(s), 0 failure(s)" in done.stderr
    assert len(read_report(report)) == 6
