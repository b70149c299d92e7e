"""Re-derive ``DLIB_TEMPLATE_150`` (``fuseface.align.similarity``): where the MTCNN 5 points fall in
dlib's 150 x 150 face chip with padding 0.25.

dlib builds that chip from its own landmarks (``dlib/image_transforms/interpolation.h``,
``get_face_chip_details``): the least-squares similarity mapping the 5 points of
``shape_predictor_5_face_landmarks`` (two corners of each eye, the point under the nose) onto fixed
positions ``(padding + p) / (2 padding + 1) * size`` of a unit mean face. For each photo this script
runs dlib's HOG detector and 5-point shape predictor (dlib-bin, development only), computes that
similarity, maps the photo's MTCNN landmarks (from a ``faces.jsonl`` written by ``fuseface align``)
through it (built from ``dlib.get_face_chip_details``, checked against ``dlib.get_face_chip``), and
averages. It prints the template, the RMS spread of the mapped points around it and
the RMS distance, in chip pixels, between dlib's chip positions of dlib's own landmarks and where our
MTCNN alignment onto the fitted template puts them (how closely our crops reproduce dlib's).
It also checks its transform against ``dlib.get_face_chip`` on the first photo.

    python scripts/fit_dlib_template.py --faces /work/cache/lfw_mtcnn/faces.jsonl \\
        --images ../shared/data/lfw/lfw-deepfunneled --predictor shape_predictor_5_face_landmarks.dat -n 400
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def dlib_chip_transform(chip: object) -> np.ndarray:
    """The 2x3 matrix mapping image pixels to chip pixels of a ``dlib.chip_details``.

    ``extract_image_chip`` maps the chip's pixel grid (0 .. cols-1) onto its rectangle (``left`` ..
    ``right``), rotated by ``angle`` about the rectangle's centre; built here from those fields, it
    reproduces ``dlib.get_face_chip`` to about half a grey level (bilinear rounding)."""
    import cv2

    r = chip.rect  # type: ignore[attr-defined]
    cols, rows = chip.cols, chip.rows  # type: ignore[attr-defined]
    sx = (r.right() - r.left()) / (cols - 1)
    sy = (r.bottom() - r.top()) / (rows - 1)
    a = chip.angle  # type: ignore[attr-defined]
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    lin = rot @ np.diag([sx, sy])
    centre = np.array([(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2])
    off = centre - lin @ np.array([(cols - 1) / 2, (rows - 1) / 2])
    return cv2.invertAffineTransform(np.hstack([lin, off[:, None]]))


def main() -> None:
    import dlib

    from fuseface.align.similarity import transform_points, umeyama, warp_face
    from fuseface.data.images import read_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=Path, required=True, help="faces.jsonl of `fuseface align` (MTCNN landmarks)")
    ap.add_argument("--images", type=Path, required=True, help="folder the jsonl's sources are relative to")
    ap.add_argument("--predictor", type=Path, required=True, help="shape_predictor_5_face_landmarks.dat")
    ap.add_argument("-n", type=int, default=400, help="photos to use (first N with one MTCNN face)")
    ap.add_argument("--out", type=Path, default=None, help="write the result as JSON")
    args = ap.parse_args()

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(args.predictor))
    mapped, dlib_pts, mtcnn_pts, dlib_ts = [], [], [], []
    checked = False
    for line in args.faces.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("status") != "ok" or not rec["faces"]:
            continue
        face = rec["faces"][0]
        img = read_image(args.images / rec["source"], "rgb")
        dets = detector(img, 1)
        if len(dets) == 0:
            continue
        box = np.asarray(face["box"])
        centre = (box[:2] + box[2:]) / 2
        det = min(
            dets, key=lambda d: np.hypot((d.left() + d.right()) / 2 - centre[0], (d.top() + d.bottom()) / 2 - centre[1])
        )
        shape = predictor(img, det)
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], dtype=np.float64)
        t = dlib_chip_transform(dlib.get_face_chip_details(shape, size=150, padding=0.25))
        if not checked:
            ours = warp_face(img, t, 150).astype(np.float64)
            theirs = np.asarray(dlib.get_face_chip(img, shape, size=150, padding=0.25), dtype=np.float64)
            diff = np.abs(ours - theirs).mean()
            print(f"check on {rec['source']}: mean |our warp - dlib.get_face_chip| = {diff:.2f} grey levels")
            checked = True
        lmk = np.asarray(face["landmarks"], dtype=np.float64)
        mapped.append(transform_points(t, lmk))
        dlib_pts.append(pts)
        dlib_ts.append(t)
        mtcnn_pts.append(lmk)
        if len(mapped) >= args.n:
            break
    mapped_arr = np.stack(mapped)
    template = mapped_arr.mean(axis=0)
    spread = float(np.sqrt(((mapped_arr - template) ** 2).sum(-1).mean()))
    errs = []
    for lmk, pts, dlib_t in zip(mtcnn_pts, dlib_pts, dlib_ts, strict=True):
        ours = umeyama(lmk, template)[:2]
        theirs = transform_points(dlib_t, pts)
        errs.append(((transform_points(ours, pts) - theirs) ** 2).sum(-1).mean())
    agreement = float(np.sqrt(np.mean(errs)))
    print(f"photos: {len(mapped_arr)}")
    print("template (x, y), chip 150x150:")
    for row in template:
        print(f"    [{row[0]:.4f}, {row[1]:.4f}],")
    print(f"RMS spread of the mapped MTCNN points around the template: {spread:.2f} px")
    print(f"RMS distance of dlib's landmarks, our alignment vs dlib's chip: {agreement:.2f} px")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {
                    "photos": len(mapped_arr),
                    "template": template.tolist(),
                    "rms_spread_px": spread,
                    "rms_vs_dlib_px": agreement,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
