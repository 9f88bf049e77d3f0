"""Build the bundled example model: a scikit-learn classifier on the iris data, exported to ONNX.

The data ships inside scikit-learn (no download) and training is seeded, so the file is reproducible.
Outputs: `label` (int64 class index) and `probabilities` (float per class); class names are stored in
the model's metadata under `labels`, where the API and worker read them.

    python models/build_iris.py --out models/iris.onnx
"""

import argparse
import json
from pathlib import Path

import numpy as np
from onnx import helper
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

MODEL_VERSION = 1
TARGET_OPSET = 17  # old enough for every onnxruntime release we support


def build(out: Path) -> None:
    iris = load_iris()
    classifier = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=0))
    classifier.fit(iris.data.astype(np.float32), iris.target)
    onx = to_onnx(
        classifier,
        iris.data[:1].astype(np.float32),
        options={id(classifier.steps[-1][1]): {"zipmap": False}},  # plain tensors, not a list of dicts
        target_opset=TARGET_OPSET,
        final_types=None,
    )
    onx.graph.name = "iris"
    onx.model_version = MODEL_VERSION
    # rename the input so the signature reads naturally and make its batch dimension dynamic
    onx.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    helper.set_model_props(onx, {"name": "iris", "version": str(MODEL_VERSION), "labels": json.dumps(list(iris.target_names))})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(onx.SerializeToString())
    tmp.replace(out)  # atomic: a concurrent reader never sees half a model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("iris.onnx"))
    args = parser.parse_args()
    build(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
