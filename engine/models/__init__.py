"""The networks: audio encoder, EmoDiff (denoiser + style), lip refiner, LSTM baseline.

Each is a `torch.nn.Module` with a fixed-shape forward that exports to ONNX (opset 17).
`engine.motion_model.MotionModels` bundles the trained ones for inference.
"""

from engine.models.audio_encoder import (
    AUDIO_LOOKAHEAD_FRAMES,
    AudioEncoder,
    AudioEncoderConfig,
    pad_mel,
)
from engine.models.emodiff import (
    INIT_FRAMES,
    STYLE_CLIP_FRAMES,
    WINDOW_FRAMES,
    EmoDiff,
    EmoDiffConfig,
)
from engine.models.lip_refiner import MOUTH_INDICES, LipRefiner, LipRefinerConfig
from engine.models.lstm_baseline import LSTMBaseline, LSTMConfig

__all__ = [
    "AUDIO_LOOKAHEAD_FRAMES",
    "INIT_FRAMES",
    "MOUTH_INDICES",
    "STYLE_CLIP_FRAMES",
    "WINDOW_FRAMES",
    "AudioEncoder",
    "AudioEncoderConfig",
    "EmoDiff",
    "EmoDiffConfig",
    "LSTMBaseline",
    "LSTMConfig",
    "LipRefiner",
    "LipRefinerConfig",
    "pad_mel",
]
