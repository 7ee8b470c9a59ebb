"""Episode data sources; every one yields the structure in `episode`."""

from keras_meta.data.episode import EPISODE_KEYS
from keras_meta.data.episode import validate_episode
from keras_meta.data.sinusoid import sinusoid
