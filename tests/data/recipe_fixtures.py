"""Miniature copies of each catalogue source's official download: real folder and file names, real label ids,
tiny arrays (16 x 16 [x 2]). ``BUILDERS[row](root)`` writes one under ``root`` and returns the boxes per class
that converting it with the row's recipe must give.

Volume labels place each id in its own 3 x 3 block spanning both slices (2 boxes per id); 2D labels place each
id once (1 box). The fixtures also hold what the recipe must ignore or report: AppleDouble files, unlabelled
test folders, cases of the other presence row.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

SIZE = 16
BUILDERS: dict[str, Callable[[Path], dict[str, int]]] = {}


def builds(*rows: str):
    def register(fn):
        for row in rows:
            BUILDERS[row] = (lambda root, fn=fn, row=row: fn(root, row)) if fn.__code__.co_argcount == 2 else fn
        return fn

    return register


# ---------------------------------------------------------------- writers


def _block(k: int) -> tuple[slice, slice]:
    r, c = divmod(k, 4)
    return slice(4 * r, 4 * r + 3), slice(4 * c, 4 * c + 3)


def label_volume(ids: list[int], frames: int | None = None) -> np.ndarray:
    lab = np.zeros((SIZE, SIZE, 2), dtype=np.int16)
    for k, idx in enumerate(ids):
        rows, cols = _block(k)
        lab[rows, cols, :] = idx
    return lab


def image_volume(seed: int = 0, shape: tuple[int, ...] = (SIZE, SIZE, 2)) -> np.ndarray:
    return np.random.default_rng(seed).normal(40, 20, shape).astype(np.float32)


def nii(path: Path, array: np.ndarray) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.diag([1.5, 1.5, 3.0, 1.0])), str(path))
    return path


def pair(image: Path, label: Path, ids: list[int], channels: int | None = None) -> None:
    shape = (SIZE, SIZE, 2) if channels is None else (SIZE, SIZE, 2, channels)
    nii(image, image_volume(shape=shape))
    nii(label, label_volume(ids))


def sitk_volume(path: Path, array_xyz: np.ndarray) -> Path:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(array_xyz).transpose(2, 1, 0)))
    image.SetSpacing((1.5, 1.5, 3.0))
    sitk.WriteImage(image, str(path), not path.name.endswith(".mhd"))
    return path


def label_plane(ids: list[int], value: int | None = None) -> np.ndarray:
    lab = np.zeros((SIZE, SIZE), dtype=np.uint8)
    for k, idx in enumerate(ids):
        if idx:
            rows, cols = _block(k)
            lab[rows, cols] = idx if value is None else value
    return lab


def png(path: Path, array: np.ndarray | None = None, quality: int | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        array = np.random.default_rng(1).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    kwargs = {"quality": quality} if quality else {}
    Image.fromarray(np.asarray(array)).save(path, **kwargs)
    return path


def photo(path: Path) -> Path:
    return png(path, None, 95 if path.suffix == ".jpg" else None)


def text(path: Path, content: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def voc(path: Path, filename: str, objects: list[tuple[str, tuple[int, int, int, int]]]) -> Path:
    body = "".join(
        f"<object><name>{name}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for name, (a, b, c, d) in objects
    )
    return text(
        path,
        f"<annotation><filename>{filename}</filename><size><width>{SIZE}</width><height>{SIZE}</height></size>{body}</annotation>",
    )


def mat(path: Path, **arrays: np.ndarray) -> Path:
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, arrays)
    return path


def apple_double(path: Path) -> None:
    """macOS metadata file next to a volume (MSD tars): garbage bytes the recipe must skip."""
    text(path.with_name("._" + path.name), "\x00\x05\x16\x07 not a NIfTI")


# ---------------------------------------------------------------- sources


@builds("AbdomenAtlas")
def _abdomen_atlas(root: Path) -> dict[str, int]:
    case = root / "BDMAP_00000001"
    pair(case / "ct.nii.gz", case / "combined_labels.nii.gz", [5, 7])
    nii(case / "segmentations" / "liver.nii.gz", label_volume([1]))
    nii(root / "BDMAP_00000002" / "ct.nii.gz", image_volume())  # no combined_labels: reported unpaired
    return {"liver": 2, "inferior vena cava": 2}


@builds("AbdomenCT1K")
def _abdomen_ct1k(root: Path) -> dict[str, int]:
    top = root / "AbdomenCT-1K"
    pair(top / "Images" / "Case_00001_0000.nii.gz", top / "Masks" / "Case_00001.nii.gz", [1, 2])
    return {"liver": 2, "kidney": 2}


@builds("ACDC")
def _acdc(root: Path) -> dict[str, int]:
    db = root / "ACDC" / "database"
    p1 = db / "training" / "patient001"
    nii(p1 / "patient001_4d.nii.gz", image_volume(shape=(SIZE, SIZE, 2, 12)))
    text(p1 / "Info.cfg", "ED: 1\nES: 12\nGroup: DCM\nHeight: 184.0\nNbFrame: 30\nWeight: 95.0\n")
    for frame in ("01", "12"):
        pair(p1 / f"patient001_frame{frame}.nii.gz", p1 / f"patient001_frame{frame}_gt.nii.gz", [1, 2, 3])
    p2 = db / "testing" / "patient101"
    pair(p2 / "patient101_frame01.nii.gz", p2 / "patient101_frame01_gt.nii.gz", [1])
    return {"right ventricle endocardium": 6, "left ventricle epicardium": 4, "left ventricle endocardium": 4}


@builds("AMOSF", "AMOSM")
def _amos(root: Path, row: str) -> dict[str, int]:
    top = root / "amos22"
    text(top / "dataset.json", json.dumps({"name": "AMOS", "licence": "CC-BY-SA 4.0"}))
    text(
        top / "labeled_data_meta_0000_0599.csv",
        "amos_id,Patient's Sex,Patient's Age\n1,F,040Y\n2,M,061Y\n3,F,033Y\n507,F,050Y\n",
    )
    pair(top / "imagesTr" / "amos_0001.nii.gz", top / "labelsTr" / "amos_0001.nii.gz", [6, 15])
    pair(top / "imagesTr" / "amos_0002.nii.gz", top / "labelsTr" / "amos_0002.nii.gz", [6, 15])
    pair(top / "imagesTr" / "amos_0507.nii.gz", top / "labelsTr" / "amos_0507.nii.gz", [6])  # MRI: not these rows
    pair(top / "imagesVa" / "amos_0003.nii.gz", top / "labelsVa" / "amos_0003.nii.gz", [1])
    nii(top / "imagesTs" / "amos_0004.nii.gz", image_volume())
    if row == "AMOSF":
        return {"liver": 2, "uterus": 2, "spleen": 2}
    return {"liver": 2, "prostate": 2}


@builds("BCCD")
def _bccd(root: Path) -> dict[str, int]:
    for n, objects in (
        ("00000", [("RBC", (1, 1, 5, 5)), ("RBC", (6, 6, 9, 9)), ("WBC", (2, 8, 8, 15))]),
        ("00001", [("Platelets", (3, 3, 6, 6))]),
    ):
        photo(root / "JPEGImages" / f"BloodImage_{n}.jpg")
        voc(root / "Annotations" / f"BloodImage_{n}.xml", f"BloodImage_{n}.jpg", objects)
    text(root / "ImageSets" / "Main" / "train.txt", "BloodImage_00000\n")
    text(root / "ImageSets" / "Main" / "test.txt", "BloodImage_00001\n")
    return {"red blood cell": 2, "white blood cell": 1, "platelets": 1}


@builds("BHSD")
def _bhsd(root: Path) -> dict[str, int]:
    name = "ID_05331dc6_ID_47213b7e2e.nii.gz"
    pair(root / "imagesTr" / name, root / "labelsTr" / name, [1, 5])
    nii(root / "imagesTs" / "ID_0a1b2c3d_ID_0123456789.nii.gz", image_volume())  # no labelsTs: unpaired
    return {"epidural brain hemorrhage": 2, "subdural brain hemorrhage": 2}


@builds("BOrg")
def _borg(root: Path) -> dict[str, int]:
    proj = root / "data" / "max_projection"
    cats = [{"id": i, "name": n} for i, n in enumerate(["Prophase", "Metaphase", "Anaphase", "Telophase"], start=1)]
    for split, name, anns in (
        ("train", "phase_1_new_v10_frame_02.png", [(1, [1, 1, 5, 5]), (3, [8, 8, 5, 5])]),
        ("val", "phase_2_new_v11_frame_07.png", [(2, [2, 2, 6, 6])]),
    ):
        photo(proj / "images" / split / name)
        doc = {
            "images": [{"id": 1, "file_name": f"images/{split}/{name}", "width": SIZE, "height": SIZE}],
            "annotations": [
                {"id": i, "image_id": 1, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                for i, (c, b) in enumerate(anns)
            ],
            "categories": cats,
        }
        text(proj / f"organoid_coco_{split}.json", json.dumps(doc))
    return {"prophase": 1, "anaphase": 1, "metaphase": 1}


@builds("BUSI")
def _busi(root: Path) -> dict[str, int]:
    top = root / "Dataset_BUSI_with_GT"
    photo(top / "benign" / "benign (1).png")
    png(top / "benign" / "benign (1)_mask.png", label_plane([1], 255))
    png(top / "benign" / "benign (1)_mask_1.png", label_plane([0, 1], 255))  # a second lesion
    photo(top / "malignant" / "malignant (1).png")
    png(top / "malignant" / "malignant (1)_mask.png", label_plane([1], 255))
    photo(top / "normal" / "normal (1).png")
    png(top / "normal" / "normal (1)_mask.png", label_plane([]))
    return {"benign breast tumor": 2, "malignant breast tumor": 1}


@builds("Consep")
def _consep(root: Path) -> dict[str, int]:
    top = root / "CoNSeP"
    inst = np.zeros((SIZE, SIZE), dtype=np.int32)
    inst[0:3, 0:3], inst[0:3, 3:6], inst[8:11, 8:11], inst[12:15, 0:3] = 1, 2, 3, 4  # 1 and 2 touch
    types = np.zeros_like(inst)
    types[inst == 1], types[inst == 2], types[inst == 3], types[inst == 4] = 3, 4, 2, 1
    photo(top / "Train" / "Images" / "train_1.png")
    mat(top / "Train" / "Labels" / "train_1.mat", inst_map=inst, type_map=types)
    photo(top / "Train" / "Overlay" / "train_1.png")
    photo(top / "Test" / "Images" / "test_1.png")
    mat(
        top / "Test" / "Labels" / "test_1.mat",
        inst_map=(inst == 3).astype(np.int32),
        type_map=(inst == 3).astype(np.int32) * 6,
    )
    return {"epithelial": 2, "inflammatory": 1, "fibroblast": 1}


@builds("COVID19")
def _covid(root: Path) -> dict[str, int]:
    images = root / "COVID-19-CT-Seg_20cases"
    masks = root / "Lung_and_Infection_Mask"
    pair(images / "coronacases_org_001.nii.gz", masks / "coronacases_001.nii.gz", [1, 2, 3])
    # not in HU: filtered out by the recipe
    pair(
        images / "radiopaedia_org_covid-19-pneumonia-10_85902_1-dcm.nii.gz",
        masks / "radiopaedia_10_85902_1.nii.gz",
        [1],
    )
    return {"left lung": 2, "right lung": 2, "lung infection": 2}


@builds("CPM17")
def _cpm17(root: Path) -> dict[str, int]:
    top = root / "cpm17"
    inst = label_plane([1, 2, 3]).astype(np.int32)
    for split, arr in (("train", inst), ("test", (inst == 2).astype(np.int32))):
        photo(top / split / "Images" / "image_00.png")
        mat(top / split / "Labels" / "image_00.mat", inst_map=arr)
    return {"nuclei": 4}


@builds("CrossModa")
def _crossmoda(root: Path) -> dict[str, int]:
    src = root / "source_training"
    pair(src / "crossmoda_1_ceT1.nii.gz", src / "crossmoda_1_Label.nii.gz", [1, 2])
    nii(root / "target_training" / "crossmoda_106_hrT2.nii.gz", image_volume())
    return {"vestibular schwannomas": 2, "cochlea": 2}


@builds("CXR8")
def _cxr8(root: Path) -> dict[str, int]:
    for name in ("00000001_000.png", "00000002_000.png"):
        png(root / "images" / name, np.random.default_rng(2).integers(0, 255, (SIZE, SIZE), dtype=np.uint8))
    text(
        root / "BBox_List_2017.csv",
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
        "00000001_000.png,Atelectasis,1.5,2.0,5.0,4.0,,,\n00000001_000.png,Infiltrate,8,8,4,4,,,\n00000002_000.png,Mass,3,3,6,6,,,\n",
    )
    text(root / "train_val_list.txt", "00000001_000.png\n")
    text(root / "test_list.txt", "00000002_000.png\n")
    text(
        root / "Data_Entry_2017.csv",
        "Image Index,Finding Labels,Follow-up #,Patient ID\n00000001_000.png,Atelectasis|Infiltration,0,1\n",
    )
    return {"atelectasis": 1, "infiltrate": 1, "lung mass": 1}


@builds("FLARE22")
def _flare(root: Path) -> dict[str, int]:
    top = root / "FLARE22Train"
    pair(top / "images" / "FLARE22_Tr_0001_0000.nii.gz", top / "labels" / "FLARE22_Tr_0001.nii.gz", [1, 13])
    return {"liver": 2, "left kidney": 2}


@builds("HaNSeg")
def _hanseg(root: Path) -> dict[str, int]:
    case = root / "HaN-Seg" / "set_1" / "case_01"
    sitk_volume(case / "case_01_IMG_CT.nrrd", image_volume())
    sitk_volume(case / "case_01_IMG_MR_T1.nrrd", image_volume(shape=(8, 8, 2)))  # not on the CT grid, not taken
    for k, oar in enumerate(("Brainstem", "Eye_AL", "A_Carotid_L")):
        sitk_volume(case / f"case_01_OAR_{oar}.seg.nrrd", (label_volume([0] * k + [1]) > 0).astype(np.uint8))
    return {"brainstem": 2, "left lens": 2, "left carotid artery": 2}


@builds("IDRID")
def _idrid(root: Path) -> dict[str, int]:
    import tifffile

    top = root / "A. Segmentation"
    for split, n in (("a. Training Set", "01"), ("b. Testing Set", "55")):
        photo(top / "1. Original Images" / split / f"IDRiD_{n}.jpg")
        gt = top / "2. All Segmentation Groundtruths" / split
        for folder, suffix, k in (("5. Optic Disc", "OD", 0), ("1. Microaneurysms", "MA", 1)):
            (gt / folder).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(gt / folder / f"IDRiD_{n}_{suffix}.tif", label_plane([0] * k + [1], 255))
    return {"optic disc": 2}


@builds("KIPA22")
def _kipa(root: Path) -> dict[str, int]:
    pair(root / "train" / "image" / "0.nii.gz", root / "train" / "label" / "0.nii.gz", [2, 4])
    return {"kidney": 2, "kidney tumor": 2}


@builds("KVASIR")
def _kvasir(root: Path) -> dict[str, int]:
    top = root / "Kvasir-SEG"
    photo(top / "images" / "cju0qkwl35piu0993l0dewei2.jpg")
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[4:12, 4:12] = 255
    png(top / "masks" / "cju0qkwl35piu0993l0dewei2.jpg", mask, quality=90)
    text(top / "kavsir_bboxes.json", "{}")
    return {"colon polyp": 1}


@builds("M5HCM", "M5LCM")
def _m5(root: Path, row: str) -> dict[str, int]:
    top = root / "M5-Malaria Dataset"
    for mic, split, objects in (
        ("HCM", "train", [("ring", (1, 1, 5, 5)), ("gametocyte", (6, 6, 12, 12))]),
        ("LCM", "val", [("schizont", (2, 2, 9, 9))]),
    ):
        stem = "0001_1000x"
        voc(top / "Annotations" / mic / split / "1000x" / f"{stem}.xml", f"{stem}.png", objects)
        text(top / "Annotations" / mic / split / f"{split}.txt", "0001\n")
        photo(top / "Images" / mic / "1000x" / f"{stem}.png")
    if row == "M5HCM":
        return {"ring malaria parasite": 1, "gametocyte malaria parasite": 1}
    return {"schizont malaria parasite": 1}


@builds("MMWHSCT", "MMWHSMRI")
def _mmwhs(root: Path, row: str) -> dict[str, int]:
    pair(root / "ct_train" / "ct_train_1001_image.nii.gz", root / "ct_train" / "ct_train_1001_label.nii.gz", [205, 500])
    pair(root / "mr_train" / "mr_train_1001_image.nii.gz", root / "mr_train" / "mr_train_1001_label.nii.gz", [820])
    nii(root / "ct_test" / "ct_test_2001_image.nii.gz", image_volume())
    if row == "MMWHSCT":
        return {"left ventricle epicardium": 2, "left ventricle endocardium": 2}
    return {"aorta": 2}


@builds("MnMs")
def _mnms(root: Path) -> dict[str, int]:
    top = root / "OpenDataset"
    text(
        top / "211230_M&Ms_Dataset_information_diagnosis_opendataset.csv",
        "External code,VendorName,Vendor,Centre,ED,ES\nA0S9V9,Siemens,A,1,0,3\n",
    )
    case = top / "Training" / "Labeled" / "A0S9V9"
    nii(case / "A0S9V9_sa.nii.gz", image_volume(shape=(SIZE, SIZE, 2, 5)))
    gt = np.zeros((SIZE, SIZE, 2, 5), dtype=np.int16)
    gt[..., 0] = label_volume([1, 2, 3])  # ED
    gt[..., 3] = label_volume([1])  # ES
    nii(case / "A0S9V9_sa_gt.nii.gz", gt)
    other = top / "Testing" / "B1C2D3"  # no CSV row: its frames are unknown, reported
    nii(other / "B1C2D3_sa.nii.gz", image_volume(shape=(SIZE, SIZE, 2, 5)))
    nii(other / "B1C2D3_sa_gt.nii.gz", gt)
    return {"left ventricle endocardium": 4, "left ventricle epicardium": 2, "right ventricle endocardium": 2}


_MSD = {
    "MSD_Brain": (
        "Task01_BrainTumour",
        "BRATS_001",
        [1, 2, 3],
        4,
        {"cerebral edema": 2, "non-enhancing brain tumor": 2, "enhancing brain tumor": 2},
    ),
    "MSD_Heart": ("Task02_Heart", "la_003", [1], None, {"left atrium": 2}),
    "MSD_Hippocampus": (
        "Task04_Hippocampus",
        "hippocampus_001",
        [1, 2],
        None,
        {"anterior hippocampus": 2, "posterior hippocampus": 2},
    ),
    "MSD_Prostate": (
        "Task05_Prostate",
        "prostate_00",
        [1, 2],
        2,
        {"prostate peripheral zone": 2, "prostate transitional zone": 2},
    ),
    "MSD_HepaticVessel": (
        "Task08_HepaticVessel",
        "hepaticvessel_001",
        [1, 2],
        None,
        {"hepatic vessel": 2, "hepatic vessel tumor": 2},
    ),
    "MSD_Spleen": ("Task09_Spleen", "spleen_2", [1], None, {"spleen": 2}),
    "MSD_Colon": ("Task10_Colon", "colon_001", [1], None, {"colon cancer primaries": 2}),
}


@builds(*_MSD)
def _msd(root: Path, row: str) -> dict[str, int]:
    task, case, ids, channels, expected = _MSD[row]
    top = root / task
    text(top / "dataset.json", json.dumps({"name": task, "licence": "CC-BY-SA 4.0"}))
    pair(top / "imagesTr" / f"{case}.nii.gz", top / "labelsTr" / f"{case}.nii.gz", ids, channels)
    apple_double(top / "imagesTr" / f"{case}.nii.gz")
    apple_double(top / "labelsTr" / f"{case}.nii.gz")
    nii(top / "imagesTs" / f"{case}9.nii.gz", image_volume())
    return expected


@builds("Polypgen")
def _polypgen(root: Path) -> dict[str, int]:
    top = root / "PolypGen2021_MultiCenterData_v3" / "data_C1"
    photo(top / "images_C1" / "100H0050.jpg")
    mask = np.zeros((SIZE, SIZE), dtype=np.uint8)
    mask[3:11, 5:13] = 255
    png(top / "masks_C1" / "100H0050_mask.jpg", mask, quality=90)
    text(top / "bbox_C1" / "100H0050_mask.txt", "polyp 5 3 13 11\n")
    return {"colon polyp": 1}


@builds("PROMISE")
def _promise(root: Path) -> dict[str, int]:
    part = root / "TrainingData_Part1"
    sitk_volume(part / "Case00.mhd", image_volume())
    sitk_volume(part / "Case00_segmentation.mhd", label_volume([1]).astype(np.uint8))
    return {"prostate": 2}


@builds("TotalSegmentorCT")
def _ts_ct(root: Path) -> dict[str, int]:
    top = root / "Totalsegmentator_dataset_v201"
    text(top / "meta.csv", "image_id;age;gender;split\ns0000;60;m;val\n")
    nii(top / "s0000" / "ct.nii.gz", image_volume())
    for k, name in enumerate(("liver", "vertebrae_L1", "vertebrae_L2", "small_bowel")):
        nii(top / "s0000" / "segmentations" / f"{name}.nii.gz", (label_volume([0] * k + [1]) > 0).astype(np.uint8))
    return {"liver": 2, "vertebra": 4}


@builds("TotalSegmentorMRI")
def _ts_mri(root: Path) -> dict[str, int]:
    subject = root / "TotalsegmentatorMRI_dataset_v100" / "s0001"
    nii(subject / "mri.nii.gz", image_volume())
    for k, name in enumerate(("liver", "fibula", "brain")):
        nii(subject / "segmentations" / f"{name}.nii.gz", (label_volume([0] * k + [1]) > 0).astype(np.uint8))
    return {"liver": 2, "fibula": 2}


@builds("TNBC")
def _tnbc(root: Path) -> dict[str, int]:
    top = root / "TNBC_NucleiSegmentation"
    photo(top / "Slide_01" / "01_1.png")
    png(top / "GT_01" / "01_1.png", label_plane([1, 0, 1], 255))
    text(top / "__MACOSX" / "Slide_01" / "._01_1.png", "\x00\x05\x16\x07")
    return {"nuclei": 2}


@builds("ISIC")
def _isic(root: Path) -> dict[str, int]:
    photo(root / "ISIC2018_Task1-2_Training_Input" / "ISIC_0000000.jpg")
    png(root / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000000_segmentation.png", label_plane([1], 255))
    text(root / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt", "CC BY-NC")
    photo(root / "ISBI2016_ISIC_Part1_Test_Data" / "ISIC_0000003.jpg")
    png(root / "ISBI2016_ISIC_Part1_Test_GroundTruth" / "ISIC_0000003_Segmentation.png", label_plane([1], 255))
    return {"melanoma skin cancer": 2}
