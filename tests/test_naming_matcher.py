"""TG-263 matcher: normalisation, laterality, synonyms, PRV, targets, compliance, abstention."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.naming.decision import ABSTAIN, COMPLIANT, OVERRIDE
from engines.naming.normalise import fold_ascii, split_name
from engines.naming.overrides import Overrides, OverridesModel, load_overrides
from engines.naming.renamer import Renamer
from engines.naming.vocabulary import VocabularyError, load_vocabulary

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "tg263"


@pytest.fixture(scope="module")
def renamer() -> Renamer:
    return Renamer(load_vocabulary())


def new_name(renamer: Renamer, raw: str) -> str:
    return renamer.decide(raw).new_name


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # laterality in any position and form
        ("Lt Parotid", "Parotid_L"),
        ("PAROTID_L", "Parotid_L"),
        ("L. Parotid", "Parotid_L"),
        ("parotid lt gl", "Parotid_L"),
        ("Parotid (left)", "Parotid_L"),
        ("RightParotid", "Parotid_R"),
        ("parotid sinister", "Parotid_L"),
        ("Rt Cochlea", "Cochlea_R"),
        ("LCochlea", "Cochlea_L"),
        ("lcochlea", "Cochlea_L"),
        ("cochlea_lag", "Cochlea_L"),
        ("Lens Right", "Lens_R"),
        # abbreviations and synonyms
        ("L SMG", "Glnd_Submand_L"),
        ("rsmg", "Glnd_Submand_R"),
        ("Submand right", "Glnd_Submand_R"),
        ("B stem", "Brainstem"),
        ("Cord", "SpinalCord"),
        ("OAR_bladder", "Bladder"),
        ("Right globe", "Eye_R"),
        ("L HIP", "Femur_Head_L"),
        ("R head fem", "Femur_Head_R"),
        ("MPC", "Musc_Constrict_M"),
        ("Oral cavity", "Cavity_Oral"),
        ("jaw", "Bone_Mandible"),
        ("Sigmoid", "Colon_Sigmoid"),
        ("SV's", "SeminalVes"),
        # misspellings, glued words, versions, initials
        ("Bladdder", "Bladder"),
        ("Brsinstem", "Brainstem"),
        ("Pituatary", "Pituitary"),
        ("rigth lens", "Lens_R"),
        ("Right submndblr gland", "Glnd_Submand_R"),
        ("PScochlealeft", "Cochlea_L"),
        ("brainstemsjj", "Brainstem"),
        ("RECTUM2", "Rectum"),
        ("MANDIBLE_SP", "Bone_Mandible"),
        # combined / plural
        ("parotids", "Parotids"),
        ("both parotids", "Parotids"),
        ("Lung total", "Lungs"),
        ("kidneys", "Kidneys"),  # a plural listed as a word variant (kidneys: kidney)
        ("pelvic nodes", "LN_Pelvics"),
        ("Lt pelvic nodes", "LN_Pelvic_L"),
        ("paraaortic nodes", "LN_Paraaortic"),  # midline: the plural changes nothing
        ("inguinal nodes", "LN_Inguinofem"),  # TG-263's set name has no plural 's'
        # non-English anatomy
        ("hersenstam", "Brainstem"),
        ("Blaas", "Bladder"),
        ("ojo izquierdo", "Eye_L"),
        ("Niere rechts", "Kidney_R"),
        ("Lunge links", "Lung_L"),
        ("Cabeza femoral izquierda", "Femur_Head_L"),
        # common abbreviations, sides glued on
        ("LHOF", "Femur_Head_L"),  # head of femur
        ("HOF R", "Femur_Head_R"),
        # PRV and margins
        ("cord PRV 5mm", "SpinalCord_PRV05"),
        ("PRV Brainstem", "Brainstem_PRV"),
        ("Brainstem PRV 0.3cm", "Brainstem_PRV03"),
        ("L optic nerve PRV3", "OpticNrv_PRV03_L"),
        # opt / avoid copies are filed under the organ (vocabulary policy)
        ("Lt Lens Opt", "Lens_L"),
        # targets
        ("PTV 70Gy", "PTV_70Gy"),
        ("ptv_5040", "PTV_5040"),
        ("PTVn 70", "PTVn_70Gy"),
        ("ctv1", "CTV1"),
        ("PTV 50.4 Gy", "PTV_50p4Gy"),
        ("ptv high", "PTV_High"),
        ("CTV prostate", "Prostate"),
        # bolus thickness
        ("0.5cm bolus", "Bolus_05mm"),
        ("planning bolus", "Bolus"),
        # midline structure with a side the TG-263 name drops
        ("Lt Prosthesis", "Prosthesis"),
        ("Pros", "Prostate"),
    ],
)
def test_renames(renamer: Renamer, raw: str, expected: str) -> None:
    decision = renamer.decide(raw)
    assert decision.new_name == expected, decision
    assert decision.method not in (ABSTAIN, COMPLIANT)
    assert 0.5 <= decision.confidence <= 1.0


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("Parotid", ""),  # compliant base name: unchanged
        ("parotid", "laterality missing"),
        ("parotid_cl", "relative side"),
        ("L parotid - PTV60", "composite"),
        ("Prostate + SVs", "composite"),
        ("mandible in PTV", "composite"),
        ("Ring 60", "helper"),
        ("L Parotid R", "both sides"),
        ("Rectum R", "side given"),
        ("SPINAL_CANAL", "clinics differ"),
        ("pharyngeal constrictors", "clinics differ"),
        ("PTV 60 R", "target with"),
        ("ctv60-sjj", "target with"),
        ("Groningen OARs", ""),
        ("", "no words"),
        ("???", "no words"),
        ("x" * 200, ""),
    ],
)
def test_abstains(renamer: Renamer, raw: str, why: str) -> None:
    decision = renamer.decide(raw)
    assert decision.new_name == raw
    assert why in decision.reason


@pytest.mark.parametrize(
    "name",
    [
        "Parotid_L",
        "SpinalCord_PRV05",
        "OpticNrv_PRV03_L",
        "Brachial_Plex_R",
        "Oral_Cavity",
        "PTVp1_CT1PT1",
        "PTV_50p4Gy",
        "zOptPTV_High",
        "Lungs^Ex",
        "Lung~_L",
        "Kidney_L-GTV",
        "Bolus_09mm",
        "E-PTV_Ev05_5040",
        "Femur_L",
        "Orbit_R",
        "VB_C1",
        "Spc",
        "Lens",
    ],
)
def test_compliant_names_unchanged(renamer: Renamer, name: str) -> None:
    decision = renamer.decide(name)
    assert decision.method == COMPLIANT
    assert decision.new_name == name


@pytest.mark.parametrize(
    "name", ["PAROTID_L", "Parotid_Lt", "Eye_Left", "Prostate_1", "CTV_prostate"]
)
def test_tg263_lookalikes_are_not_compliant(renamer: Renamer, name: str) -> None:
    assert renamer.decide(name).method != COMPLIANT


def test_split_name_humps_digits_and_operators() -> None:
    split = split_name("PRVBrainstem_L2")
    assert [p.text for p in split.pieces] == ["prv", "brainstem", "l", "2"]
    assert split_name("Parotid_L - PTV60").composite == "-"
    assert split_name("CTV-N65").composite == ""
    assert split_name("Body-3mm").composite == "-"
    assert fold_ascii("Parótida Größe") == "Parotida Grosse"


def test_overrides_win_over_everything(tmp_path: Path) -> None:
    path = tmp_path / "overrides.yaml"
    path.write_text(
        "names:\n  SPINAL_CANAL: SpinalCord\n  Parotid_L: Parotid_R\n"
        "  gland x: {name: Glnd_Thyroid, color_rgb: [1, 2, 3]}\n"
        "colors:\n  SpinalCord: [9, 9, 9]\n",
        encoding="utf-8",
    )
    renamer = Renamer(load_vocabulary(), load_overrides(path))
    assert renamer.decide("spinal canal").new_name == "SpinalCord"
    assert renamer.decide("spinal canal").method == OVERRIDE
    assert renamer.decide("Parotid_L").new_name == "Parotid_R"  # even a compliant name
    assert renamer.colour("SpinalCord") == (9, 9, 9)
    assert renamer.colour("Glnd_Thyroid") == (1, 2, 3)
    assert renamer.colour("SpinalCord_PRV05") == (9, 9, 9)


def test_example_overrides_file_loads() -> None:
    path = Path(__file__).resolve().parents[1] / "config" / "tg263_overrides.example.yaml"
    overrides = load_overrides(path)
    assert overrides.lookup("spinal canal") == "SpinalCord"
    assert len(Overrides(OverridesModel())) == 0


def test_invalid_vocabulary_lists_problems(tmp_path: Path) -> None:
    bad = tmp_path / "vocab.yaml"
    bad.write_text(
        "name: x\ncategories: {gland: {color_rgb: [0, 0, 300]}}\nlaterality: {left: [l], right: [r]}\n"
        "structures:\n  - {name: Parotid, category: nope}\n",
        encoding="utf-8",
    )
    with pytest.raises(VocabularyError, match="color_rgb"):
        load_vocabulary(bad)


def test_colours_and_types(renamer: Renamer) -> None:
    assert renamer.colour("Parotid_L") == (0, 220, 120)
    assert renamer.colour("Parotid_R") == (120, 220, 0)
    assert renamer.colour("PTV_70Gy") == (0, 0, 255)
    assert renamer.interpreted_type("External") == "EXTERNAL"
    assert renamer.interpreted_type("SpinalCord_PRV05") == "AVOIDANCE"
    assert renamer.interpreted_type("CTV_60Gy") == "CTV"


@pytest.mark.skipif(
    not (SHARED / "tg263_nomenclature_20170815.csv").exists(), reason="no shared data"
)
@pytest.mark.parametrize(
    "sheet", ["tg263_nomenclature_20170815.csv", "TG263_Nomenclature_Worksheet_20170815.xls"]
)
def test_worksheet_names_become_compliant(sheet: str) -> None:
    pytest.importorskip("xlrd") if sheet.endswith(".xls") else None
    vocab = load_vocabulary(worksheet=SHARED / sheet)
    assert {"Hypothalmus_PRV", "A_Carotid_L", "LN_Neck_IA_L"} <= vocab.names
    renamer = Renamer(vocab)
    assert renamer.decide("LN_Neck_IA_L").method == COMPLIANT
