#!/usr/bin/env python
"""Seed the Omnis source catalogue (``medrov/catalog/{vocabulary,sources}.yaml``) from MedROV's presence matrix.

The matrix (``../shared/data/medrov_presence_matrix.csv``, extracted from the MedROV code release) gives the
class vocabulary (its 157 columns) and, per dataset row, which classes are annotated (1), may be present but
unannotated (0) or cannot exist (-1). Everything the matrix does not say -- modality, annotation format,
licence and homepage of each source, the TotalSegmentator label-id mapping, the BCCD VOC label map and the
base/novel split -- is hand knowledge kept in the dicts below. Edit this script, then regenerate::

    python scripts/seed_catalog.py            # write both YAML files
    python scripts/seed_catalog.py --check    # exit 1 if the committed files are stale

Only the standard library and PyYAML are used; the output is deterministic (no timestamps, fixed order).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = REPO_ROOT.parent / "shared" / "data" / "medrov_presence_matrix.csv"
DEFAULT_TS_LABELS = REPO_ROOT.parent / "shared" / "data" / "totalsegmentator" / "labels_total.json"
DEFAULT_OUT = REPO_ROOT / "medrov" / "catalog"

MODALITIES = [
    "ct",
    "mri",
    "xray",
    "ultrasound",
    "histopathology",
    "dermoscopy",
    "fundoscopy",
    "endoscopy",
    "microscopy",
]
FORMATS = ["nifti", "dicom", "mask2d", "voc", "coco", "csv", "yolo"]
VOLUME_MODALITIES = {"ct", "mri"}

# ---------------------------------------------------------------------------------------------------------
# Per-source hand knowledge, keyed by the matrix row name (kept exactly as in the CSV).
# format = the native annotation format, reduced to the catalogue's enum; "note" is emitted as a YAML comment.
# Licences are only given where we are confident; otherwise "see homepage".
# ---------------------------------------------------------------------------------------------------------
SEE = "see homepage"
MSD = "http://medicaldecathlon.com/"
MSD_LICENCE = "CC BY-SA 4.0"

SOURCES: dict[str, dict] = {
    "AbdomenAtlas": dict(
        title="AbdomenAtlas 1.0 Mini (abdominal CT, 9 organs)",
        modality="ct",
        format="nifti",
        licence=SEE,
        homepage="https://github.com/MrGiovanni/AbdomenAtlas",
    ),
    "AbdomenCT1K": dict(
        title="AbdomenCT-1K (liver, kidney, spleen, pancreas)",
        modality="ct",
        format="nifti",
        licence=SEE,
        homepage="https://github.com/JunMa11/AbdomenCT-1K",
    ),
    "ACDC": dict(
        title="ACDC: Automated Cardiac Diagnosis Challenge (cine MRI)",
        modality="mri",
        format="nifti",
        licence=SEE,
        homepage="https://www.creatis.insa-lyon.fr/Challenge/acdc/",
    ),
    "AMOSF": dict(
        title="AMOS 2022, female cases (label 15 prostate/uterus = uterus)",
        modality="ct",
        format="nifti",
        licence="CC BY 4.0",
        homepage="https://amos22.grand-challenge.org/",
        note="AMOS splits in two rows by sex, not by modality: AMOSF annotates uterus (prostate -1), AMOSM "
        "annotates prostate (uterus -1). AMOS holds CT (500) and MRI (100) scans; ct = the majority part.",
    ),
    "AMOSM": dict(
        title="AMOS 2022, male cases (label 15 prostate/uterus = prostate)",
        modality="ct",
        format="nifti",
        licence="CC BY 4.0",
        homepage="https://amos22.grand-challenge.org/",
        note="see AMOSF: male half of AMOS; ct = the majority part (AMOS also has 100 MRI scans).",
    ),
    "BCCD": dict(
        title="BCCD: Blood Cell Count and Detection",
        modality="microscopy",
        format="voc",
        licence="MIT",
        homepage="https://github.com/Shenggan/BCCD_Dataset",
    ),
    "BHSD": dict(
        title="BHSD: 3D Brain Hemorrhage Segmentation Dataset (head CT)",
        modality="ct",
        format="nifti",
        licence=SEE,
        homepage="https://github.com/White65534/BHSD",
    ),
    "BOrg": dict(
        title="BOrg: brain organoid mitosis dataset (confocal microscopy)",
        modality="microscopy",
        format="coco",
        licence=SEE,
        homepage="https://github.com/awaisrauf/borg",
        note="COCO JSON per split, 50 px boxes around point annotations (recipes.yaml, CATALOG-LAYOUTS.md).",
    ),
    "BUSI": dict(
        title="BUSI: Breast Ultrasound Images",
        modality="ultrasound",
        format="mask2d",
        licence=SEE,
        homepage="https://scholar.cu.edu.eg/?q=afahmy/pages/dataset",
    ),
    "Consep": dict(
        title="CoNSeP: colorectal nuclear segmentation and phenotypes (H&E)",
        modality="histopathology",
        format="mask2d",
        licence=SEE,
        homepage="https://warwick.ac.uk/fac/cross_fac/tia/data/hovernet/",
        note="instance/type maps in .mat files; CoNSeP's 7 types are merged into inflammatory, epithelial and "
        "spindle-shaped (vocabulary name 'fibroblast').",
    ),
    "COVID19": dict(
        title="COVID-19 CT lung and infection segmentation dataset",
        modality="ct",
        format="nifti",
        licence=SEE,
        homepage="https://zenodo.org/record/3757476",
    ),
    "CPM17": dict(
        title="CPM-17: MICCAI 2017 computational precision medicine nuclei segmentation (H&E)",
        modality="histopathology",
        format="mask2d",
        licence=SEE,
        homepage="https://github.com/vqdang/hover_net",
        note="instance maps in .mat files; download links are in the HoVer-Net README.",
    ),
    "CrossModa": dict(
        title="crossMoDA: vestibular schwannoma and cochlea (T1ce / hrT2 MRI)",
        modality="mri",
        format="nifti",
        licence=SEE,
        homepage="https://crossmoda-challenge.ml/",
    ),
    "CXR8": dict(
        title="NIH ChestX-ray8 (bounding-box subset, 8 findings)",
        modality="xray",
        format="csv",
        licence=SEE,
        homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
        note="boxes come from BBox_List_2017.csv (about 1,000 images with boxes).",
    ),
    "FLARE22": dict(
        title="FLARE 2022: fast and low-resource abdominal organ segmentation (CT)",
        modality="ct",
        format="nifti",
        licence=SEE,
        homepage="https://flare22.grand-challenge.org/",
    ),
    "HaNSeg": dict(
        title="HaN-Seg: head and neck organ-at-risk CT segmentation",
        modality="ct",
        format="nifti",
        licence=SEE,
        homepage="https://han-seg2023.grand-challenge.org/",
        note="upstream volumes and masks are NRRD (.seg.nrrd); nifti = volumetric label maps, convert on import.",
    ),
    "IDRID": dict(
        title="IDRiD: Indian Diabetic Retinopathy Image Dataset (optic disc)",
        modality="fundoscopy",
        format="mask2d",
        licence="CC BY 4.0",
        homepage="https://idrid.grand-challenge.org/",
    ),
    "KIPA22": dict(
        title="KiPA 2022: kidney parsing for renal cancer treatment (CTA)",
        modality="ct",
        format="nifti",
        licence=SEE,
        homepage="https://kipa22.grand-challenge.org/",
    ),
    "KVASIR": dict(
        title="Kvasir-SEG: gastrointestinal polyp segmentation",
        modality="endoscopy",
        format="mask2d",
        licence=SEE,
        homepage="https://datasets.simula.no/kvasir-seg/",
        note="masks plus a bounding-box json (kavsir_bboxes.json).",
    ),
    "M5HCM": dict(
        title="M5 malaria dataset, high-cost microscope images",
        modality="microscopy",
        format="voc",
        licence=SEE,
        homepage="https://github.com/intelligentMachines-ITU/LowCostmalariaDetection_CVPR_2022",
        note="HCM/LCM = high-/low-cost microscope halves of one source; Pascal VOC XML per image (recipes.yaml).",
    ),
    "M5LCM": dict(
        title="M5 malaria dataset, low-cost microscope images",
        modality="microscopy",
        format="voc",
        licence=SEE,
        homepage="https://github.com/intelligentMachines-ITU/LowCostmalariaDetection_CVPR_2022",
        note="see M5HCM; Pascal VOC XML per image (recipes.yaml).",
    ),
    "MMWHSCT": dict(
        title="MM-WHS 2017: multi-modality whole heart segmentation (CT part)",
        modality="ct",
        format="nifti",
        licence=SEE,
        homepage="https://zmiclab.github.io/zxh/0/mmwhs/",
    ),
    "MMWHSMRI": dict(
        title="MM-WHS 2017: multi-modality whole heart segmentation (MRI part)",
        modality="mri",
        format="nifti",
        licence=SEE,
        homepage="https://zmiclab.github.io/zxh/0/mmwhs/",
    ),
    "MnMs": dict(
        title="M&Ms: multi-centre, multi-vendor and multi-disease cardiac segmentation (cine MRI)",
        modality="mri",
        format="nifti",
        licence=SEE,
        homepage="https://www.ub.edu/mnms/",
    ),
    "MSD_Brain": dict(
        title="Medical Segmentation Decathlon, Task01 BrainTumour (multi-parametric MRI)",
        modality="mri",
        format="nifti",
        licence=MSD_LICENCE,
        homepage=MSD,
    ),
    "MSD_Colon": dict(
        title="Medical Segmentation Decathlon, Task10 Colon (CT)",
        modality="ct",
        format="nifti",
        licence=MSD_LICENCE,
        homepage=MSD,
    ),
    "MSD_Heart": dict(
        title="Medical Segmentation Decathlon, Task02 Heart (left atrium, MRI)",
        modality="mri",
        format="nifti",
        licence=MSD_LICENCE,
        homepage=MSD,
    ),
    "MSD_HepaticVessel": dict(
        title="Medical Segmentation Decathlon, Task08 HepaticVessel (CT)",
        modality="ct",
        format="nifti",
        licence=MSD_LICENCE,
        homepage=MSD,
    ),
    "MSD_Hippocampus": dict(
        title="Medical Segmentation Decathlon, Task04 Hippocampus (MRI)",
        modality="mri",
        format="nifti",
        licence=MSD_LICENCE,
        homepage=MSD,
    ),
    "MSD_Prostate": dict(
        title="Medical Segmentation Decathlon, Task05 Prostate (multi-parametric MRI)",
        modality="mri",
        format="nifti",
        licence=MSD_LICENCE,
        homepage=MSD,
    ),
    "MSD_Spleen": dict(
        title="Medical Segmentation Decathlon, Task09 Spleen (CT)",
        modality="ct",
        format="nifti",
        licence=MSD_LICENCE,
        homepage=MSD,
    ),
    "Polypgen": dict(
        title="PolypGen: multi-centre polyp detection and segmentation (colonoscopy)",
        modality="endoscopy",
        format="mask2d",
        licence=SEE,
        homepage="https://www.synapse.org/#!Synapse:syn26376615",
        note="masks plus per-image bounding-box text files.",
    ),
    "PROMISE": dict(
        title="PROMISE12: prostate MR image segmentation",
        modality="mri",
        format="nifti",
        licence=SEE,
        homepage="https://promise12.grand-challenge.org/",
        note="upstream volumes and masks are MetaImage (.mhd/.raw); nifti = volumetric label maps, convert on import.",
    ),
    "TotalSegmentorMRI": dict(
        title="TotalSegmentator MRI dataset",
        modality="mri",
        format="nifti",
        licence=SEE,
        homepage="https://github.com/wasserth/TotalSegmentator",
    ),
    "TotalSegmentorCT": dict(
        title="TotalSegmentator CT dataset (v2, 117 classes)",
        modality="ct",
        format="nifti",
        licence="CC BY 4.0",
        homepage="https://github.com/wasserth/TotalSegmentator",
        note="one NIfTI mask per structure upstream; labels below follow the 'total' task ids (labels_total.json).",
    ),
    "TNBC": dict(
        title="TNBC nuclei segmentation dataset (Naylor et al., H&E)",
        modality="histopathology",
        format="mask2d",
        licence=SEE,
        homepage="https://zenodo.org/record/1175282",
    ),
    "ISIC": dict(
        title="ISIC skin lesion challenge (dermoscopy, lesion masks)",
        modality="dermoscopy",
        format="mask2d",
        licence=SEE,
        homepage="https://challenge.isic-archive.com/data/",
        note="the matrix does not say which ISIC year; ISIC lesion masks include benign lesions.",
    ),
}

# ---------------------------------------------------------------------------------------------------------
# TotalSegmentator "total" task (v2): label id -> upstream name (copy of labels_total.json) and the
# upstream name -> canonical vocabulary class. None = deliberately ignored (no vocabulary class fits, and
# MedROV's TotalSegmentorCT row does not annotate it).
# ---------------------------------------------------------------------------------------------------------
TS_ID_TO_NAME: dict[int, str] = {
    1: "spleen",
    2: "kidney_right",
    3: "kidney_left",
    4: "gallbladder",
    5: "liver",
    6: "stomach",
    7: "pancreas",
    8: "adrenal_gland_right",
    9: "adrenal_gland_left",
    10: "lung_upper_lobe_left",
    11: "lung_lower_lobe_left",
    12: "lung_upper_lobe_right",
    13: "lung_middle_lobe_right",
    14: "lung_lower_lobe_right",
    15: "esophagus",
    16: "trachea",
    17: "thyroid_gland",
    18: "small_bowel",
    19: "duodenum",
    20: "colon",
    21: "urinary_bladder",
    22: "prostate",
    23: "kidney_cyst_left",
    24: "kidney_cyst_right",
    25: "sacrum",
    26: "vertebrae_S1",
    27: "vertebrae_L5",
    28: "vertebrae_L4",
    29: "vertebrae_L3",
    30: "vertebrae_L2",
    31: "vertebrae_L1",
    32: "vertebrae_T12",
    33: "vertebrae_T11",
    34: "vertebrae_T10",
    35: "vertebrae_T9",
    36: "vertebrae_T8",
    37: "vertebrae_T7",
    38: "vertebrae_T6",
    39: "vertebrae_T5",
    40: "vertebrae_T4",
    41: "vertebrae_T3",
    42: "vertebrae_T2",
    43: "vertebrae_T1",
    44: "vertebrae_C7",
    45: "vertebrae_C6",
    46: "vertebrae_C5",
    47: "vertebrae_C4",
    48: "vertebrae_C3",
    49: "vertebrae_C2",
    50: "vertebrae_C1",
    51: "heart",
    52: "aorta",
    53: "pulmonary_vein",
    54: "brachiocephalic_trunk",
    55: "subclavian_artery_right",
    56: "subclavian_artery_left",
    57: "common_carotid_artery_right",
    58: "common_carotid_artery_left",
    59: "brachiocephalic_vein_left",
    60: "brachiocephalic_vein_right",
    61: "atrial_appendage_left",
    62: "superior_vena_cava",
    63: "inferior_vena_cava",
    64: "portal_vein_and_splenic_vein",
    65: "iliac_artery_left",
    66: "iliac_artery_right",
    67: "iliac_vena_left",
    68: "iliac_vena_right",
    69: "humerus_left",
    70: "humerus_right",
    71: "scapula_left",
    72: "scapula_right",
    73: "clavicula_left",
    74: "clavicula_right",
    75: "femur_left",
    76: "femur_right",
    77: "hip_left",
    78: "hip_right",
    79: "spinal_cord",
    80: "gluteus_maximus_left",
    81: "gluteus_maximus_right",
    82: "gluteus_medius_left",
    83: "gluteus_medius_right",
    84: "gluteus_minimus_left",
    85: "gluteus_minimus_right",
    86: "autochthon_left",
    87: "autochthon_right",
    88: "iliopsoas_left",
    89: "iliopsoas_right",
    90: "brain",
    91: "skull",
    **{91 + i: f"rib_left_{i}" for i in range(1, 13)},
    **{103 + i: f"rib_right_{i}" for i in range(1, 13)},
    116: "sternum",
    117: "costal_cartilages",
}

# names whose target is not found by the generic rules in ts_target()
TS_OVERRIDES: dict[str, str | None] = {
    "vertebrae_S1": "vertebra",  # S1 is the top of the sacrum, but TotalSegmentator labels it as a vertebra
    "common_carotid_artery_left": "left carotid artery",
    "common_carotid_artery_right": "right carotid artery",
    "subclavian_artery_left": "subclavian left artery",
    "subclavian_artery_right": "subclavian right artery",
    "atrial_appendage_left": "left atrial appendage",
    "iliac_vena_left": "left iliac vein",
    "iliac_vena_right": "right iliac vein",
    # no vocabulary class, and the TotalSegmentorCT row does not annotate them:
    "small_bowel": None,
    "colon": None,  # 'colon cancer primaries' is a lesion, not the organ
    "kidney_cyst_left": None,
    "kidney_cyst_right": None,
    "portal_vein_and_splenic_vein": None,  # 'hepatic vessel' (MSD) is intrahepatic only; the row has it at 0
    "iliac_artery_left": None,
    "iliac_artery_right": None,
    "brain": None,
}
TS_IGNORED_WHY = {
    "small_bowel": "no small-bowel class in the vocabulary",
    "colon": "no colon (organ) class; 'colon cancer primaries' is a lesion",
    "kidney_cyst_left": "no kidney-cyst class",
    "kidney_cyst_right": "no kidney-cyst class",
    "portal_vein_and_splenic_vein": "'hepatic vessel' is intrahepatic only and 0 in this row",
    "iliac_artery_left": "no iliac-artery class",
    "iliac_artery_right": "no iliac-artery class",
    "brain": "no whole-brain class",
}


def ts_target(ts_name: str, vocab: set[str]) -> str | None:
    """Canonical vocabulary class for a TotalSegmentator 'total' label name (None = ignored)."""
    if ts_name in TS_OVERRIDES:
        return TS_OVERRIDES[ts_name]
    if ts_name.startswith("vertebrae_"):
        return "vertebra"
    if re.fullmatch(r"rib_(left|right)_\d+", ts_name):
        return "rib"
    m = re.fullmatch(r"lung_(upper|middle|lower)_lobe_(left|right)", ts_name)
    if m:
        return f"{m.group(2)} lung {m.group(1)} lobe"
    m = re.fullmatch(r"(.+)_(left|right)", ts_name)
    if m:
        return f"{m.group(2)} {m.group(1).replace('_', ' ')}"
    name = ts_name.replace("_", " ")
    if name in vocab:
        return name
    raise KeyError(f"no TotalSegmentator mapping for {ts_name!r}: add it to TS_OVERRIDES")


# BCCD's Pascal VOC object names -> canonical names
BCCD_LABELS = {"RBC": "red blood cell", "WBC": "white blood cell", "Platelets": "platelets"}

# ---------------------------------------------------------------------------------------------------------
# Novel split (the paper does not publish one). Each novel class is held out from training in every source;
# the value names the base classes it is related to (annotated in the same source, same modality) and why.
# ---------------------------------------------------------------------------------------------------------
NOVEL: dict[str, tuple[list[str], str]] = {
    # CT / MRI anatomy: one side of a left/right pair, or one part of a multi-part organ
    "left kidney": (["right kidney", "kidney"], "left/right pair; 'kidney' (both) stays base"),
    "right parotid gland": (["left parotid gland"], "left/right pair in HaN-Seg"),
    "left optic nerve": (["right optic nerve", "optic chiasm"], "left/right pair in HaN-Seg"),
    "right lung middle lobe": (["right lung upper lobe", "right lung lower lobe"], "one of five lung lobes"),
    "left humerus": (["right humerus"], "left/right pair in TotalSegmentator CT/MRI"),
    "left sartorius": (["right sartorius"], "left/right pair in TotalSegmentator MRI"),
    "posterior hippocampus": (["anterior hippocampus"], "one of two hippocampus parts"),
    "prostate transitional zone": (["prostate peripheral zone", "prostate"], "one of two prostate zones"),
    # CT / MRI lesions: one lesion type per dataset family
    "subdural brain hemorrhage": (
        ["epidural brain hemorrhage", "subarachnoid brain hemorrhage"],
        "one of five hemorrhage types (CT)",
    ),
    "kidney tumor": (["kidney", "renal artery"], "renal lesion next to base kidney anatomy (CT)"),
    "enhancing brain tumor": (["non-enhancing brain tumor", "cerebral edema"], "one of three glioma sub-regions (MRI)"),
    # X-ray findings
    "pneumothorax": (["effusion", "atelectasis"], "one of eight chest X-ray findings"),
    "lung nodule": (["lung mass"], "small-lesion sibling of base 'lung mass'"),
    # ultrasound
    "malignant breast tumor": (["benign breast tumor"], "benign/malignant pair (BUSI)"),
    # histopathology cell types
    "inflammatory": (["epithelial", "fibroblast", "nuclei"], "one of three CoNSeP nucleus types"),
    # microscopy: one cell type, one parasite stage, one mitosis phase
    "white blood cell": (["red blood cell", "platelets"], "one of three blood cell types (BCCD)"),
    "schizont malaria parasite": (
        ["trophozoite malaria parasite", "ring malaria parasite"],
        "one of four malaria life stages (M5)",
    ),
    "anaphase": (["metaphase", "telophase"], "one of four mitosis phases (BOrg)"),
}

# classes appended after the matrix columns (each marked `extra: true`); none are needed at present:
# every TotalSegmentator / BCCD target already exists in the matrix vocabulary.
EXTRA_CLASSES: list[dict] = []

VOCAB_HEADER = """\
# generated by scripts/seed_catalog.py from MedROV's presence matrix; edit the script, not this file
#
# classes: the 157 columns of the matrix, in column order; name = first '/' part, synonyms = the others.
# modalities: the modalities of every source whose matrix value is 1 or 0 for the class.
#
# Novel split (MedROV did not publish one; this one is ours). Rule:
#   * a novel class is held out from training in every source; its boxes are only used for evaluation;
#   * it must keep at least one semantically related BASE class that is annotated (1) in the same source
#     (hence of the same modality): one side of a left/right pair, one part of a multi-part organ, one
#     lesion type, one cell type, one parasite stage, one mitosis phase;
#   * every source keeps at least one base class (no source becomes evaluation-only);
#   * modalities with a single class (dermoscopy, fundoscopy, endoscopy) keep it base: holding it out
#     would leave no related base class.
# Result: {n_novel} novel classes over {n_mod} modalities ({mods}).
# The related base classes are given in the comment after each `split: novel`.
"""

SOURCES_HEADER = """\
# generated by scripts/seed_catalog.py from MedROV's presence matrix; edit the script, not this file
#
# One entry per matrix row (row names kept exactly). presence: the full matrix row by canonical class
# name, listing only classes with value 1 (annotated) or 0 (may be present, unannotated); every class not
# listed is -1 (cannot exist). format is the native annotation format; "see homepage" = licence not checked.
"""


# ---------------------------------------------------------------------------------------------------------
def read_matrix(path: Path) -> tuple[list[list[str]], dict[str, list[int]]]:
    """(column synonym lists, row name -> values) from the presence-matrix CSV."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    header = rows[0]
    columns = [[p.strip() for p in col.split("/")] for col in header[1:]]
    matrix: dict[str, list[int]] = {}
    for r in rows[1:]:
        name = r[0].strip()
        if len(r) != len(header):
            raise ValueError(f"row {name!r} has {len(r) - 1} values, expected {len(header) - 1}")
        values = [int(v) for v in r[1:]]
        if set(values) - {-1, 0, 1}:
            raise ValueError(f"row {name!r} has values outside -1/0/1")
        if name in matrix:
            raise ValueError(f"duplicate row {name!r}")
        matrix[name] = values
    return columns, matrix


def build(csv_path: Path, ts_labels_path: Path | None = None) -> tuple[dict, dict, list[str]]:
    """The vocabulary and sources documents (plain data) and a list of report lines."""
    columns, matrix = read_matrix(csv_path)
    names = [c[0] for c in columns]
    if len(set(names)) != len(names):
        raise ValueError("duplicate canonical class names in the matrix header")
    vocab_set = set(names) | {c["name"] for c in EXTRA_CLASSES}
    report: list[str] = []

    missing = [s for s in matrix if s not in SOURCES]
    unknown = [s for s in SOURCES if s not in matrix]
    if missing or unknown:
        raise ValueError(f"SOURCES out of sync with the matrix: missing {missing}, unknown {unknown}")
    for name, meta in SOURCES.items():
        if meta["modality"] not in MODALITIES or meta["format"] not in FORMATS:
            raise ValueError(f"{name}: bad modality/format {meta['modality']}/{meta['format']}")

    # --- vocabulary
    classes = []
    for j, parts in enumerate(columns):
        mods = {SOURCES[s]["modality"] for s, vals in matrix.items() if vals[j] in (0, 1)}
        classes.append(
            dict(
                name=parts[0],
                synonyms=parts[1:],
                modalities=[m for m in MODALITIES if m in mods],
                split="novel" if parts[0] in NOVEL else "base",
            )
        )
    for extra in EXTRA_CLASSES:
        classes.append(dict(extra, extra=True))
    unknown_novel = set(NOVEL) - vocab_set
    if unknown_novel:
        raise ValueError(f"novel classes not in the vocabulary: {sorted(unknown_novel)}")

    # novel-split sanity: related classes are base and co-annotated in some source; sources keep a base class
    col = {n: j for j, n in enumerate(names)}
    for novel, (related, _why) in NOVEL.items():
        for rel in related:
            if rel in NOVEL or rel not in col:
                raise ValueError(f"{novel}: related class {rel!r} must be an existing base class")
        if not any(vals[col[novel]] == 1 and any(vals[col[r]] == 1 for r in related) for vals in matrix.values()):
            raise ValueError(f"{novel}: no source annotates it together with one of {related}")
    for s, vals in matrix.items():
        if not any(v == 1 and names[j] not in NOVEL for j, v in enumerate(vals)):
            raise ValueError(f"source {s} would keep no base class")
    used = {m for c in classes for m in c["modalities"]}
    if used != set(MODALITIES):
        raise ValueError(f"modalities never used: {sorted(set(MODALITIES) - used)}")

    vocabulary = dict(modalities=list(MODALITIES), classes=classes)

    # --- sources
    sources: dict[str, dict] = {}
    for s, vals in matrix.items():
        meta = SOURCES[s]
        entry = dict(
            title=meta["title"],
            modality=meta["modality"],
            dims=3 if meta["modality"] in VOLUME_MODALITIES else 2,
            format=meta["format"],
            licence=meta["licence"],
            homepage=meta["homepage"],
            presence={names[j]: v for j, v in enumerate(vals) if v in (0, 1)},
        )
        if meta.get("note"):
            entry["_note"] = meta["note"]
        sources[s] = entry

    # TotalSegmentator CT label map
    if ts_labels_path is not None and ts_labels_path.is_file():
        upstream = {int(k): v for k, v in json.loads(ts_labels_path.read_text()).items()}
        if upstream != TS_ID_TO_NAME:
            raise ValueError(f"{ts_labels_path} differs from TS_ID_TO_NAME: update the script")
    else:
        report.append(f"note: {ts_labels_path} not found, TS_ID_TO_NAME not cross-checked")
    ts_labels = {i: ts_target(n, vocab_set) for i, n in sorted(TS_ID_TO_NAME.items())}
    bad = {t for t in ts_labels.values() if t is not None and t not in vocab_set}
    if bad:
        raise ValueError(f"TotalSegmentator targets not in the vocabulary: {sorted(bad)}")
    ts_row = sources["TotalSegmentorCT"]["presence"]
    annotated = {c for c, v in ts_row.items() if v == 1}
    targets = {t for t in ts_labels.values() if t is not None}
    if targets - annotated:
        raise ValueError(
            f"TotalSegmentator ids map to classes the TotalSegmentorCT row does not annotate: "
            f"{sorted(targets - annotated)}"
        )
    unmapped = [c for c in names if c in annotated - targets]
    report.append(
        f"TotalSegmentorCT: {len(ts_labels)} ids, {len(targets)} target classes, "
        f"{sum(t is None for t in ts_labels.values())} ids ignored (null)"
    )
    report.append("TotalSegmentorCT M=1 classes with no id mapped to them: " + (", ".join(unmapped) or "none"))
    sources["TotalSegmentorCT"]["label_names"] = "labels_total.json"
    sources["TotalSegmentorCT"]["labels"] = ts_labels

    # BCCD VOC label map
    if set(BCCD_LABELS.values()) != {c for c, v in sources["BCCD"]["presence"].items() if v == 1}:
        raise ValueError("BCCD_LABELS does not cover exactly the BCCD row's annotated classes")
    sources["BCCD"]["labels"] = dict(BCCD_LABELS)

    novel_mods = sorted(
        {
            m
            for c in classes
            if c["split"] == "novel"
            for m in c["modalities"]
            if any(SOURCES[s]["modality"] == m and matrix[s][col[c["name"]]] == 1 for s in matrix)
        },
        key=MODALITIES.index,
    )
    report.append(f"novel: {len(NOVEL)} classes over {len(novel_mods)} modalities ({', '.join(novel_mods)})")
    vocabulary["_novel_modalities"] = novel_mods
    return vocabulary, {"sources": sources}, report


# ---------------------------------------------------------------------------------------------------------
# Emitting: hand-written so the files keep comments and a compact, diff-friendly layout. Every scalar goes
# through _q(); the result is checked by re-loading it with yaml.safe_load.
_PLAIN = re.compile(r"[A-Za-z][A-Za-z0-9 _.\-]*[A-Za-z0-9.]|[A-Za-z]")
_RESERVED = {"yes", "no", "y", "n", "on", "off", "true", "false", "null", "none", "~"}


def _q(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    s = str(value)
    if _PLAIN.fullmatch(s) and s.lower() not in _RESERVED and "  " not in s:
        return s
    return json.dumps(s, ensure_ascii=False)


def _flow(items) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


def _comment(text: str, indent: str, width: int = 110) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if line and len(indent) + 2 + len(line) + 1 + len(w) > width:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    if line:
        lines.append(line)
    return [f"{indent}# {ln}" for ln in lines]


def emit_vocabulary(vocab: dict) -> str:
    mods = vocab["_novel_modalities"]
    n_novel = sum(c["split"] == "novel" for c in vocab["classes"])
    out = [VOCAB_HEADER.format(n_novel=n_novel, n_mod=len(mods), mods=", ".join(mods)).rstrip("\n")]
    out.append(f"modalities: {_flow(vocab['modalities'])}")
    out.append("classes:")
    for c in vocab["classes"]:
        out.append(f"  - name: {_q(c['name'])}")
        out.append(f"    synonyms: {_flow(c['synonyms'])}")
        out.append(f"    modalities: {_flow(c['modalities'])}")
        if c["split"] == "novel":
            related, why = NOVEL[c["name"]]
            out.append(f"    split: novel  # {why}; related base: {', '.join(related)}")
        else:
            out.append(f"    split: {c['split']}")
        if c.get("extra"):
            out.append("    extra: true  # not a matrix column")
    return "\n".join(out) + "\n"


def emit_sources(doc: dict) -> str:
    out = [SOURCES_HEADER.rstrip("\n"), "sources:"]
    for name, e in doc["sources"].items():
        if e.get("_note"):
            out.extend(_comment(e["_note"], "  "))
        out.append(f"  {_q(name)}:")
        for key in ("title", "modality", "dims", "format", "licence", "homepage"):
            v = e[key]
            out.append(f"    {key}: {json.dumps(v) if key in ('title', 'licence', 'homepage') else _q(v)}")
        out.append("    presence:")
        for cls, v in e["presence"].items():
            out.append(f"      {_q(cls)}: {v}")
        if "label_names" in e:
            out.append(f"    label_names: {_q(e['label_names'])}  # relative to the source root")
        if "labels" in e:
            out.append("    labels:")
            for k, v in e["labels"].items():
                line = f"      {_q(k)}: {_q(v)}"
                if name == "TotalSegmentorCT":
                    ts_name = TS_ID_TO_NAME[k]
                    line += f"  # {ts_name}" + (f": ignored, {TS_IGNORED_WHY[ts_name]}" if v is None else "")
                out.append(line)
    return "\n".join(out) + "\n"


def _strip_private(obj):
    if isinstance(obj, dict):
        return {k: _strip_private(v) for k, v in obj.items() if not str(k).startswith("_")}
    if isinstance(obj, list):
        return [_strip_private(v) for v in obj]
    return obj


def render(csv_path: Path, ts_labels_path: Path | None) -> tuple[str, str, list[str]]:
    vocab, sources, report = build(csv_path, ts_labels_path)
    vocab_text, sources_text = emit_vocabulary(vocab), emit_sources(sources)
    # the emitted text must load back to exactly the data it was made from
    assert yaml.safe_load(vocab_text) == _strip_private(vocab), "vocabulary.yaml does not round-trip"
    assert yaml.safe_load(sources_text) == _strip_private(sources), "sources.yaml does not round-trip"
    return vocab_text, sources_text, report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="presence matrix CSV")
    ap.add_argument("--ts-labels", type=Path, default=DEFAULT_TS_LABELS, help="TotalSegmentator labels_total.json")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (medrov/catalog)")
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if the files are out of date")
    args = ap.parse_args(argv)

    vocab_text, sources_text, report = render(args.csv, args.ts_labels)
    targets = {args.out / "vocabulary.yaml": vocab_text, args.out / "sources.yaml": sources_text}
    for line in report:
        print(line)
    if args.check:
        stale = [str(p) for p, text in targets.items() if not p.is_file() or p.read_text() != text]
        for p in stale:
            print(f"stale: {p}", file=sys.stderr)
        return 1 if stale else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for path, text in targets.items():
        path.write_text(text)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
