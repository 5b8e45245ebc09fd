"""SmolVLM / Idefics3 inputs: the image processor (splitting, resizing, videos) and the processor
that expands `<image>` / `<video>` placeholders into the prompt strings transformers builds;
video files are decoded with PyAV (`video_files.py`)."""

from vlkit.data.smolvlm.image_batch import SmolVLMImageProcessor
from vlkit.data.smolvlm.image_processor import Video
from vlkit.data.smolvlm.processor import SmolVLMProcessor
from vlkit.data.smolvlm.video_files import read_video_file

__all__ = ["SmolVLMImageProcessor", "SmolVLMProcessor", "Video", "read_video_file"]
