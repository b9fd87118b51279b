"""The original tutorial's server, kept only to measure what it costs.

Written for the benchmark after the tutorial's section 1b: the model is built
inside the request handler, so every request pays for building it (and, with
a weights file, for reading and loading it), the image goes through the model
at its own size (ToTensor + Normalize, no resize), autograd stays on, torch
keeps its default thread count, and the answer is the mask as a JSON list.
Do not copy this: lesson 02 shows the fixed version.

    NAIVE_WEIGHTS=random        lraspp_mobilenet_v3_large(weights=None)
    NAIVE_WEIGHTS=/path/w.pth   the same, then torch.load + load_state_dict per request
                                (the tutorial's pretrained weights come from such a
                                file in torch's cache; they cannot be downloaded here)
    NAIVE_RESIZE=520            also resize (the shorter side) to 520 like lesson 02's app, so the
                                model does the same work per image (the tutorial's text says
                                "Resize to 512x512" but its code has no resize)
    PORT=5000                   served on 127.0.0.1 only
"""

import io
import os

import torch
import torchvision.models.segmentation as seg
from flask import Flask, jsonify, request
from PIL import Image
from torchvision import transforms

WEIGHTS = os.environ.get("NAIVE_WEIGHTS", "random")
RESIZE = int(os.environ.get("NAIVE_RESIZE", "0"))

app = Flask(__name__)


@app.route("/infer", methods=["POST"])
def infer():
    img = Image.open(io.BytesIO(request.data)).convert("RGB")
    transform = transforms.Compose([
        *([transforms.Resize(RESIZE)] if RESIZE else []),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    # The tutorial's mistake, on purpose: a new model for every request.
    model = seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21)
    if WEIGHTS != "random":
        model.load_state_dict(torch.load(WEIGHTS, map_location="cpu", weights_only=True))
    model.eval()
    img_tensor = transform(img).unsqueeze(0)
    predictions = model(img_tensor)["out"].squeeze()
    classes_tensor = torch.argmax(predictions, dim=0)
    return jsonify(classes_tensor.tolist())


@app.get("/healthz")
def healthz():
    return jsonify(status="alive", pid=os.getpid(), torch_threads=torch.get_num_threads())


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ.get("PORT", "5000")))
