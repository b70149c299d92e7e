"""Video: decoding with damage, tracking, streamed per-track fusion, clustering, the command.

The synthetic videos are built in ``tmp_path`` from LFW photos (``shared_data``) and kept tiny
(a few dozen 200x120 frames) so each test runs in seconds; the model is a small random-weight
IResNet, which is enough for everything but identities (those need the real model).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fuseface.errors import DataError

PEOPLE = ("Tony_Blair", "Colin_Powell", "Gerhard_Schroeder")


@pytest.fixture(scope="module")
def tiny_model():
    import fuseface
    from fuseface.infer.embedder import FaceModel
    from fuseface.infer.model_file import ModelMeta

    torch.manual_seed(0)
    net = fuseface.create_backbone("ir_demo", input_size=48, num_features=64)
    return FaceModel(net, ModelMeta(arch="ir_demo", arch_kwargs={"input_size": 48, "num_features": 64}, input_size=48))


def _photos(shared_data: Path, index: int = 1) -> list[tuple[str, np.ndarray]]:
    from fuseface.align.pipeline import read_photo

    root = shared_data / "lfw" / "lfw-deepfunneled"
    return [(n, read_photo(root / n / f"{n}_{index:04d}.jpg")) for n in PEOPLE]


@pytest.fixture(scope="module")
def synthetic_video(tmp_path_factory, shared_data):
    from fuseface.video.synthetic import make_synthetic_video

    path = tmp_path_factory.mktemp("video") / "people.avi"
    truth = make_synthetic_video(path, _photos(shared_data), frames_per_person=12, size=(200, 120), face_side=64)
    return path, truth


def _tiny_avi(path: Path, frames: int = 30) -> Path:
    import cv2

    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(frames):
        writer.write(cv2.GaussianBlur(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), (5, 5), 0))
    writer.release()
    return path


# -- decode ------------------------------------------------------------------------------------


def test_stride_yields_every_nth_frame(tmp_path):
    from fuseface.video.decode import VideoReader

    reader = VideoReader(_tiny_avi(tmp_path / "a.avi"), stride=4)
    assert [f.index for f in reader] == list(range(0, 30, 4))
    assert reader.damage is None and reader.frame_count == 30


def test_truncated_video_warns_with_file_and_frame_and_keeps_earlier_frames(tmp_path):
    from fuseface.video.decode import VideoDamageWarning, VideoDecodeError, VideoReader

    full = _tiny_avi(tmp_path / "a.avi")
    cut = tmp_path / "cut.avi"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.warns(VideoDamageWarning, match=r"cut\.avi: decoding stopped at frame \d+ of 30"):
        frames = list(VideoReader(cut))
    assert 0 < len(frames) < 30
    assert [f.index for f in frames] == list(range(len(frames)))
    # the frames before the damage are the same pixels as in the intact file (the one the cut
    # falls into may be partly decoded)
    intact = list(VideoReader(full))
    for got, want in zip(frames[:-1], intact, strict=False):
        np.testing.assert_array_equal(got.image, want.image)
    with pytest.raises(VideoDecodeError, match=r"cut\.avi: decoding stopped at frame"):
        list(VideoReader(cut, on_damage="raise"))


def test_unreadable_video_is_a_clear_error(tmp_path):
    from fuseface.video.decode import VideoReader

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(DataError, match=r"bad\.mp4: cannot open as a video"):
        VideoReader(bad)
    with pytest.raises(DataError, match="not found"):
        VideoReader(tmp_path / "missing.mp4")


# -- tracker -----------------------------------------------------------------------------------


def test_tracker_keeps_identities_when_faces_cross_and_ends_after_gap():
    from fuseface.video.track import Tracker

    a, b = np.eye(4)[0], np.eye(4)[1]
    tracker = Tracker(max_gap=3, min_iou=0.0, min_cosine=0.5)
    ids_seen = []
    for t in range(10):  # two faces moving towards each other; they overlap at t = 4..5
        xa, xb = 10 + 8 * t, 90 - 8 * t
        boxes = np.array([[xb, 0, xb + 30, 30], [xa, 0, xa + 30, 30]], float)  # detection order swapped
        ids, ended = tracker.step(t, boxes, np.stack([b, a]))
        ids_seen.append(ids)
        assert ended == []
    assert all(ids == ids_seen[0] for ids in ids_seen)  # no swap despite crossing
    _, ended = tracker.step(12, np.zeros((0, 4)), np.zeros((0, 4)))
    assert ended == []  # last seen at 9: a gap of 3 is allowed
    _, ended = tracker.step(13, np.zeros((0, 4)), np.zeros((0, 4)))
    assert sorted(ended) == sorted(ids_seen[0]) and not tracker.live


def test_tracker_gap_boundary():
    from fuseface.video.track import Tracker

    tracker = Tracker(max_gap=3, min_cosine=None)
    box = np.array([[0, 0, 20, 20]], float)
    (tid,), _ = tracker.step(0, box, np.ones((1, 2)))
    (same,), ended = tracker.step(3, box, np.ones((1, 2)))  # gap 3: still alive
    assert same == tid and ended == []
    (new,), ended = tracker.step(7, box, np.ones((1, 2)))  # gap 4: ended, a new track starts
    assert ended == [tid] and new != tid


# -- streamed fusion ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["average", "norm_weighted"])
def test_pooling_stream_equals_one_shot(method):
    from fuseface.nn.fusion import fuse_features
    from fuseface.video.fuse import TrackStream

    feats = np.random.default_rng(1).normal(size=(37, 16)).astype(np.float32) * np.linspace(0.5, 3, 37)[:, None]
    stream = TrackStream(method, keep_best=3)
    for i, f in enumerate(feats):
        stream.add(i, [0, 0, 1, 1], 1.0, f, crop=np.zeros((4, 4, 3), np.uint8))
    np.testing.assert_allclose(stream.template(), fuse_features(feats, method), atol=1e-6)
    w = stream.weights()
    assert w.sum() == pytest.approx(1.0)
    if method == "norm_weighted":  # the template is the weighted mean of the unit features
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        rebuilt = (w[:, None] * unit).sum(0)
        np.testing.assert_allclose(rebuilt / np.linalg.norm(rebuilt), stream.template(), atol=1e-6)
    # the best frames are the highest-norm ones, best first
    norms = np.linalg.norm(feats, axis=1)
    assert [f for f, _, _ in stream.best_frames()] == list(np.argsort(-norms)[:3])


def _random_caface(confidence_dim: int = 64):
    from fuseface.nn.fusion.caface import CAFace

    torch.manual_seed(0)
    # cfc not at zero, so the style input (and the assignment) depends on the styles
    return CAFace(feature_dim=64, confidence_dim=confidence_dim, cfc_init_zero=False).eval()


@pytest.mark.parametrize("n", [10, 48])
def test_caface_stream_equals_one_shot(n):
    from fuseface.video.fuse import TrackStream

    module = _random_caface()
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(n, 64)).astype(np.float32) * rng.uniform(0.2, 3, (n, 1)).astype(np.float32)
    styles = rng.normal(size=(n, 384, 2)).astype(np.float32)
    stream = TrackStream("caface", caface=module, chunk_size=16)
    for i in range(n):
        stream.add(i, [0, 0, 1, 1], 1.0, feats[i], style=styles[i])
        if i == 20:
            stream.template()  # reading mid-way must not change the result
    expected = module.fuse(feats, styles, chunk_size=16)  # n = 10 < 16, 48 = 3 x 16: same chunks
    np.testing.assert_allclose(stream.template(), expected, atol=1e-5)


def test_caface_weights_rebuild_the_template():
    """With one weight per cluster (confidence_dim=1) the per-frame weights are exact."""
    from fuseface.video.fuse import TrackStream

    module = _random_caface(confidence_dim=1)
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(40, 64)).astype(np.float32)
    styles = rng.normal(size=(40, 384, 2)).astype(np.float32)
    stream = TrackStream("caface", caface=module, chunk_size=16)
    for i in range(40):
        stream.add(i, [0, 0, 1, 1], 1.0, feats[i], style=styles[i])
    w = stream.weights()
    unit = feats / (np.linalg.norm(feats, axis=1, keepdims=True) + 1e-5)
    rebuilt = (w[:, None] * unit).sum(0)
    np.testing.assert_allclose(rebuilt / np.linalg.norm(rebuilt), stream.template(), atol=1e-4)
    assert w.sum() == pytest.approx(1.0) and (w > 0).all()


# -- clustering --------------------------------------------------------------------------------


def test_cluster_templates_groups_people_and_keeps_simultaneous_tracks_apart():
    from fuseface.video.cluster import cluster_templates

    rng = np.random.default_rng(4)
    centres = rng.normal(size=(2, 32))
    temps = np.stack([centres[i] + 0.1 * rng.normal(size=32) for i in (0, 1, 0, 1)])
    assert list(cluster_templates(temps, 0.5)) == [0, 1, 0, 1]
    # tracks 0 and 2 share frame 7: never the same person, even with identical templates; tracks
    # 0 and 1 overlap in span but share no frame (a split track): merged
    same = np.stack([centres[0], centres[0], centres[0]])
    frames = [[0, 2, 4, 7], [3, 5, 20], [7, 8]]
    labels = cluster_templates(same, 0.5, frames)
    assert labels[0] != labels[2] and labels[0] == labels[1]


# -- whole videos ------------------------------------------------------------------------------


def test_synthetic_video_gives_one_track_per_person(synthetic_video, tiny_model):
    from fuseface.video.pipeline import VideoOptions, process_video

    path, truth = synthetic_video
    result = process_video(path, tiny_model, VideoOptions(min_cosine=-1.0))
    assert len(result.tracks) == len(truth)
    for appearance in truth:  # each person's segment is covered by exactly one track
        covering = [t for t in result.tracks if appearance.start <= np.median(t.frames) <= appearance.end]
        lane = [t for t in covering if (np.mean([b[0] for b in t.boxes]) > 100) == bool(appearance.lane)]
        assert len(lane) == 1
        track = lane[0]
        assert track.frames[0] >= appearance.start and track.frames[-1] <= appearance.end
        assert len(track) >= 0.75 * (appearance.end - appearance.start + 1)


def test_truncated_synthetic_video_uses_earlier_frames(synthetic_video, tiny_model, tmp_path):
    from fuseface.video.decode import VideoDamageWarning
    from fuseface.video.pipeline import VideoOptions, process_video

    path, truth = synthetic_video
    cut = tmp_path / "cut.avi"
    cut.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.45)])
    with pytest.warns(VideoDamageWarning, match=r"cut\.avi: decoding stopped at frame"):
        result = process_video(cut, tiny_model, VideoOptions(min_cosine=-1.0))
    assert result.damage is not None and "cut.avi" in result.damage
    assert 12 <= result.frames_read < truth[-1].end
    assert len(result.tracks) >= 2  # the first pair of people, seen before the cut
    assert all(t.frames[-1] < result.frames_read for t in result.tracks)


def test_stride_processes_fewer_frames_same_tracks(synthetic_video, tiny_model):
    from fuseface.video.pipeline import VideoOptions, process_video

    path, truth = synthetic_video
    result = process_video(path, tiny_model, VideoOptions(stride=3, min_cosine=-1.0))
    assert all(f % 3 == 0 for t in result.tracks for f in t.frames)
    assert len(result.tracks) == len(truth)


def test_video_command_writes_outputs(synthetic_video, tiny_model, tmp_path):
    import json

    from typer.testing import CliRunner

    from fuseface.cli.main import build_app
    from fuseface.infer.model_file import save_model

    path, _ = synthetic_video
    model_file = save_model(tmp_path / "m.safetensors", tiny_model.net, tiny_model.meta)
    out = tmp_path / "out"
    res = CliRunner().invoke(build_app(), ["video", str(path), "--out", str(out), "-m", str(model_file), "--plot"])
    assert res.exit_code == 0, res.output
    tracks = sorted((out / "tracks").glob("track_*.json"))
    data = np.load(out / "templates.npz")
    assert len(tracks) == len(data["templates"]) >= 1
    record = json.loads(tracks[0].read_text())
    assert {"frame", "box", "quality", "weight"} <= set(record["frames"][0])
    assert sum(f["weight"] for f in record["frames"]) == pytest.approx(1.0, abs=1e-3)
    np.testing.assert_allclose(np.linalg.norm(data["templates"], axis=1), 1.0, atol=1e-5)
    assert (out / "contact_sheet.png").stat().st_size > 0 and (out / "reference_plot.png").is_file()
    plot = json.loads((out / "reference_plot.json").read_text())
    assert set(plot["fused_cosine"]) == {"average", "norm_weighted"}


def test_video_command_missing_file_exits_2(tmp_path, tiny_model):
    from fuseface.cli.main import main
    from fuseface.infer.model_file import save_model

    model_file = save_model(tmp_path / "m.safetensors", tiny_model.net, tiny_model.meta)
    with pytest.raises(SystemExit) as exc:
        main(["video", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o"), "-m", str(model_file)])
    assert exc.value.code == 2


def test_caface_clip_gives_one_face_track(shared_data, tiny_model):
    """The 120x66 CAFace clip: its 15-17 px face is found and followed as one track."""
    from fuseface.video.pipeline import VideoOptions, process_video

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the clip is intact: no damage warning
        result = process_video(shared_data / "video" / "probe.mp4", tiny_model, VideoOptions(stride=10, max_gap=60))
    assert result.frames_read == 79
    longest = max(result.tracks, key=len)
    assert len(longest) >= 0.9 * result.frames_read
    sides = [b[2] - b[0] for b in longest.boxes]
    assert 12 <= np.median(sides) <= 20


def test_synthetic_video_identities_with_real_model(shared_data, real_model, tmp_path):
    """Enrolled people are recognised: each track gets the right name from a gallery of *other*
    photos of them; a person not enrolled stays unknown (open set)."""
    import shutil

    from fuseface.video.identify import PhotoGallery
    from fuseface.video.pipeline import VideoOptions, process_video
    from fuseface.video.synthetic import make_synthetic_video

    path = tmp_path / "people.avi"
    # 40-55 px faces: the 128-d dlib model separates these three people from there on
    truth = make_synthetic_video(path, _photos(shared_data), frames_per_person=10, size=(320, 240), face_side=110)
    root = shared_data / "lfw" / "lfw-deepfunneled"
    for name in PEOPLE[:2]:  # the third person is not enrolled
        (tmp_path / "gallery" / name).mkdir(parents=True)
        for k in (2, 3):
            shutil.copy(root / name / f"{name}_{k:04d}.jpg", tmp_path / "gallery" / name)
    gallery = PhotoGallery.from_folder(tmp_path / "gallery", real_model)
    # Templates of many frames sit closer to each other than single photos do, so the model's
    # photo-pair threshold (0.91, calibrated on LFW pairs) merges two of these people's tracks;
    # grouping templates uses a stricter cosine here.
    result = process_video(path, real_model, VideoOptions(stride=2, threshold=0.93), gallery=gallery)
    assert len(result.tracks) == len(truth)
    for appearance in truth:
        (track,) = [
            t
            for t in result.tracks
            if appearance.start <= np.median(t.frames) <= appearance.end
            and (np.mean([b[0] for b in t.boxes]) > 100) == bool(appearance.lane)
        ]
        expected = appearance.name if appearance.name in PEOPLE[:2] else None
        assert track.identity == expected, (appearance, track.similarity)
    assert len({t.person for t in result.tracks}) == len(truth)  # three different people


def test_caface_fusion_in_the_pipeline(synthetic_video, tiny_model, tmp_path):
    """``--fusion caface``: styles come from the same pass as the features, and each track's
    template is CAFace's one-shot template of its faces; a file for another feature size is refused."""
    from fuseface.errors import ConfigError
    from fuseface.infer.fusion_file import load_fusion, save_fusion
    from fuseface.nn.fusion.caface import CAFace
    from fuseface.video.pipeline import VideoOptions, process_video

    path, truth = synthetic_video
    weights = save_fusion(tmp_path / "caface.safetensors", _random_caface(), "caface")
    opts = VideoOptions(fusion="caface", fusion_weights=weights, chunk_size=64, min_cosine=-1.0, keep_features=True)
    result = process_video(path, tiny_model, opts)
    assert len(result.tracks) == len(truth)
    module = load_fusion(weights)
    for track in result.tracks:
        assert track.styles is not None and track.styles.shape == (len(track), 384, 2)
        expected = module.fuse(track.features, track.styles, chunk_size=64)  # one chunk: same as the stream
        np.testing.assert_allclose(track.template, expected, atol=1e-5)
        assert sum(track.weights) == pytest.approx(1.0)
    other = save_fusion(tmp_path / "c512.safetensors", CAFace(feature_dim=512), "caface")
    with pytest.raises(ConfigError, match="512-d features, the model gives 64-d"):
        process_video(path, tiny_model, VideoOptions(fusion="caface", fusion_weights=other))
