"""Writers of small synthetic protocol layouts in the official file formats (for tests).

* :func:`write_ijb`: insightface ``IJB_release`` meta files (landmarks + faceness, template/media,
  template pairs, 1:N gallery / probe csv files) plus clustered features in the landmark order.
* :func:`write_tinyface`: ``Testing_Set/*.mat`` (scipy) and the three image folders.
* :func:`write_scface`: mugshot and surveillance folders with SCface file names.
* :func:`write_ijbs`: ``cs6_*`` csv files, galleries and an image list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np


@dataclass
class IJBFixture:
    root: Path
    target: str
    features: np.ndarray  # (N, D) float32, landmark-file order
    flip_features: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    faceness: np.ndarray
    pairs: np.ndarray  # (P, 3) t1 t2 label
    gallery: dict[str, tuple[np.ndarray, np.ndarray]]
    probe: tuple[np.ndarray, np.ndarray]


def write_ijb(
    root: Path, target: str = "IJBC", n_subjects: int = 12, dim: int = 16, seed: int = 0, noise: float = 2.5
) -> IJBFixture:
    """A tiny IJB protocol: each subject has one gallery template (in G1 or G2 alternately) and two
    probe templates; probes of the last subject have no gallery mate in either gallery... (subjects
    alternate galleries, so every probe is mated in exactly one of them)."""
    rng = np.random.default_rng(seed)
    meta = root / target / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    p = target.lower()
    g_names = ("S1", "S2") if target == "IJBB" else ("G1", "G2")
    centres = rng.normal(size=(n_subjects, dim))
    templates, medias, subjects_img = [], [], []
    t_subject: dict[int, int] = {}
    tid = 100
    gallery_t: list[tuple[int, int]] = []
    probe_t: list[tuple[int, int]] = []
    media_id = 5000
    for s in range(n_subjects):
        for role in ("gallery", "probe", "probe"):
            tid += int(rng.integers(1, 4))
            t_subject[tid] = s
            (gallery_t if role == "gallery" else probe_t).append((tid, s))
            for _ in range(int(rng.integers(1, 4))):  # medias
                media_id += int(rng.integers(1, 3))
                for _ in range(int(rng.integers(1, 4))):  # frames
                    templates.append(tid)
                    medias.append(media_id)
                    subjects_img.append(s)
    n = len(templates)
    subj = np.array(subjects_img)
    feats = (centres[subj] + noise * rng.normal(size=(n, dim))) * rng.uniform(2, 20, (n, 1))
    flips = (centres[subj] + noise * rng.normal(size=(n, dim))) * rng.uniform(2, 20, (n, 1))
    faceness = rng.uniform(0.3, 1.0, n).round(3)
    names = [f"{i + 1}.jpg" for i in range(n)]
    lm = rng.uniform(30, 80, (n, 10)).round(3)
    with open(meta / f"{p}_name_5pts_score.txt", "w") as f:
        for i in range(n):
            f.write(" ".join([names[i], *(f"{v:.3f}" for v in lm[i]), f"{faceness[i]:.3f}"]) + "\n")
    with open(meta / f"{p}_face_tid_mid.txt", "w") as f:
        for i in range(n):
            f.write(f"{names[i]} {templates[i]} {medias[i]}\n")
    all_t = sorted(t_subject)
    pairs = []
    for a in range(len(all_t)):
        for b in range(a + 1, len(all_t)):
            if rng.random() < 0.5 or t_subject[all_t[a]] == t_subject[all_t[b]]:
                pairs.append((all_t[a], all_t[b], int(t_subject[all_t[a]] == t_subject[all_t[b]])))
    pairs_arr = np.array(pairs, dtype=np.int64)
    with open(meta / f"{p}_template_pair_label.txt", "w") as f:
        f.writelines(f"{a} {b} {c}\n" for a, b, c in pairs)
    gallery = {}
    for gi, gname in enumerate(g_names):
        rows = [(t, s) for k, (t, s) in enumerate(gallery_t) if k % 2 == gi]
        with open(meta / f"{p}_1N_gallery_{gname}.csv", "w") as f:
            f.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
            for t, s in rows:  # one row per image of the template, as the real files
                for i in np.flatnonzero(np.array(templates) == t):
                    f.write(f"{t},{s + 1},img/{names[i]}\n")
        gallery[gname] = (np.array([t for t, _ in rows]), np.array([s + 1 for _, s in rows]))
    with open(meta / f"{p}_1N_probe_mixed.csv", "w") as f:
        f.write("TEMPLATE_ID,SUBJECT_ID,FILENAME\n")
        for t, s in probe_t:
            f.write(f"{t},{s + 1},frames/{t}.jpg\n")
    probe = (np.array([t for t, _ in probe_t]), np.array([s + 1 for _, s in probe_t]))
    (root / target / "loose_crop").mkdir(exist_ok=True)
    return IJBFixture(
        root,
        target,
        feats.astype(np.float32),
        flips.astype(np.float32),
        np.array(templates),
        np.array(medias),
        faceness.astype(np.float32),
        pairs_arr,
        gallery,
        probe,
    )


def _face(rng: np.random.Generator, size: int = 24) -> np.ndarray:
    return rng.integers(0, 255, (size, size, 3), dtype=np.uint8)


def write_tinyface(root: Path, n_ids: int = 6, seed: int = 0) -> dict[str, list[str]]:
    """Testing_Set with .mat lists: 2 probes and 2 gallery matches per id, 5 distractors."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    test = root / "tinyface" / "Testing_Set"
    for d in ("Probe", "Gallery_Match", "Gallery_Distractor"):
        (test / d).mkdir(parents=True, exist_ok=True)
    probes, matches, distractors = [], [], []
    for i in range(1, n_ids + 1):
        for k in range(2):
            probes.append(f"{i}_{k}.jpg")
            matches.append(f"{i}_{k + 10}.jpg")
    distractors = [f"d_{k}.jpg" for k in range(5)]
    for d, names in (("Probe", probes), ("Gallery_Match", matches), ("Gallery_Distractor", distractors)):
        for n in names:
            cv2.imwrite(str(test / d / n), _face(rng))

    def cell(names):
        return np.array(
            [[np.array([n]), np.array([[int(n.split("_")[0])]])] for n in names],
            dtype=object,
        )

    savemat(test / "probe_img_ID_pairs.mat", {"probe_set": cell(probes)})
    savemat(test / "gallery_match_img_ID_pairs.mat", {"gallery_set": cell(matches)})
    return {"probe": probes, "match": matches, "distractor": sorted(distractors)}


def write_scface(root: Path, n_subjects: int = 4, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    mug = root / "mugshot_frontal_cropped_all"
    mug.mkdir(parents=True, exist_ok=True)
    for s in range(1, n_subjects + 1):
        cv2.imwrite(str(mug / f"{s:03d}_frontal.JPG"), _face(rng))
        for k in (1, 2, 3):
            for cam in ("cam1", "cam2", "cam6"):
                d = root / f"surveillance_cameras_distance_{k}" / cam
                d.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(d / f"{s:03d}_{cam}_{k}.jpg"), _face(rng))


def write_ijbs(root: Path, n_subjects: int = 6, frames: int = 3) -> list[str]:
    """cs6 protocol files; returns the image list (rows of the features)."""
    (root / "galleries").mkdir(parents=True, exist_ok=True)
    meta = ["SUBJECT_ID,FILENAME,x"]
    images: list[str] = []
    s2s_probe, v_probe = ["FILENAME"], ["FILENAME"]
    single = {1: ["T,SUBJECT_ID,FILENAME"], 2: ["T,SUBJECT_ID,FILENAME"]}
    booking = {1: ["T,SUBJECT_ID,FILENAME"], 2: ["T,SUBJECT_ID,FILENAME"]}
    surv = {1: ["T,SUBJECT_ID,FILENAME"], 2: ["T,SUBJECT_ID,FILENAME"]}
    for s in range(1, n_subjects + 1):
        g = 1 if s % 2 else 2
        v1, v2 = f"videos/{100 + s}.mp4", f"videos/{200 + s}.mp4"
        meta += [f"{s},{v1},0", f"{s},{v2},0", f"{s},img/{s}.jpg,0", f"{s},img/{50 + s}.jpg,0"]
        v_probe.append(v1)
        s2s_probe.append(v1)
        single[g].append(f"{s},{s},img/{s}.jpg")
        booking[g] += [f"{s},{s},img/{s}.jpg", f"{s},{s},img/{50 + s}.jpg"]
        surv[g].append(f"{s},{s},{v2}")
        for v in (100 + s, 200 + s):
            images += [f"frames/{s}/videos_{v}_{k}.jpg" for k in range(frames)]
        images += [f"frames/{s}/img_{s}.jpg", f"frames/{s}/img_{50 + s}.jpg"]
    (root / "cs6_metadata.csv").write_text("\n".join(meta) + "\n")
    (root / "cs6_surveillance_to_single-booking_probe.csv").write_text("\n".join(v_probe) + "\n")
    (root / "cs6_surveillance_to_surveillance_probe.csv").write_text("\n".join(s2s_probe) + "\n")
    for g in (1, 2):
        (root / "galleries" / f"cs6_surveillance_to_single_g{g}.csv").write_text("\n".join(single[g]) + "\n")
        (root / "galleries" / f"cs6_surveillance_to_booking_g{g}.csv").write_text("\n".join(booking[g]) + "\n")
        (root / "galleries" / f"cs6_surveillance_to_surveillance_g{g}.csv").write_text("\n".join(surv[g]) + "\n")
    return images


def ijbs_features(images: list[str], dim: int = 8, seed: int = 0, noise: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(100, dim))
    subj = np.array([int(p.split("/")[1]) for p in images])
    return (centres[subj] + noise * rng.normal(size=(len(images), dim))).astype(np.float32)
