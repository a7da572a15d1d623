"""deepfake-detector: tell real images from generated or manipulated ones with a frozen ResNet-18,
and show why with Grad-CAM. The notebook in notebooks/ teaches; this package does the work."""

__version__ = "0.1.0"

# Positive class is "fake": every probability in this project is P(fake) = sigmoid(logit).
CLASS_NAMES = ("real", "fake")
CLASS_TO_IDX = {"real": 0, "fake": 1}
