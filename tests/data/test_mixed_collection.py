"""A mixed 2D collection made here: classes outside the catalogue and a new modality added through the sources
file's ``vocabulary:`` block, per-image presence (each image annotates its own subset of classes), converted,
validated and read back the way training and evaluation read it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from medrov.catalog import dataset_vocabulary, load_vocabulary
from medrov.config import load_params
from medrov.data import convert
from medrov.data.presence import IMAGE_PRESENCE, presence_rows, read_presence
from medrov.prompts import prompt_name
from tests.conftest import ROOT

SIZE = 64
# image -> the class tokens it has a mask file for (its own subset)
ABDOMEN = {"case_a": ["liver", "kidney"], "case_b": ["kidney", "adrenal"], "case_c": ["liver"]}
RETINA = {"scan_1": ["fluid"], "scan_2": ["fluid", "cup"]}
SOURCES = """
vocabulary:
  modalities:
    oct: {normalisation: photo}
  classes:
    - name: adrenal gland
      synonyms: [suprarenal gland]
      modalities: [ct, mri]
      split: base
    - name: retinal fluid
      modalities: [oct]
      split: novel
    - name: optic cup
      modalities: [oct, fundoscopy]
sources:
  - name: MixedAbdomen
    root: abdomen
    modality: ct
    format: mask2d
    images: images/*.png
    labels: masks/{stem}_{class}.png
    classes: [liver, kidney, adrenal]
    label_map: {adrenal: adrenal gland}
    presence: per_image
  - name: RetinaOCT
    root: retina
    modality: oct
    format: mask2d
    images: images/*.png
    labels: masks/{stem}_{class}.png
    classes: [fluid, cup]
    label_map: {fluid: retinal fluid, cup: optic cup}
    presence: per_image
"""


def _write_collection(root, images: dict[str, list[str]], rgb: bool = False) -> None:
    rng = np.random.default_rng(len(images))
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for stem, tokens in images.items():
        shape = (SIZE, SIZE, 3) if rgb else (SIZE, SIZE)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        for k, token in enumerate(tokens):
            mask = np.zeros((SIZE, SIZE), np.uint8)
            mask[8 + 10 * k : 18 + 10 * k, 8 + 12 * k : 22 + 12 * k] = 255
            Image.fromarray(mask).save(root / "masks" / f"{stem}_{token}.png")


def _stem(manifest: pd.DataFrame) -> pd.Series:
    """Index the manifest by image stem (item ids carry the folder: ``images__case_a``)."""
    return manifest["item_id"].str.rsplit("__", n=1).str[-1]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mixed")
    _write_collection(tmp / "abdomen", ABDOMEN)
    # an empty mask: kidney was annotated in case_c and is absent there (M=1, not "unlabelled")
    Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(tmp / "abdomen" / "masks" / "case_c_kidney.png")
    _write_collection(tmp / "retina", RETINA, rgb=True)
    (tmp / "sources.yaml").write_text(SOURCES)
    params = load_params(ROOT / "params.yaml", ["data.workers=1"])
    summary = convert.run(params.data, tmp / "sources.yaml", tmp / "omnis", progress=False)
    return summary, tmp / "omnis", params


def test_every_image_converts_and_the_manifest_holds_its_own_class_set(converted):
    summary, out, _ = converted
    assert summary["converted"] == summary["total"] == 5 and summary["quarantined"] == 0
    assert summary["vocabulary"] == {"classes": 160, "user_classes": 3}
    manifest = pd.read_parquet(out / "manifest.parquet").pipe(lambda m: m.set_index(_stem(m)))
    assert manifest.loc["case_a", "annotated"] == "liver|kidney"  # catalogue order: liver before kidney
    assert manifest.loc["case_b", "annotated"] == "kidney|adrenal gland"
    assert manifest.loc["case_c", "annotated"] == "liver|kidney"  # its kidney mask is empty
    assert manifest.loc["scan_2", "annotated"] == "retinal fluid|optic cup"
    assert manifest.loc["scan_1", "modality"] == "oct"
    # one presence row per distinct (source, class set), named after its source: case_a and case_c share one
    assert manifest["presence_row"].to_dict() == {
        "case_a": "MixedAbdomen@1",
        "case_b": "MixedAbdomen@2",
        "case_c": "MixedAbdomen@1",
        "scan_1": "RetinaOCT@1",
        "scan_2": "RetinaOCT@2",
    }
    boxes = pd.read_parquet(out / "boxes.parquet")
    assert set(boxes["class_name"]) == {"liver", "kidney", "adrenal gland", "retinal fluid", "optic cup"}
    assert set(boxes.loc[boxes["class_name"] == "adrenal gland", "class_id"]) == {157}


def test_user_classes_are_appended_and_recorded_in_the_dataset_file(converted):
    _, out, _ = converted
    spec = yaml.safe_load((out / "omnis.yaml").read_text())
    catalogue = load_vocabulary()
    assert spec["nc"] == 160
    assert [spec["names"][i] for i in range(len(catalogue))] == [c.prompt for c in catalogue.classes]
    assert spec["names"][157] == "adrenal gland/suprarenal gland"
    assert spec["names"][158] == "retinal fluid" and 158 in spec["novel"] and 159 in spec["base"]
    assert spec["vocabulary"]["modalities"] == {"oct": {"normalisation": "photo"}}
    vocab = dataset_vocabulary(out)
    assert len(vocab) == 160 and vocab.modalities["oct"] == "photo" and vocab["suprarenal gland"].id == 157
    # the prompt list training embeds (one canonical name per class) holds the user classes
    prompts = [prompt_name(n) for n in spec["names"].values()]
    assert prompts[157:] == ["adrenal gland", "retinal fluid", "optic cup"]


def test_presence_rows_per_image(converted):
    _, out, _ = converted
    spec = yaml.safe_load((out / "omnis.yaml").read_text())
    names = [spec["names"][i] for i in range(spec["nc"])]
    columns = [prompt_name(n) for n in names]
    liver, kidney, adrenal, fluid, cup = (
        columns.index(c) for c in ("liver", "kidney", "adrenal gland", "retinal fluid", "optic cup")
    )
    source_rows = read_presence(out / "presence.csv")
    # the source row is the union of its images' classes
    assert source_rows.loc["MixedAbdomen", ["liver", "kidney", "adrenal gland"]].tolist() == [1, 1, 1]
    assert list(read_presence(out / IMAGE_PRESENCE).columns) == list(source_rows.columns)

    rows = presence_rows(out, names)
    manifest = pd.read_parquet(out / "manifest.parquet").pipe(lambda m: m.set_index(_stem(m)))
    b = rows.matrix[rows.image_rel[manifest.loc["case_b", "image"]]]
    # case_b has kidney and adrenal masks only: its liver may be there unlabelled (0), OCT classes cannot (-1)
    assert (b[kidney], b[adrenal], b[liver], b[fluid], b[cup]) == (1, 1, 0, -1, -1)
    a = rows.matrix[rows.image_rel[manifest.loc["case_a", "image"]]]
    assert (a[liver], a[kidney], a[adrenal]) == (1, 1, 0)
    scan_1 = rows.matrix[rows.image_rel[manifest.loc["scan_1", "image"]]]
    assert (scan_1[fluid], scan_1[cup], scan_1[liver]) == (1, 0, -1)
    assert rows.sources[rows.image_rel[manifest.loc["scan_1", "image"]]] == "RetinaOCT"
    assert rows.annotated(manifest.loc["case_b", "image"]) == {kidney, adrenal}
    # training looks images up by resolved path (the mosaic tiles carry that row to the sampler and the rule)
    assert (
        rows.image_row[str((out / manifest.loc["case_b", "image"]).resolve())]
        == rows.image_rel[manifest.loc["case_b", "image"]]
    )


def test_the_dataset_card_lists_the_added_classes_and_modalities(converted, tmp_path):
    from medrov.data import report

    _, out, _ = converted
    card = report.run(out, tmp_path / "card").read_text()
    novel = len(load_vocabulary().novel) + 1  # the catalogue's novel classes and retinal fluid
    assert f"Vocabulary: 160 classes, {novel} novel." in card
    assert "adrenal gland (ct, mri; base)" in card and "retinal fluid (oct; novel)" in card
    assert "oct (normalised: photo)" in card


def test_the_dataset_with_user_classes_and_modality_passes_validation(converted):
    from medrov.data import validate

    _, out, params = converted
    summary = validate.run(params.validate_, data_dir=out)
    failed = [r for r in summary["results"] if not r["success"] and r["severity"] == "error"]
    assert summary["success"], failed


def test_presence_group_shares_the_union_of_a_groups_classes(tmp_path):
    # two slices of one patient (p1) annotate different organs: the patient's group annotates both
    _write_collection(tmp_path / "abdomen", {"p1_s1": ["liver"], "p1_s2": ["kidney"], "p2_s1": ["kidney"]})
    text = SOURCES.split("  - name: RetinaOCT")[0].replace(
        "presence: per_image", "presence: per_image\n    presence_group: '^images/(p\\d+)_'"
    )
    (tmp_path / "sources.yaml").write_text(text)
    params = load_params(ROOT / "params.yaml", ["data.workers=1"])
    convert.run(params.data, tmp_path / "sources.yaml", tmp_path / "omnis", progress=False)
    manifest = pd.read_parquet(tmp_path / "omnis" / "manifest.parquet").pipe(lambda m: m.set_index(_stem(m)))
    assert manifest.loc["p1_s1", "annotated"] == manifest.loc["p1_s2", "annotated"] == "liver|kidney"
    assert manifest.loc["p2_s1", "annotated"] == "kidney"
    assert manifest.loc["p1_s1", "presence_row"] == manifest.loc["p1_s2", "presence_row"]


def test_a_user_volume_modality_is_normalised_like_the_kind_it_names(tmp_path):
    import nibabel as nib

    # thirds at -1000, 50 and 1000 HU: the window [-100, 100] maps 50 to 191, a percentile scale would give 134
    image = np.full((12, 12, 3), -1000, np.int16)
    image[4:8], image[8:] = 50, 1000
    label = np.zeros((12, 12, 3), np.uint8)
    label[2:10, 2:10] = 1
    (tmp_path / "cbct").mkdir()
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "cbct" / "scan.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "cbct" / "scan_seg.nii.gz")
    (tmp_path / "sources.yaml").write_text(
        """
vocabulary:
  modalities: {cbct: hu_window}
sources:
  - name: DentalCBCT
    root: cbct
    modality: cbct
    format: volume
    cases: [{image: scan.nii.gz, label: scan_seg.nii.gz}]
    label_map: {1: liver}
    ct_window: [-100, 100]
"""
    )
    params = load_params(ROOT / "params.yaml", ["data.workers=1"])
    summary = convert.run(params.data, tmp_path / "sources.yaml", tmp_path / "omnis", progress=False)
    assert summary["converted"] == 1 and summary["images"] == 3
    manifest = pd.read_parquet(tmp_path / "omnis" / "manifest.parquet")
    assert set(manifest["modality"]) == {"cbct"}
    pixels = np.asarray(Image.open(tmp_path / "omnis" / manifest["image"].iloc[0]))
    assert set(np.unique(pixels).tolist()) == {0, 191, 255}


def test_one_collection_with_every_kind_of_mask_accounts_for_every_file(tmp_path):
    """Issue 17's collection in one piece: user classes and a new modality, per-image presence, two mask classes
    mapped to one class, a JPEG-compressed mask and a mask class not listed. Every mask file is boxed or has a
    quarantine row with its reason, and each image's presence row is its own."""
    import io

    rng = np.random.default_rng(7)
    abdomen, retina = tmp_path / "abdomen", tmp_path / "retina"
    for root in (abdomen, retina):
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()

    def rect(r0, r1, c0, c1):
        m = np.zeros((SIZE, SIZE), np.uint8)
        m[r0:r1, c0:c1] = 255
        return m

    def save(path, array):
        Image.fromarray(array).save(path)
        return path

    buffer = io.BytesIO()
    Image.fromarray(rect(10, 30, 10, 40)).save(buffer, format="JPEG", quality=70)
    jpeg = np.asarray(Image.open(buffer)).copy()
    assert len(np.unique(jpeg)) > 2  # really not binary
    for stem in ("p1", "p2", "p3"):
        save(abdomen / "images" / f"{stem}.png", rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8))
    save(retina / "images" / "o1.png", rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8))
    masks = {
        "p1_liver": save(abdomen / "masks" / "p1_liver.png", jpeg),  # JPEG-compressed
        "p1_lkid": save(abdomen / "masks" / "p1_lkid.png", rect(40, 50, 5, 15)),  # two classes mapped to kidney
        "p1_rkid": save(abdomen / "masks" / "p1_rkid.png", rect(40, 52, 12, 20)),
        "p2_adrenal": save(abdomen / "masks" / "p2_adrenal.png", rect(5, 12, 40, 50)),  # a user class
        "p2_marker": save(abdomen / "masks" / "p2_marker.png", rect(0, 5, 0, 5)),  # listed nowhere
        "p3_liver": save(abdomen / "masks" / "p3_liver.png", rect(20, 40, 20, 40)),
        "o1_fluid": save(retina / "masks" / "o1_fluid.png", rect(30, 40, 30, 44)),  # a user class, OCT
    }
    (tmp_path / "sources.yaml").write_text(
        """
vocabulary:
  modalities:
    oct: {normalisation: photo}
  classes:
    - {name: adrenal gland, modalities: [ct], split: base}
    - {name: retinal fluid, modalities: [oct], split: base}
sources:
  - name: Abdomen
    root: abdomen
    modality: ct
    format: mask2d
    images: images/*.png
    labels: masks/{stem}_{class}.png
    label_map: {lkid: kidney, rkid: kidney, adrenal: adrenal gland}
    presence: per_image
  - name: Retina
    root: retina
    modality: oct
    format: mask2d
    images: images/*.png
    labels: masks/{stem}_{class}.png
    label_map: {fluid: retinal fluid}
    presence: per_image
"""
    )
    params = load_params(ROOT / "params.yaml", ["data.workers=1"])
    summary = convert.run(params.data, tmp_path / "sources.yaml", tmp_path / "omnis", progress=False)
    out = tmp_path / "omnis"
    boxes = pd.read_parquet(out / "boxes.parquet")
    manifest = pd.read_parquet(out / "manifest.parquet")
    quarantine = pd.read_csv(out / "quarantine.csv", keep_default_na=False, dtype=str)
    stems = _stem(manifest)

    def classes_of(stem):
        image = manifest.loc[stems == stem, "image"].iloc[0]
        return sorted(prompt_name(c) for c in boxes.loc[boxes["image"] == image, "class_name"])

    assert classes_of("p1") == ["kidney", "liver"]  # the two kidney masks merged: one box
    assert classes_of("p2") == ["adrenal gland"]
    assert classes_of("p3") == ["liver"]
    assert classes_of("o1") == ["retinal fluid"]
    p1 = manifest.loc[stems == "p1", "image"].iloc[0]
    liver = boxes[(boxes["image"] == p1) & (boxes["class_name"].map(prompt_name) == "liver")]
    assert len(liver) == 1  # the JPEG mask gives the clean rectangle's box, no speckle boxes
    x0, y0, x1, y1 = liver[["x0", "y0", "x1", "y1"]].to_numpy(float)[0]
    assert np.allclose([x0, y0, x1, y1], [10, 10, 40, 30], atol=1.5)  # pixels: the rectangle the JPEG blurred
    marker = quarantine[quarantine["input"] == str(masks["p2_marker"])]
    assert len(marker) == 1 and "marker" in marker["reason"].iloc[0]
    boxed = {k for k in masks if k != "p2_marker"}
    for key in boxed:
        assert not (quarantine["input"] == str(masks[key])).any(), key
    assert summary["sources"]["Abdomen"]["masks_merged"] >= 2 and summary["masks_binarised"] >= 1
    rows = presence_rows(out)
    names = [prompt_name(n) for n in read_presence(out / "presence.csv").columns]
    for stem, has, lacks in (("p3", "liver", "kidney"), ("p2", "adrenal gland", "liver")):
        image = manifest.loc[stems == stem, "image"].iloc[0]
        row = rows.matrix[rows.image_rel[str(image)]]
        assert row[names.index(has)] == 1 and row[names.index(lacks)] == 0, (stem, has, lacks)
