"""Episode data sources; every one yields the structure in `episode`."""

from keras_meta.data.episode import EPISODE_KEYS
from keras_meta.data.episode import validate_episode
from keras_meta.data.few_shot import check_episode_settings
from keras_meta.data.few_shot import episodes
from keras_meta.data.image_classes import ImageClasses
from keras_meta.data.image_classes import from_dataset
from keras_meta.data.image_classes import load_image_classes
from keras_meta.data.image_classes import load_omniglot
from keras_meta.data.image_classes import load_tfds
from keras_meta.data.image_decoding import decode_image
from keras_meta.data.sinusoid import sinusoid
