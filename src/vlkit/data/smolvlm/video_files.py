"""Video files (`.mp4`, `.webm`, `.mov`, ... anything FFmpeg reads) decoded with PyAV into a
`Video`, as transformers' `video_utils.read_video_pyav` reads them.

transformers' metadata for a file: `total_num_frames` = the stream's frame count, `fps` = its
average rate, `duration = total_num_frames / fps`; the sampled frames are decoded in order and
kept by index, and timestamps are `index / fps`. Containers that do not store a frame count
(WebM / Matroska report 0) are counted by demuxing their packets here; transformers' PyAV reader
would see 0 frames and keep only the first one (a deliberate difference, see the docs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from vlkit.data.smolvlm.image_processor import Video, sample_frame_indices

__all__ = [
    "VIDEO_SUFFIXES", "VideoFileInfo", "VideoInput", "probe_video", "read_video_file",
    "sampled_video",
]  # fmt: skip

# A video: decoded frames, a directory of frame images, or a video file (decoded with PyAV).
VideoInput = Video | str | Path

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".gif")


@dataclass
class VideoFileInfo:
    """What a video file's header says (transformers' `VideoMetadata` for PyAV).

    Attributes:
        total_frames: Frames in the first video stream.
        fps: Its average frame rate.
        duration: `total_frames / fps` seconds.
        width: Frame width in pixels.
        height: Frame height in pixels.
    """

    total_frames: int
    fps: float
    duration: float
    width: int
    height: int


def _open(path: str | Path):  # noqa: ANN202 - av.container.InputContainer
    try:
        import av
    except ImportError as error:
        raise ImportError(
            f"{path}: decoding video files needs PyAV (`pip install av`, vlkit's 'video' extra); "
            "a directory of frame images needs nothing extra"
        ) from error
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise ValueError(f"{path}: not a readable video file ({error})") from error
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path}: the file has no video stream")
    return container


def probe_video(path: str | Path) -> VideoFileInfo:
    """Frame count, frame rate, duration and size of a video file's first video stream.

    Raises:
        ImportError: PyAV is not installed.
        ValueError: The file cannot be read or has no video stream.
    """
    container = _open(path)
    try:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise ValueError(f"{path}: the video stream has no frame rate")
        total = int(stream.frames)
        if total <= 0:
            # No count in the header (WebM): count the stream's packets that carry a frame.
            total = sum(1 for packet in container.demux(stream) if packet.size > 0)
        fps = float(rate)
        return VideoFileInfo(total, fps, total / fps, stream.width, stream.height)
    finally:
        container.close()


def read_video_file(
    path: str | Path, sample: Callable[[VideoFileInfo], list[int]] | None = None
) -> Video:
    """Decodes the frames `sample(info)` picks (all frames when None) as RGB PIL images.

    The returned `Video` carries the source `fps`, `frame_indices` and `duration`, so its
    timestamps are those transformers writes into the prompt.

    Raises:
        ImportError: PyAV is not installed.
        ValueError: The file cannot be read, has no video stream, or fewer frames than picked.
    """
    info = probe_video(path)
    indices = list(range(info.total_frames)) if sample is None else [int(i) for i in sample(info)]
    wanted = set(indices)
    frames: dict[int, Image.Image] = {}
    container = _open(path)
    try:
        last = max(indices, default=-1)
        for index, frame in enumerate(container.decode(video=0)):
            if index > last:
                break
            if index in wanted:
                frames[index] = frame.to_image()  # rgb24, as `to_ndarray(format="rgb24")`
    finally:
        container.close()
    missing = [i for i in indices if i not in frames]
    if missing or not indices:
        raise ValueError(f"{path}: could not decode frames {missing or 'any'}")
    return Video(
        frames=[frames[i] for i in indices],
        fps=info.fps,
        frame_indices=indices,
        duration=info.duration,
    )


def sampled_video(
    video: VideoInput, sample: bool, max_frames: int, target_fps: float
) -> tuple[Video, list[float], int]:
    """The frames to encode, their timestamps in seconds and the whole seconds of the video, as
    `SmolVLMVideoProcessor.sample_frames` and `SmolVLMProcessor.replace_video_token` give them.

    Args:
        video: Decoded frames, a directory of frame images (fps unknown: timestamps at 24 fps,
            as transformers), or a video file.
        sample: Pick `min(round(target_fps * duration), max_frames)` frames
            (`sample_frame_indices`); otherwise every frame given.
        max_frames: The most frames to pick.
        target_fps: The sampling rate in frames per second.

    Raises:
        ValueError: Sampling a `Video` without fps, or an unsupported input.
    """

    def pick(total: int, fps: float, duration: float) -> list[int]:
        return sample_frame_indices(total, fps, duration, max_frames, target_fps)

    if isinstance(video, str | Path) and Path(video).is_dir():
        video = Video.from_directory(video)
    elif isinstance(video, str | Path):
        # A file is sampled while it is decoded (transformers' `fetch_videos`), not afterwards.
        chooser = (
            (lambda info: pick(info.total_frames, info.fps, info.duration)) if sample else None
        )
        video = read_video_file(video, chooser)
        sample = False
    if not isinstance(video, Video):
        raise ValueError(
            f"video of type {type(video).__name__}: pass a Video, a frame directory or a file"
        )
    # transformers defaults a missing fps to 24 (with a warning) when writing timestamps.
    fps = video.fps if video.fps is not None else 24.0
    duration = video.duration
    if sample:
        if video.fps is None:
            raise ValueError("sampling frames needs the video's fps (Video.fps)")
        duration = duration if duration is not None else len(video.frames) / fps
        picked = pick(len(video.frames), fps, duration)
        video = Video([video.frames[i] for i in picked], video.fps, picked, duration)
    stamps = [index / fps for index in video.indices]
    seconds = int(duration) if duration is not None else int(stamps[-1])
    return video, stamps, seconds
